"""Pure-ASGI middleware: arrival time, request-body cap, per-route metrics."""

from __future__ import annotations

import json
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_body
from service.metrics import Metrics

DRAIN_MIN_BYTES = 64 * 2**20


class BodyTooLarge(HTTPException):
    """413; an HTTPException so that FastAPI's own body parsing passes it on unchanged."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes", {"Connection": "close"})
        self.code, self.message = "body_too_large", self.detail


async def drain(receive: Receive, budget: int) -> None:
    """Read and drop the rest of a request body, up to ``budget`` bytes. A client that writes
    its whole body before reading (urllib, many others) then sees the 413 instead of a
    connection reset from closing a socket with unread data."""
    drained = 0
    while drained <= budget:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class IntakeMiddleware:
    """Stamps arrival time, enforces the body cap (by Content-Length and while streaming,
    draining a bounded remainder before answering 413), and records request count and latency
    per route."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, metrics: Metrics) -> None:
        self.app, self.limit, self.metrics = app, max_body_bytes, metrics
        self.drain_limit = max(2 * max_body_bytes, DRAIN_MIN_BYTES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrival = time.perf_counter()
        scope.setdefault("state", {})["arrival"] = arrival
        status = {"code": 500}
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"-1"))
        except ValueError:
            declared = -1
        if declared > self.limit:
            if declared <= self.drain_limit:
                await drain(receive, self.drain_limit)
            await self._reject(send, BodyTooLarge(self.limit))
            self._record(scope, 413, arrival)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    if message.get("more_body", False):
                        await drain(receive, self.drain_limit - seen)
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        finally:
            self._record(scope, status["code"], arrival)

    async def _reject(self, send: Send, exc: BodyTooLarge) -> None:
        body = json.dumps(error_body(exc.code, exc.message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": exc.status_code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope: Scope, status: int, arrival: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", "unmatched")
        depth = scope.get("state", {}).get("exit_depth", "")
        self.metrics.requests.labels(path, str(status)).inc()
        self.metrics.latency.labels(path, str(depth)).observe(time.perf_counter() - arrival)
