"""Shared fixtures: a tiny real checkpoint and its bundles, made once per session — or, when
``SDSSL_TEST_BUNDLES`` names a folder ``python -m tests.bundles`` wrote, taken from there (the
service and client tests under an interpreter without torch: ``make test-py313``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.bundles import BUNDLES, export_tiny, train_tiny

ROOT = Path(__file__).resolve().parents[1]
PREBUILT = os.environ.get("SDSSL_TEST_BUNDLES")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


def _prebuilt(name: str) -> Path:
    path = Path(PREBUILT or "") / name
    if not (path / "manifest.json").is_file():
        pytest.fail(f"SDSSL_TEST_BUNDLES has no {name}: run `python -m tests.bundles DIR`")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A depth-4, dim-32 MoCo v3 + SDSSL checkpoint, trained a few steps, with metrics."""
    if PREBUILT:
        pytest.skip("needs torch (SDSSL_TEST_BUNDLES: a run without the training stack)")
    return train_tiny(tmp_path_factory.mktemp("tiny") / "ckpt")


def _bundle(name: str, request, tmp_path_factory) -> Path:
    if PREBUILT:
        return _prebuilt(name)
    seed, options = BUNDLES[name]
    if seed == 0:
        checkpoint = request.getfixturevalue("tiny_checkpoint")
    else:
        checkpoint = train_tiny(tmp_path_factory.mktemp(f"{name}-ckpt") / "ckpt", seed)
    return export_tiny(checkpoint, tmp_path_factory.mktemp("bundles") / name, **options)


@pytest.fixture(scope="session")
def tiny_bundle(request, tmp_path_factory) -> Path:
    """The fp32 bundle of ``tiny_checkpoint`` (all exits)."""
    return _bundle("tiny", request, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_bundle_b(request, tmp_path_factory) -> Path:
    """A second real bundle of the same shape (another seed, other weights): the bundle a
    rollout moves to."""
    return _bundle("tiny-b", request, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_bundle_sparse(request, tmp_path_factory) -> Path:
    """``tiny_checkpoint`` with exits 1, 2 and 4 only: a reload target with other exits."""
    return _bundle("tiny-sparse", request, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_bundle_shallow(request, tmp_path_factory) -> Path:
    """``tiny_checkpoint`` with exits 1 and 2 only and no segments: its gallery depth (4) has
    no exit graph of its own."""
    return _bundle("tiny-shallow", request, tmp_path_factory)
