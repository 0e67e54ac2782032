"""Warm every cold path of a request before /readyz says ready.

Timing the graphs (:func:`service.lifecycle.runtime.warm_up`) is not enough: the first real request
also pays for Pillow loading its format plugins, the multipart parser's first use, the first JSON
response, FastAPI's first dependency resolution… — 140 ms on the first request after start-up here,
against 3 ms for the next, and its outlier then misled the planner. So the app answers a few
requests of every inference kind to itself, in-process through the whole ASGI stack, and the
scheduler forgets what it learned from the cold ones."""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from typing import Any

import numpy as np
from PIL import Image

from service.lifecycle.runtime import Runtime

log = logging.getLogger(__name__)
BOUNDARY = "sdsslwarmup"


def _image(size: int, fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def _multipart(parts: list[tuple[str, bytes, str | None]]) -> bytes:
    out = b""
    for name, data, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (
            f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
        )
    return out + f"--{BOUNDARY}--\r\n".encode()


async def _call(app: Any, method: str, path: str, body: bytes, ctype: str, query: str) -> int:
    """One request through the ASGI app, as uvicorn would deliver it (with a key when the
    server wants one); its status."""
    settings = app.state.settings
    key = settings.api_key or settings.read_key
    auth = [(b"authorization", f"Bearer {key.get_secret_value()}".encode())] if key else []
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": query.encode(), "root_path": "", "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0), "state": {},
        "headers": [(b"host", b"warmup"), (b"content-type", ctype.encode()),
                    (b"content-length", str(len(body)).encode()), *auth],
    }  # fmt: skip
    delivered, status = False, {}

    async def receive() -> dict:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status["code"] = message["status"]

    await app(scope, receive, send)
    return status.get("code", 0)


async def warm_request_paths(app: Any, runtime: Runtime, rounds: int = 3) -> None:
    """Embed and search (multipart and JSON, PNG and a resized JPEG, by vector) in-process;
    forget the calibration learned from the first, cold round."""
    size = runtime.manifest.model.img_size
    png, jpeg = _image(size, "PNG"), _image(2 * size + 3, "JPEG")
    d = runtime.exit_depths[0]
    vector = json.dumps([1.0] + [0.0] * (runtime.manifest.model.dim - 1))
    mp = f"multipart/form-data; boundary={BOUNDARY}"
    b64 = json.dumps({"images": [base64.b64encode(jpeg).decode()], "budget_ms": 1000}).encode()
    requests = [
        ("/v1/embeddings", _multipart([("images", png, "a.png")]), mp, "budget_ms=1000"),
        ("/v1/embeddings", b64, "application/json", ""),
        ("/v1/search", _multipart([("image", jpeg, "a.jpg"), ("k", b"5", None)]), mp, ""),
        ("/v1/search", _multipart([("vector", vector.encode(), None)]), mp, f"exit_depth={d}"),
    ]
    started = time.perf_counter()
    for round_ in range(rounds):
        for path, body, ctype, query in requests:
            code = await _call(app, "POST", path, body, ctype, query)
            if code != 200:
                log.warning("warm-up request %s answered %d", path, code)
        if round_ == 0:
            runtime.scheduler.calibration.reset()
    log.info("request paths warmed in %.2f s", time.perf_counter() - started)
