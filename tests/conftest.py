"""Shared fixtures: a tiny real checkpoint and its bundle, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A depth-4, dim-32 MoCo v3 + SDSSL checkpoint, trained a few steps, with metrics."""
    import torch

    from training.config import load_config
    from training.evaluate import evaluate_checkpoint
    from training.loop import train

    torch.set_num_threads(1)
    cfg = load_config(TINY_CONFIG, ["train.method=mocov3", "train.max_steps=6"])
    out = tmp_path_factory.mktemp("tiny") / "ckpt"
    train(cfg, out)
    evaluate_checkpoint(out, plot=False)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    """The fp32 bundle of ``tiny_checkpoint`` (all exits)."""
    from export.bundle import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(tiny_checkpoint, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_bundle_b(tmp_path_factory) -> Path:
    """A second real bundle of the same shape (another seed, other weights): the bundle a
    rollout moves to."""
    import torch

    from export.bundle import export_bundle
    from training.config import load_config
    from training.loop import train

    torch.set_num_threads(1)
    cfg = load_config(TINY_CONFIG, ["train.method=mocov3", "train.max_steps=6", "train.seed=1"])
    ckpt = tmp_path_factory.mktemp("tiny-b") / "ckpt"
    train(cfg, ckpt)
    out = tmp_path_factory.mktemp("bundles-b") / "tiny-b"
    export_bundle(ckpt, out, progress=False)
    return out
