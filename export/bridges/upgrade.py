"""``python -m export bridge BUNDLE``: fit bridges for an existing bundle (no checkpoint needed)
and write it as a new, format-2 bundle — in place by default, or at ``--out``.

A bundle that already has bridges is re-bridged (another gallery depth, other fitting data):
the graphs' raw outputs are what the new bridges are fitted on and folded onto.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from export.bridges.build import describe, fit_bridges, fold_graphs
from export.bundle import install, staging_dir
from export.errors import ExportError
from export.manifest import MANIFEST, MANIFEST_DIGEST, Manifest, file_sha256
from export.verify import read_manifest
from export.weights import share_bundle_weights


def bridge_bundle(
    bundle: Path,
    out: Path | None = None,
    dataset: str | None = None,
    test_fraction: float | None = None,
    gallery_depth: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> tuple[Manifest, str]:
    """Bridge ``bundle`` into ``out`` (default: ``bundle`` itself); the new manifest and the
    report table. The training data is ``dataset`` or, for a bridged bundle, the one its
    bridges were fitted on."""
    manifest = read_manifest(bundle)
    out = bundle if out is None else out
    if out.resolve() != bundle.resolve() and out.exists() and not force:
        raise ExportError(f"{out} already exists (use --force to replace it)")
    previous = manifest.bridge
    dataset = dataset or (previous.dataset if previous else None)
    if dataset is None:
        raise ExportError(
            "this bundle does not name its training data: pass --dataset (the checkpoint's "
            "config.json data.dataset, e.g. mnist5k); bridges are fitted on its training split"
        )
    if test_fraction is None:
        test_fraction = previous.test_fraction if previous else 0.2
    depth = manifest.model.depth
    gallery_depth = depth if gallery_depth is None else gallery_depth
    tmp = staging_dir(out)
    try:
        for name in (
            [e.file for e in manifest.exits]
            + [s.file for s in manifest.segments]
            + [manifest.all_exits.file]
        ):
            shutil.copy2(bundle / name, tmp / name)
        if manifest.weights is not None:  # the graphs read it until they are shared anew
            shutil.copy2(bundle / manifest.weights.file, tmp / manifest.weights.file)
        fitted = fit_bridges(
            tmp / manifest.all_exits.file,
            manifest.preprocess,
            depth,
            dataset,
            test_fraction,
            gallery_depth,
            progress,
        )
        s = manifest.model.img_size
        images = np.random.default_rng(0).integers(0, 256, (8, s, s, 3), dtype=np.uint8)
        exits, all_exits, segments = fold_graphs(
            tmp,
            manifest.exits,
            manifest.all_exits,
            manifest.segments,
            fitted,
            images,
            manifest.precision == "fp16",
        )
        exits, all_exits, segments, weights = share_bundle_weights(
            tmp, exits, all_exits, segments, images
        )
        new = Manifest.model_validate(
            {
                **manifest.model_dump(),
                "format_version": 2,
                "exits": [e.model_dump() for e in exits],
                "all_exits": all_exits.model_dump(),
                "segments": [x.model_dump() for x in segments],
                "bridge": fitted.info.model_dump(),
                "weights": weights.model_dump(),
                "created_at": datetime.now(UTC),
            }
        )
        (tmp / MANIFEST).write_text(new.to_json())
        (tmp / MANIFEST_DIGEST).write_text(file_sha256(tmp / MANIFEST) + "\n")
        install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return new, describe(fitted)
