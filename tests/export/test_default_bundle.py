"""The committed bundles/default is what `make run` serves without torch: it must be intact,
exported from the committed models/default, and small (its weights stored once)."""

from __future__ import annotations

from pathlib import Path

from export.bundle import checkpoint_sha256
from export.manifest import load_verified
from export.verify import verify_bundle

ROOT = Path(__file__).resolve().parents[2]
BUNDLE, MODEL = ROOT / "bundles" / "default", ROOT / "models" / "default"


def test_the_committed_bundle_is_the_committed_model_exported() -> None:
    manifest = load_verified(BUNDLE)
    assert manifest.checkpoint_sha256 == checkpoint_sha256(MODEL), (
        "models/default changed since bundles/default was exported: run `make export-default`"
    )
    verify_bundle(BUNDLE)  # every graph runs, exits and segments agree with all_exits


def test_the_committed_bundle_holds_one_copy_of_the_weights() -> None:
    manifest = load_verified(BUNDLE)
    assert manifest.weights is not None and manifest.segments and manifest.bridge is not None
    size = sum(p.stat().st_size for p in BUNDLE.iterdir())
    params = manifest.model.parameters * 4  # fp32
    # One copy of the backbone — in fp16, which holds the fp16 checkpoint's values exactly — the
    # bridges (two D x D fp32 maps per depth) and 25 graphs' protobufs: 7.7 MB for 9.6 MB of
    # fp32 weights today; 12.7 MB with fp32 storage, 82 MB inline.
    assert size < 1.5 * params, f"{size / 1e6:.1f} MB for {params / 1e6:.1f} MB of weights"
    assert manifest.weights.bytes < 0.75 * params  # the fp16-exact tensors stored as fp16
