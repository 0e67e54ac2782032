"""Bridged queries against one gallery vs a gallery per depth, from a bundle's manifest: what
``python -m export`` (or ``python -m export bridge``) measured on images disjoint from the fit.

Per exit depth: k-NN top-1 with a same-depth gallery, with bridged queries against the
gallery-depth gallery (each ± its 5-fold standard error), their difference, and recall@10 of
the gallery-depth neighbours. Last line: the issue #30 target — bridged ≥ same-depth − 1 point
at every depth ≥ 2 — met or not, with the worst depth.

    python -m bench.bridges [BUNDLE ...]        (default: bundles/default)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import DEFAULT_BUNDLE, machine
from export.manifest import Manifest, bundle_id

TOLERANCE = 0.01  # one point


def report(bundle: Path) -> list[str]:
    m = Manifest.read(bundle)
    if m.bridge is None:
        return [f"{bundle}: no bridges (format 1); run python -m export bridge {bundle}"]
    b = m.bridge
    lines = [
        f"{bundle} (id {bundle_id(bundle)[:12]}, {m.method}, dim {m.model.dim}, depth "
        f"{m.model.depth}): bridges into depth {b.gallery_depth} fitted on {b.fit_images} "
        f"images of {b.dataset}'s training split; gallery {b.gallery_images}, disjoint",
        "",
        "| exit depth | k-NN same-depth % | k-NN bridged % | bridged − same | recall@10 |",
        "|---:|---:|---:|---:|---:|",
    ]
    worst: tuple[float, int] | None = None
    for e in m.exits:
        r = e.retrieval
        if r is None or r.knn_same is None or r.knn_bridged is None:
            continue
        diff = r.knn_bridged - r.knn_same
        lines.append(
            f"| {e.exit_depth} | {100 * r.knn_same:.1f} ± {100 * (r.knn_same_se or 0):.1f} | "
            f"{100 * r.knn_bridged:.1f} ± {100 * (r.knn_bridged_se or 0):.1f} | "
            f"{100 * diff:+.1f} | {r.recall_at_10:.3f} ± {r.recall_at_10_se:.3f} |"
        )
        if e.exit_depth >= 2 and (worst is None or diff < worst[0]):
            worst = (diff, e.exit_depth)
    if worst is not None:
        # accuracies are counts over the queries: compare them rounded, not their float error
        met = "met" if round(worst[0], 9) >= -TOLERANCE else "MISSED"
        lines += ["", f"target bridged >= same-depth - 1 point at depths >= 2: {met} "
                      f"(worst: depth {worst[1]}, {100 * worst[0]:+.1f} points)"]  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", type=Path, nargs="*", default=[DEFAULT_BUNDLE])
    args = parser.parse_args()
    print(f"machine: {machine()} (the numbers were measured at export)\n")
    for bundle in args.bundles:
        print("\n".join(report(bundle)) + "\n")


if __name__ == "__main__":
    main()
