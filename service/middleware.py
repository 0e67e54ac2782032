"""Pure-ASGI middleware: arrival time, request-body cap, per-route metrics."""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import APIError, error_body
from service.metrics import Metrics


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "body_too_large", f"request body exceeds {limit} bytes")


class IntakeMiddleware:
    """Stamps arrival time, enforces the body cap (by Content-Length and while streaming),
    and records request count and latency per route."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, metrics: Metrics) -> None:
        self.app, self.limit, self.metrics = app, max_body_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrival = time.perf_counter()
        scope.setdefault("state", {})["arrival"] = arrival
        status = {"code": 500}
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.limit
            except ValueError:
                too_big = False
            if too_big:
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

    async def _reject(self, send: Send, exc: APIError) -> None:
        body = json.dumps(error_body(exc.code, exc.message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": exc.status,
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
