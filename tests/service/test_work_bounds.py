"""Decode work is bounded per request and in total, and never delays index reads (issue #9)."""

from __future__ import annotations

import concurrent.futures as cf
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import digit_png
from tests.service.server import Server

SIDE = 2000  # 4 MP: the cap of the server below
CAP = SIDE * SIDE


def blank_png(side: int = SIDE) -> bytes:
    """A near-cap image that is small on the wire: decoding costs what its pixels cost."""
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 200, np.uint8)).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bounded(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("bounded")
    s = Server(
        tiny_bundle, root / "data", root / "log", max_pixels=CAP, max_request_pixels=8 * CAP,
        decode_queue_pixels=8 * CAP, decode_threads=1, max_images=64,
    ).start()  # fmt: skip
    with s.client() as c:
        r = c.post("/v1/items", files=[("images", ("k.png", digit_png(2), "image/png"))],
                   data={"ids": "keeper"})  # fmt: skip
        assert r.status_code == 200
    yield s
    s.stop()


def test_a_request_over_its_pixel_budget_is_413_before_decoding(bounded) -> None:
    blob = blank_png()
    with bounded.client() as c:
        r = c.post("/v1/embeddings", files=[("images", ("x.png", blob, "image/png"))] * 9)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert str(8 * CAP) in r.json()["error"]["message"]
        r = c.post("/v1/embeddings", files=[("images", ("x.png", blob, "image/png"))] * 2)
        assert r.status_code == 200


def test_64_near_cap_images_from_8_clients_get_503s_and_reads_stay_fast(bounded) -> None:
    blob = blank_png()
    stop = threading.Event()
    reads: list[tuple[int, float]] = []

    def reader() -> None:
        with bounded.client() as c:
            while not stop.is_set():
                started = time.perf_counter()
                r = c.get("/v1/items/keeper")
                reads.append((r.status_code, time.perf_counter() - started))
                time.sleep(0.02)

    def client(_: int) -> list[tuple[int, str | None]]:
        out = []
        with bounded.client() as c:
            for _ in range(2):  # 8 clients x 2 requests x 8 images
                r = c.post("/v1/embeddings", files=[("images", ("x.png", blob, "image/png"))] * 8)
                out.append((r.status_code, r.headers.get("retry-after")))
        return out

    t = threading.Thread(target=reader)
    t.start()
    try:
        with cf.ThreadPoolExecutor(8) as pool:
            results = [x for xs in pool.map(client, range(8)) for x in xs]
    finally:
        stop.set()
        t.join()
    codes = [code for code, _ in results]
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
    assert all(int(ra) >= 1 for code, ra in results if code == 503)
    assert len(reads) >= 10 and all(code == 200 for code, _ in reads)
    slowest = max(seconds for _, seconds in reads)
    assert slowest < 0.1, f"GET /v1/items/keeper took {1000 * slowest:.0f} ms under decode load"
    with bounded.client() as c:  # and it recovers fully
        r = c.post("/v1/embeddings", files=[("images", ("x.png", blob, "image/png"))] * 8)
        assert r.status_code == 200
