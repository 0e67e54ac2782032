"""Odd but legal images: a correct embedding (or a clear 4xx), and the server keeps answering."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import digit_png


def save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def embed(client, blob: bytes, depth: int = 4):
    return client.post(
        "/v1/embeddings",
        files=[("images", ("x", blob, "application/octet-stream"))],
        data={"exit_depth": str(depth)},
    )


def photo(w=64, h=48) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (w + h)], -1).astype(np.uint8)
    return Image.fromarray(arr)


def test_exif_rotated_jpeg_equals_the_upright_image(client) -> None:
    upright = photo()
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: display after a 270° turn, which undoes ROTATE_90
    a = embed(client, save(stored, "JPEG", quality=95, exif=exif.tobytes()))
    b = embed(client, save(upright, "JPEG", quality=95))
    assert a.status_code == b.status_code == 200
    ea, eb = np.array(a.json()["embeddings"][0]), np.array(b.json()["embeddings"][0])
    assert float(ea @ eb) > 0.99


def _with_itxt(png: bytes, size: int) -> bytes:
    data = b"Comment\0\0\0\0\0" + b"A" * size
    chunk = struct.pack(">I", len(data)) + b"iTXt" + data
    chunk += struct.pack(">I", zlib.crc32(b"iTXt" + data))
    return png[:33] + chunk + png[33:]  # after the signature + IHDR


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


HOSTILE = {
    "cmyk-jpeg": lambda: save(photo().convert("CMYK"), "JPEG"),
    "16-bit-png": lambda: save(
        Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)), "PNG"
    ),
    "animated-gif": _animated_gif,
    "1x1": lambda: save(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
    "10000x50-strip": lambda: save(Image.new("RGB", (10000, 50), (200, 10, 10)), "PNG"),
    "50x10000-strip": lambda: save(Image.new("L", (50, 10000), 128), "PNG"),
    "rgba-png": lambda: save(photo().convert("RGBA"), "PNG"),
    "palette-png": lambda: save(photo().convert("P"), "PNG"),
    "grey-webp": lambda: save(photo().convert("L"), "WEBP"),
    "bmp": lambda: save(photo(), "BMP"),
    "huge-itxt-png": lambda: _with_itxt(save(photo(), "PNG"), 5_000_000),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_image(client, name) -> None:
    r = embed(client, HOSTILE[name]())
    assert r.status_code == 200 or 400 <= r.status_code < 500, r.text
    if r.status_code == 200:
        e = np.array(r.json()["embeddings"][0])
        assert e.shape == (32,) and np.isfinite(e).all() and abs(np.linalg.norm(e) - 1) < 1e-4
    else:
        assert r.json()["error"]["message"]
    assert embed(client, digit_png(0)).status_code == 200


def test_first_gif_frame_is_used(client) -> None:
    red = embed(client, save(Image.new("RGB", (20, 20), (255, 0, 0)), "PNG")).json()
    gif = embed(client, _animated_gif()).json()
    assert np.allclose(red["embeddings"][0], gif["embeddings"][0], atol=1e-3)
