"""Every hostile request gets a 4xx with a clear message; the server keeps serving."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import png


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 30000) -> bytes:
    """A PNG that declares side x side pixels of one colour (header only: tiny on the wire)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * side
    comp = zlib.compressobj(9)
    data = comp.compress(row * 64) + comp.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
    )


def encoded(fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(buf, fmt, **kw)
    return buf.getvalue()


def post_image(client, blob: bytes, name="x.bin", **kw):
    return client.post(
        "/v1/embeddings", files=[("images", (name, blob, "application/octet-stream"))], **kw
    )


JPEG = encoded("JPEG")

CASES = [
    ("non-image bytes", b"hello, I am text", 400, "not_an_image"),
    ("truncated JPEG", JPEG[: len(JPEG) // 2], 400, "corrupt_image"),
    ("0-byte file", b"", 400, "empty_image"),
    ("decompression bomb", bomb_png(), 413, "image_too_large"),
    ("TIFF", encoded("TIFF"), 415, "unsupported_format"),
    (
        "SVG",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        400,
        "not_an_image",
    ),
    ("PDF", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", 400, "not_an_image"),
]


@pytest.mark.parametrize(("label", "blob", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_images(client, label, blob, status, code) -> None:
    r = post_image(client, blob)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"exit_depth": 9}, 422, "unknown_exit_depth"),
        ({"exit_depth": 0}, 422, "unknown_exit_depth"),
        ({"exit_depth": "two"}, 422, "invalid_request"),
        ({"exit_depth": 2, "budget_ms": 10}, 422, "invalid_request"),
        ({"budget_ms": 0}, 422, "invalid_budget"),
        ({"budget_ms": -5}, 422, "invalid_budget"),
        ({"budget_ms": "nan"}, 422, "invalid_budget"),
        ({"budget_ms": "inf"}, 422, "invalid_budget"),
    ],
)
def test_bad_parameters(client, params, status, code) -> None:
    r = post_image(client, png(), params=params)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text


def test_bad_search_requests(client) -> None:
    img = [("image", ("a.png", png(), "image/png"))]
    for k in (0, 1001, "ten"):
        r = client.post("/v1/search", files=img, data={"k": str(k)})
        assert r.status_code == 422, r.text
    for vector, code in (([0.1] * 31, "invalid_vector"), ([float("nan")] + [0.0] * 31, None)):
        r = client.post("/v1/search", content=_json({"vector": vector, "exit_depth": 2}),
                        headers={"content-type": "application/json"})  # fmt: skip
        assert r.status_code in (400, 422), r.text
        if code:
            assert r.json()["error"]["code"] == code
    r = client.post("/v1/search", json={"vector": [0.0] * 32, "exit_depth": 2})
    assert r.status_code == 422 and "norm" in r.json()["error"]["message"]
    r = client.post("/v1/search", json={"vector": [0.1] * 32})  # gallery space: no depth needed
    assert r.status_code == 200 and r.json()["gallery_depth"] == r.json()["exit_depth"] == 4
    assert client.get("/v1/items/nobody").status_code == 404


def _json(obj) -> bytes:
    import json

    return json.dumps(obj, allow_nan=True).encode()


def test_malformed_bodies(client) -> None:
    r = client.post(
        "/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    r = client.post("/v1/embeddings", json={"images": ["***not base64***"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_base64"
    r = client.post("/v1/embeddings", json={"images": []})
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_images"
    r = client.post(
        "/v1/embeddings",
        content=b'--xyz\r\nContent-Disposition: form-data; name="images"\r\n\r\nbroken',
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert 400 <= r.status_code < 500
    r = client.post("/v1/admin/reload", content=b"[]", headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/v1/items", files=[("images", ("a.png", png(), "image/png"))])
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_ids"
    r = client.post("/v1/items", files=[("images", ("a.png", png(), "image/png"))],
                    data={"ids": "a", "metadata": "{bad"})  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_metadata"


def test_server_still_serves_after_all_that(client) -> None:
    assert client.get("/readyz").status_code == 200
    assert post_image(client, png()).status_code == 200
