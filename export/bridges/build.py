"""Fit a bundle's bridges on training images and fold them into every graph that ends at an exit.

The images come from the training split of the bundle's dataset, never its evaluation split:
the split is shuffled once and halved — one half fits the bridges (a fifth of it held out to
choose λ), the other half is the evaluation's gallery; the evaluation split gives the queries.
Embeddings come from the bundle's own all-exits graph, so a bundle can be bridged without its
checkpoint (``python -m export bridge``) and a fresh export takes the same path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torchvision.transforms as T
from tqdm import tqdm

from export.bridges.evaluate import DepthRetrieval, evaluate_bridges
from export.bridges.fit import Ridge, fit_ridge, identity
from export.bridges.fold import fold, raw_name
from export.errors import BundleError
from export.manifest import (
    ALL_EXITS_OUTPUT,
    EXIT_OUTPUT,
    INPUT_NAME,
    SEGMENT_INPUT,
    AllExitsEntry,
    Bridge,
    ExitEntry,
    Preprocess,
    Retrieval,
    SegmentEntry,
    exit_row,
    file_sha256,
)
from export.parity import check_exit, onnx_session
from training.augment import INTERPOLATION
from training.data import ImageSource, SubsetImages, load_splits
from training.errors import DataError

MAX_FIT = 5000
MAX_GALLERY = 5000
MAX_QUERIES = 2000
BATCH = 128


@dataclass(frozen=True)
class Fitted:
    """The bridges of every depth 1..L, their evaluation, and what the manifest records."""

    bridges: dict[int, Ridge]
    retrieval: list[DepthRetrieval]
    info: Bridge


def _sample(source: ImageSource, n: int, seed: int) -> SubsetImages:
    idx = np.random.default_rng(seed).permutation(len(source))[:n]
    return SubsetImages(source, np.sort(idx), source.name)


def data_roles(
    dataset: str,
    test_fraction: float,
    max_fit: int = MAX_FIT,
    max_gallery: int = MAX_GALLERY,
    max_queries: int = MAX_QUERIES,
    seed: int = 0,
) -> tuple[ImageSource, ImageSource, ImageSource]:
    """(fit, gallery, queries): halves of the shuffled training split, and the evaluation split
    (or, for an unlabelled dataset, a fifth of the training split held back)."""
    splits = load_splits(dataset, test_fraction)
    train, queries = splits.train, splits.test
    order = np.random.default_rng(seed).permutation(len(train))
    if len(queries) == 0:  # unlabelled: no evaluation split; recall needs no labels
        n_q = len(train) // 5
        queries = SubsetImages(train, np.sort(order[:n_q]), f"{train.name}/queries")
        order = order[n_q:]
    half = len(order) // 2
    fit = SubsetImages(train, np.sort(order[:half][:max_fit]), f"{train.name}/fit")
    gallery = SubsetImages(train, np.sort(order[half:][:max_gallery]), f"{train.name}/gallery")
    if len(queries) > max_queries:
        queries = _sample(queries, max_queries, seed)
    if len(fit) < 10 or len(gallery) < 10 or len(queries) < 10:
        raise DataError(
            f"{dataset}: too few images to fit and check bridges ({len(fit)} fit, "
            f"{len(gallery)} gallery, {len(queries)} queries; at least 10 each)"
        )
    return fit, gallery, queries


def geometry(pre: Preprocess) -> T.Compose:
    """Evaluation's resize + centre crop, as the manifest states it."""
    return T.Compose(
        [
            T.Resize(pre.resize, interpolation=INTERPOLATION[pre.interpolation]),
            T.CenterCrop(pre.crop),
        ]
    )


def embed(
    all_exits: Path, source: ImageSource, pre: Preprocess, desc: str, progress: bool = True
) -> np.ndarray:
    """The raw embeddings ``[L, N, D]`` of ``source`` from a bundle's all-exits graph."""
    session = onnx_session(all_exits)
    names = [o.name for o in session.get_outputs()]
    output = raw_name(ALL_EXITS_OUTPUT) if raw_name(ALL_EXITS_OUTPUT) in names else ALL_EXITS_OUTPUT
    shape = geometry(pre)
    chunks = []
    for start in tqdm(range(0, len(source), BATCH), desc=desc, disable=not progress, unit="batch"):
        stop = min(start + BATCH, len(source))
        images = np.stack([np.asarray(shape(source.image(i))) for i in range(start, stop)])
        chunks.append(session.run([output], {INPUT_NAME: images})[0])
    return np.concatenate(chunks, axis=1)


def fit_bridges(
    all_exits: Path,
    pre: Preprocess,
    depth: int,
    dataset: str,
    test_fraction: float,
    gallery_depth: int,
    progress: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> Fitted:
    """Bridges from every exit depth into ``gallery_depth``'s space, and their evaluation."""
    if not 1 <= gallery_depth <= depth:
        raise DataError(f"gallery depth {gallery_depth} is not an exit depth (1..{depth})")
    fit, gallery, queries = data_roles(dataset, test_fraction)
    log(f"bridges: {len(fit)} fitting images, {len(gallery)} gallery, {len(queries)} queries")
    x = embed(all_exits, fit, pre, "embed fit", progress)
    target = exit_row(x, gallery_depth)
    bridges = {
        d: identity(x.shape[-1]) if d == gallery_depth else fit_ridge(exit_row(x, d), target)
        for d in tqdm(range(1, depth + 1), desc="fit bridges", disable=not progress)
    }
    g = embed(all_exits, gallery, pre, "embed gallery", progress)
    q = embed(all_exits, queries, pre, "embed queries", progress)
    retrieval = evaluate_bridges(g, gallery.labels, q, queries.labels, bridges, gallery_depth)
    info = Bridge(
        gallery_depth=gallery_depth,
        dataset=dataset,
        test_fraction=test_fraction,
        fit_images=len(fit),
        gallery_images=len(gallery),
    )
    return Fitted(bridges, retrieval, info)


def _rewrite(path: Path, output: str, weight: np.ndarray, bias: np.ndarray) -> str:
    """Fold a bridge into the graph file in place; its new sha256."""
    model = fold(onnx.load(str(path)), output, weight, bias)
    tmp = path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return file_sha256(path)


def _raw_of(path: Path, feed: dict[str, np.ndarray], output: str) -> list[np.ndarray]:
    """The graph's outputs, its embedding output replaced by the raw one if it is bridged."""
    session = onnx_session(path)
    names = [o.name for o in session.get_outputs()]
    wanted = [
        raw_name(output) if n == output and raw_name(output) in names else n
        for n in names
        if n != raw_name(output)
    ]
    return session.run(wanted, feed)


def fold_graphs(
    bundle: Path,
    exits: list[ExitEntry],
    all_exits: AllExitsEntry,
    segments: list[SegmentEntry],
    fitted: Fitted,
    images: np.ndarray,
    fp16: bool,
    reference: np.ndarray | None = None,
) -> tuple[list[ExitEntry], AllExitsEntry, list[SegmentEntry]]:
    """Fold ``fitted``'s bridges into every graph of ``bundle`` (in place) and check, on
    ``images``, that each bridged output equals the bridge applied to the embedding it maps —
    ``reference`` [L, N, D] (the torch model's) when given, else the graph's own raw output —
    and that the raw output is unchanged. Returns the entries with their new sha256."""
    bridges = fitted.bridges
    by_depth = {r.exit_depth: r for r in fitted.retrieval}

    def expect(d: int, raw: np.ndarray) -> np.ndarray:
        base = raw if reference is None else exit_row(reference, d)
        return bridges[d].apply(base).astype(np.float32)

    new_exits = []
    for e in exits:
        path = bundle / e.file
        (raw,) = _raw_of(path, {INPUT_NAME: images}, EXIT_OUTPUT)
        sha = _rewrite(path, EXIT_OUTPUT, bridges[e.exit_depth].weight, bridges[e.exit_depth].bias)
        out, raw_after = onnx_session(path).run(
            [EXIT_OUTPUT, raw_name(EXIT_OUTPUT)], {INPUT_NAME: images}
        )
        check_exit(out, expect(e.exit_depth, raw), fp16, f"{e.file} (bridged)")
        check_exit(raw_after, raw, False, f"{e.file} ({raw_name(EXIT_OUTPUT)})")
        r = by_depth[e.exit_depth]
        new_exits.append(
            e.model_copy(
                update={
                    "sha256": sha,
                    "bridge_lambda": bridges[e.exit_depth].lam,
                    "retrieval": Retrieval(
                        **{k: v for k, v in asdict(r).items() if k != "exit_depth"}
                    ),
                }
            )
        )
    depths = sorted(bridges)
    weight = np.stack([bridges[d].weight for d in depths])
    bias = np.stack([bridges[d].bias for d in depths])[:, None, :]
    path = bundle / all_exits.file
    (raw_all,) = _raw_of(path, {INPUT_NAME: images}, ALL_EXITS_OUTPUT)
    sha = _rewrite(path, ALL_EXITS_OUTPUT, weight, bias)
    out, raw_after = onnx_session(path).run(
        [ALL_EXITS_OUTPUT, raw_name(ALL_EXITS_OUTPUT)], {INPUT_NAME: images}
    )
    for d in depths:
        check_exit(
            exit_row(out, d), expect(d, exit_row(raw_all, d)), fp16, f"{all_exits.file}[{d - 1}]"
        )
    check_exit(
        raw_after.reshape(-1, raw_after.shape[-1]),
        raw_all.reshape(-1, raw_all.shape[-1]),
        False,
        all_exits.file,
    )
    new_all = all_exits.model_copy(update={"sha256": sha})
    new_segments, hidden = [], images
    for s in segments:  # chained as the server runs them
        path = bundle / s.file
        feed = {SEGMENT_INPUT if s.first else INPUT_NAME: hidden}
        hidden_next, raw = _raw_of(path, feed, EXIT_OUTPUT)
        sha = _rewrite(path, EXIT_OUTPUT, bridges[s.last].weight, bridges[s.last].bias)
        after_hidden, out = onnx_session(path).run(None, feed)[:2]
        check_exit(out, expect(s.last, raw), fp16, f"{s.file} (bridged)")
        if not np.array_equal(after_hidden, hidden_next):
            raise BundleError(f"{s.file}: folding the bridge changed the hidden state")
        new_segments.append(s.model_copy(update={"sha256": sha}))
        hidden = hidden_next
    return new_exits, new_all, new_segments


def describe(fitted: Fitted) -> str:
    """The export report's table: per depth, same-depth vs bridged k-NN and recall@10 (± SE)."""
    g = fitted.info.gallery_depth

    def pct(v: float | None, se: float | None) -> str:
        return "–" if v is None or se is None else f"{100 * v:.1f} ± {100 * se:.1f}"

    lines = [
        f"bridges into exit depth {g}'s space; fit on {fitted.info.fit_images} training images, "
        f"checked on a disjoint gallery of {fitted.info.gallery_images}",
        "| exit depth | k-NN same-depth gallery % | k-NN bridged, depth-"
        f"{g} gallery % | recall@10 of depth-{g} neighbours |",
        "|---:|---:|---:|---:|",
    ]
    for r in fitted.retrieval:
        lines.append(
            f"| {r.exit_depth} | {pct(r.knn_same, r.knn_same_se)} | "
            f"{pct(r.knn_bridged, r.knn_bridged_se)} | "
            f"{r.recall_at_10:.3f} ± {r.recall_at_10_se:.3f} |"
        )
    return "\n".join(lines)
