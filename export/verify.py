"""``python -m export verify BUNDLE``: integrity and agreement of a bundle, without torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import ValidationError

from export.errors import BundleError
from export.manifest import INPUT_NAME, MANIFEST, MANIFEST_DIGEST, Manifest, file_sha256
from export.parity import check_exit, check_exits_agree, onnx_session


def read_manifest(bundle: Path) -> Manifest:
    """The validated manifest; BundleError if missing, malformed or edited since export."""
    if not bundle.is_dir():
        raise BundleError(f"bundle not found: {bundle}")
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle} is not a bundle: {MANIFEST} missing")
    digest = bundle / MANIFEST_DIGEST
    if not digest.is_file():
        raise BundleError(f"{bundle}: {MANIFEST_DIGEST} missing")
    if digest.read_text().strip() != file_sha256(path):
        raise BundleError(f"{bundle}: {MANIFEST} was modified after export (sha256 mismatch)")
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"{path}: invalid manifest: {where}: {first['msg']}") from exc


def check_files(bundle: Path, manifest: Manifest) -> None:
    """Every graph present with the sha256 the manifest records."""
    entries = [(e.file, e.sha256) for e in manifest.exits]
    entries.append((manifest.all_exits.file, manifest.all_exits.sha256))
    for name, expected in entries:
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"{bundle}: graph {name} missing")
        if file_sha256(path) != expected:
            raise BundleError(f"{bundle}: {name} sha256 mismatch (corrupt or replaced)")


def verify_bundle(bundle: Path, batch: int = 4) -> Manifest:
    """Check hashes and the manifest, run every graph, check exits agree with all_exits."""
    manifest = read_manifest(bundle)
    check_files(bundle, manifest)
    s = manifest.model.img_size
    images = np.random.default_rng(0).integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
    fp16 = manifest.precision == "fp16"
    try:
        all_out = onnx_session(bundle / manifest.all_exits.file).run(None, {INPUT_NAME: images})[0]
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BundleError(f"{manifest.all_exits.file} does not run: {exc}") from exc
    expected = (manifest.model.depth, batch, manifest.model.dim)
    if all_out.shape != expected:
        raise BundleError(f"all_exits output shape {all_out.shape} != {expected}")
    per_exit = {}
    for entry in manifest.exits:
        try:
            out = onnx_session(bundle / entry.file).run(None, {INPUT_NAME: images})[0]
        except Exception as exc:
            raise BundleError(f"{entry.file} does not run: {exc}") from exc
        norms = np.linalg.norm(out, axis=-1)
        if not np.allclose(norms, 1.0, atol=1e-2 if fp16 else 1e-4):
            raise BundleError(f"{entry.file}: embeddings are not L2-normalised")
        check_exit(out, all_out[entry.exit_depth - 1], fp16, entry.file)
        per_exit[entry.exit_depth] = out
    check_exits_agree(per_exit, all_out, fp16)
    return manifest
