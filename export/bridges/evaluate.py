"""How well bridged queries search a gallery embedded at the gallery depth, per exit depth.

On images disjoint from the bridges' fit: a gallery (labelled training images) embedded at every
depth and queries (the evaluation split). Per depth d:

- ``knn_same``: weighted k-NN top-1 with a depth-d gallery (one index per depth, the old design);
- ``knn_bridged``: the same with bridged depth-d queries against the depth-G gallery;
- ``recall_at_10``: the share of a query's 10 nearest depth-G neighbours (found with its own
  depth-G embedding) that its bridged depth-d query also finds.

Each comes with a standard error over ``folds`` stratified folds of the queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from export.bridges.fit import Ridge
from export.manifest import exit_row
from training.knn import knn_predict

RECALL_AT = 10


@dataclass(frozen=True)
class DepthRetrieval:
    exit_depth: int
    queries: int
    gallery: int
    knn_same: float | None
    knn_same_se: float | None
    knn_bridged: float | None
    knn_bridged_se: float | None
    recall_at_10: float
    recall_at_10_se: float


def fold_of(labels: np.ndarray | None, n: int, folds: int, seed: int = 0) -> np.ndarray:
    """Fold index per query: stratified by label when there are labels."""
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.int64)
    groups = (
        [np.arange(n)]
        if labels is None
        else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    )
    for idx in groups:
        idx = idx.copy()
        rng.shuffle(idx)
        out[idx] = np.arange(len(idx)) % folds
    return out


def mean_se(values: np.ndarray, folds: np.ndarray) -> tuple[float, float]:
    """Mean of per-query ``values`` and the standard error of the mean over the folds."""
    k = int(folds.max()) + 1
    means = np.array([values[folds == f].mean() for f in range(k)])
    return float(values.mean()), float(means.std(ddof=1) / np.sqrt(k))


def _knn_correct(gallery, g_labels, queries, q_labels, k: int, temperature: float) -> np.ndarray:
    classes = int(max(g_labels.max(), q_labels.max())) + 1
    pred = knn_predict(
        torch.from_numpy(np.asarray(gallery, np.float32)),
        torch.from_numpy(g_labels),
        torch.from_numpy(np.asarray(queries, np.float32)),
        classes,
        k,
        temperature,
    ).numpy()
    return (pred == q_labels).astype(np.float64)


def _top(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sims = queries.astype(np.float32) @ gallery.astype(np.float32).T
    k = min(k, gallery.shape[0])
    return np.argpartition(-sims, k - 1, axis=1)[:, :k]


def evaluate_bridges(
    gallery: np.ndarray,
    gallery_labels: np.ndarray | None,
    queries: np.ndarray,
    query_labels: np.ndarray | None,
    bridges: dict[int, Ridge],
    gallery_depth: int,
    k: int = 20,
    temperature: float = 0.07,
    folds: int = 5,
) -> list[DepthRetrieval]:
    """Per bridged depth, from raw embeddings ``gallery`` [L, Ng, D] and ``queries`` [L, Nq, D]."""
    labelled = gallery_labels is not None and query_labels is not None
    fold = fold_of(query_labels, queries.shape[1], folds)
    space = bridges[gallery_depth].apply(exit_row(gallery, gallery_depth))
    truth = _top(space, bridges[gallery_depth].apply(exit_row(queries, gallery_depth)), RECALL_AT)
    out = []
    for d, ridge in sorted(bridges.items()):
        q = ridge.apply(exit_row(queries, d))
        found = _top(space, q, RECALL_AT)
        recall = np.array([len(np.intersect1d(a, b)) for a, b in zip(found, truth, strict=True)])
        recall = recall / truth.shape[1]
        same = bridged = (None, None)
        if labelled:
            same = mean_se(
                _knn_correct(
                    exit_row(gallery, d),
                    gallery_labels,
                    exit_row(queries, d),
                    query_labels,
                    k,
                    temperature,
                ),
                fold,
            )
            bridged = mean_se(
                _knn_correct(space, gallery_labels, q, query_labels, k, temperature), fold
            )
        r, r_se = mean_se(recall, fold)
        out.append(DepthRetrieval(d, queries.shape[1], gallery.shape[1], *same, *bridged, r, r_se))
    return out
