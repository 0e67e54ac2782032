"""Body, image-count and API-key limits on a server configured with them."""

from __future__ import annotations

import httpx
import pytest

from tests.service.conftest import png
from tests.service.server import Server

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def strict(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("strict")
    s = Server(
        tiny_bundle, root / "data", root / "log", api_key=KEY, max_body_bytes=60_000, max_images=3
    ).start()
    yield s
    s.stop()


def img(i=0):
    return ("images", (f"{i}.png", png(seed=i), "image/png"))


def test_body_over_cap_by_length_and_by_stream(strict) -> None:
    with strict.client() as c:
        r = c.post("/v1/embeddings", files=[("images", ("big.png", b"\0" * 70_000, "image/png"))])
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        def chunks():  # no Content-Length: the cap applies while streaming
            for _ in range(20):
                yield b"x" * 10_000

        r = c.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.get("/livez").status_code == 200


def test_too_many_images(strict) -> None:
    with strict.client() as c:
        r = c.post("/v1/embeddings", files=[img(i) for i in range(4)])
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_images"
        assert c.post("/v1/embeddings", files=[img(i) for i in range(3)]).status_code == 200


@pytest.mark.parametrize(
    "call",
    [
        lambda c, h: c.post("/v1/items", files=[img()], data={"ids": "a"}, headers=h),
        lambda c, h: c.delete("/v1/items/a", headers=h),
        lambda c, h: c.post("/v1/admin/reload", json={"bundle": "/nowhere"}, headers=h),
    ],
    ids=["add", "delete", "reload"],
)
def test_mutating_routes_need_the_key(strict, call) -> None:
    with strict.client() as c:
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
            r = call(c, headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        ok = call(c, {"Authorization": f"Bearer {KEY}"})
        assert ok.status_code != 401
        ok = call(c, {"X-API-Key": KEY})
        assert ok.status_code != 401


def test_reading_needs_no_key(strict) -> None:
    with strict.client() as c:
        assert c.post("/v1/embeddings", files=[img()]).status_code == 200
        assert c.get("/v1/model").status_code == 200


def test_no_url_fetching(strict) -> None:
    with strict.client() as c:
        r = c.post("/v1/embeddings", json={"images": ["http://127.0.0.1:1/x.png"]})
        assert r.status_code == 422
        assert httpx.get(f"{strict.url}/livez").status_code == 200
