"""``python -m export verify BUNDLE``: integrity and agreement of a bundle, without torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.errors import BundleError
from export.manifest import (
    ALL_EXITS_OUTPUT,
    EXIT_OUTPUT,
    INPUT_NAME,
    RAW_ALL_EXITS_OUTPUT,
    RAW_EXIT_OUTPUT,
    SEGMENT_INPUT,
    SEGMENT_OUTPUT,
    BundleIntegrityError,
    Manifest,
    exit_row,
    load_verified,
)
from export.parity import check_exit, check_exits_agree, onnx_session
from export.weights import external_locations


def read_manifest(bundle: Path) -> Manifest:
    """The manifest of an intact bundle (digest and graph hashes checked); BundleError if not."""
    try:
        return load_verified(bundle)
    except BundleIntegrityError as exc:
        raise BundleError(f"{bundle}: {exc}") from exc


def verify_bundle(bundle: Path, batch: int = 4) -> Manifest:
    """Check hashes and the manifest, run every graph, check exits (and the chained segments)
    agree with all_exits — the bridged outputs and, in a bridged bundle, the raw ones."""
    manifest = read_manifest(bundle)
    allowed = set() if manifest.weights is None else {manifest.weights.file}
    for entry in [*manifest.exits, *manifest.segments, manifest.all_exits]:
        if stray := external_locations(bundle / entry.file) - allowed:
            raise BundleError(f"{entry.file} reads {sorted(stray)}, not the manifest's weights")
    s = manifest.model.img_size
    images = np.random.default_rng(0).integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
    fp16 = manifest.precision == "fp16"
    bridged = manifest.bridge is not None
    try:
        all_out, *all_raw = onnx_session(bundle / manifest.all_exits.file).run(
            [ALL_EXITS_OUTPUT, *([RAW_ALL_EXITS_OUTPUT] if bridged else [])], {INPUT_NAME: images}
        )
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BundleError(f"{manifest.all_exits.file} does not run: {exc}") from exc
    expected = (manifest.model.depth, batch, manifest.model.dim)
    if all_out.shape != expected:
        raise BundleError(f"all_exits output shape {all_out.shape} != {expected}")
    per_exit = {}
    for entry in manifest.exits:
        try:
            out, *raw = onnx_session(bundle / entry.file).run(
                [EXIT_OUTPUT, *([RAW_EXIT_OUTPUT] if bridged else [])], {INPUT_NAME: images}
            )
        except Exception as exc:
            raise BundleError(f"{entry.file} does not run: {exc}") from exc
        if bridged:
            check_exit(raw[0], exit_row(all_raw[0], entry.exit_depth), fp16, f"{entry.file} (raw)")
        norms = np.linalg.norm(out, axis=-1)
        if not np.allclose(norms, 1.0, atol=1e-2 if fp16 else 1e-4):
            raise BundleError(f"{entry.file}: embeddings are not L2-normalised")
        check_exit(out, exit_row(all_out, entry.exit_depth), fp16, entry.file)
        per_exit[entry.exit_depth] = out
    check_exits_agree(per_exit, all_out, fp16)
    hidden = images
    for seg in manifest.segments:  # chained as the server runs them
        feed = {SEGMENT_INPUT if seg.first else INPUT_NAME: hidden}
        try:
            hidden, out = onnx_session(bundle / seg.file).run([SEGMENT_OUTPUT, EXIT_OUTPUT], feed)
        except Exception as exc:
            raise BundleError(f"{seg.file} does not run: {exc}") from exc
        check_exit(
            out, exit_row(all_out, seg.last), fp16, f"{seg.file} vs all_exits[{seg.last - 1}]"
        )
    return manifest
