from __future__ import annotations

import functools
import io

import numpy as np
import pytest
from PIL import Image

from tests.service.server import Server


def png(width: int = 40, height: int = 30, seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "PNG")
    return buf.getvalue()


@functools.cache
def _mnist_test():
    from training.data import load_splits

    return load_splits("mnist5k", 0.2).test


def digit_png(i: int) -> bytes:
    """A real mnist5k test digit as PNG bytes."""
    img = _mnist_test().image(i)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def server(tiny_bundle, tmp_path_factory):
    """The shared server: default settings, no API key."""
    root = tmp_path_factory.mktemp("srv")
    s = Server(tiny_bundle, root / "data", root / "server.log").start()
    yield s
    s.stop()


@pytest.fixture
def client(server):
    with server.client() as c:
        yield c
