"""Fixtures of the container tests: the images built from this checkout, and a world-readable
folder of bundles and images to mount into them (the containers run as uid 10001)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.images import podman


@pytest.fixture(scope="session")
def base_image() -> str:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (make test installs it where it can: root + apt)")
    return podman.ensure_base()


@pytest.fixture(scope="session")
def serve_cpu(base_image) -> str:
    return podman.build("docker/serve.Dockerfile", "localhost/sdssl-serve:cpu", "cpu")


@pytest.fixture(scope="session")
def serve_gpu(base_image) -> str:
    return podman.build("docker/serve.Dockerfile", "localhost/sdssl-serve:gpu", "gpu")


@pytest.fixture(scope="session")
def train_image(base_image) -> str:
    return podman.build("docker/train.Dockerfile", "localhost/sdssl-train:latest")


def open_up(path: Path) -> None:
    """Readable (and folders enterable) by every user, as files a user shares usually are."""
    for p in [path, *path.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


@pytest.fixture(scope="session")
def shared(tiny_bundle, tiny_checkpoint) -> Path:
    """bundles/tiny (4 exits), bundles/other (exits 2 and 4), images/<label>/*.png."""
    from export.bundle import export_bundle
    from training.data import load_splits

    root = Path(tempfile.mkdtemp(prefix="sdssl-images-"))
    shutil.copytree(tiny_bundle, root / "bundles" / "tiny")
    export_bundle(tiny_checkpoint, root / "bundles" / "other", exit_depths="2,4", progress=False)
    test = load_splits("mnist5k", 0.2).test
    for i in range(24):
        folder = root / "images" / str(int(test.labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        test.image(i).save(folder / f"digit-{i:03d}.png")
    open_up(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)
