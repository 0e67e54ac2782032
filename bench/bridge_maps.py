"""Is a learned, non-linear bridge better than the ridge map the exporter ships? Per exit depth,
bridged k-NN top-1 and recall@10 of the gallery-depth neighbours with the ridge bridge and with
a one-hidden-layer MLP (scikit-learn, 512 ReLU units, early stopping on a tenth of the fitting
images), fitted on the same images and scored on the same gallery and queries as the export's
own evaluation (fit, gallery and queries disjoint; 5-fold standard errors).

    python -m bench.bridge_maps [BUNDLE]        (default: bundles/default)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import DEFAULT_BUNDLE, machine
from export.bridges.build import data_roles, embed
from export.bridges.evaluate import evaluate_bridges
from export.bridges.fit import fit_ridge, identity
from export.manifest import Manifest, exit_row


@dataclass(frozen=True)
class MLPMap:
    """A non-linear bridge: ``normalise(mlp(x))``."""

    model: object

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = self.model.predict(x.astype(np.float32)).astype(np.float64)
        return y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)


def fit_mlp(x: np.ndarray, y: np.ndarray, seed: int = 0) -> MLPMap:
    from sklearn.neural_network import MLPRegressor

    model = MLPRegressor(hidden_layer_sizes=(512,), early_stopping=True, validation_fraction=0.1,
                         max_iter=500, random_state=seed)  # fmt: skip
    return MLPMap(model.fit(x, y))


def compare(bundle: Path) -> list[str]:
    m = Manifest.read(bundle)
    if m.bridge is None:
        return [f"{bundle}: no bridges (format 1)"]
    b, depth = m.bridge, m.model.depth
    fit, gallery, queries = data_roles(b.dataset, b.test_fraction)
    all_exits = bundle / m.all_exits.file
    x = embed(all_exits, fit, m.preprocess, "embed fit")
    g = embed(all_exits, gallery, m.preprocess, "embed gallery")
    q = embed(all_exits, queries, m.preprocess, "embed queries")
    target = exit_row(x, b.gallery_depth)
    maps, seconds = {}, {}
    for kind, fitter in (("ridge", fit_ridge), ("mlp", fit_mlp)):
        started = time.perf_counter()
        maps[kind] = {
            d: identity(x.shape[-1]) if d == b.gallery_depth else fitter(exit_row(x, d), target)
            for d in range(1, depth + 1)
        }
        seconds[kind] = time.perf_counter() - started
    scored = {k: evaluate_bridges(g, gallery.labels, q, queries.labels, v, b.gallery_depth)
              for k, v in maps.items()}  # fmt: skip
    lines = [
        f"{bundle} ({m.method}, dim {m.model.dim}, depth {depth}): {len(fit)} fitting images, "
        f"gallery {len(gallery)}, {len(queries)} queries; fitting took {seconds['ridge']:.1f} s "
        f"(ridge) and {seconds['mlp']:.1f} s (MLP) for all depths",
        "",
        "| exit depth | k-NN same-depth % | bridged, ridge % | bridged, MLP % | MLP − ridge "
        "| recall@10 ridge | recall@10 MLP |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r, n in zip(scored["ridge"], scored["mlp"], strict=True):
        lines.append(
            f"| {r.exit_depth} | {100 * r.knn_same:.1f} ± {100 * r.knn_same_se:.1f} "
            f"| {100 * r.knn_bridged:.1f} ± {100 * r.knn_bridged_se:.1f} "
            f"| {100 * n.knn_bridged:.1f} ± {100 * n.knn_bridged_se:.1f} "
            f"| {100 * (n.knn_bridged - r.knn_bridged):+.1f} "
            f"| {r.recall_at_10:.3f} | {n.recall_at_10:.3f} |"
        )
    pairs = zip(scored["ridge"], scored["mlp"], strict=True)
    shallow = [n.knn_bridged - r.knn_bridged for r, n in pairs if r.exit_depth != b.gallery_depth]
    lines += ["", f"MLP − ridge, bridged k-NN, mean over depths ≠ {b.gallery_depth}: "
              f"{100 * float(np.mean(shallow)):+.2f} points"]  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="*", type=Path, default=[DEFAULT_BUNDLE])
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    for bundle in args.bundles:
        print("\n".join(compare(bundle)) + "\n")


if __name__ == "__main__":
    main()
