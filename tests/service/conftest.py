from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.harness import digit_png, mnist_test
from tests.service.server import Server


def png(width: int = 40, height: int = 30, seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "PNG")
    return buf.getvalue()


__all__ = ["digit_png", "mnist_test", "png"]


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
