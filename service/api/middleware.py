"""Pure-ASGI middleware: arrival time, request id, request-body cap, security headers, per-route
metrics. What it learns of a request on arrival is the request's :class:`Intake`, which the
code serving the request reads with :func:`intake` (a context variable, typed, set once)."""

from __future__ import annotations

import json
import time
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_body
from service.logs import REQUEST_ID, request_id
from service.metrics import Metrics

# Content-Security-Policy per kind of response: the demo page loads only its own files (and
# blob: thumbnails); FastAPI's /docs and /redoc pages load Swagger UI / ReDoc from their CDN
# with an inline script; everything else is data, which nothing may run or frame.
CSP_DEMO = ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'")  # fmt: skip
CSP_DOCS = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net "
            "https://fonts.googleapis.com; "
            "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
            "https://cdn.redoc.ly; worker-src blob:; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'")  # fmt: skip
CSP_DATA = "default-src 'none'; frame-ancestors 'none'"
DOCS = ("/docs", "/redoc")


@dataclass(frozen=True)
class Intake:
    """A request as it arrived: when its headers were read (``time.perf_counter()`` seconds,
    where its budget starts) and its id."""

    arrival: float
    request_id: str


_INTAKE: ContextVar[Intake] = ContextVar("intake")


def intake() -> Intake:
    """The current request's :class:`Intake` (set by :class:`IntakeMiddleware`)."""
    return _INTAKE.get()


def _headers(csp: str) -> list[tuple[bytes, bytes]]:
    return [(b"content-security-policy", csp.encode()), (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer")]  # fmt: skip


HEADERS_DEMO, HEADERS_DOCS, HEADERS_DATA = (
    _headers(CSP_DEMO),
    _headers(CSP_DOCS),
    _headers(CSP_DATA),
)


def security_headers(path: str) -> list[tuple[bytes, bytes]]:
    """What every response carries: no framing, no MIME sniffing, and a CSP for its kind."""
    if path.startswith("/demo"):
        return HEADERS_DEMO
    return HEADERS_DOCS if path.startswith(DOCS) else HEADERS_DATA


class BodyTooLarge(HTTPException):
    """413; an HTTPException so that FastAPI's own body parsing passes it on unchanged."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"request body exceeds {limit} bytes (SDSSL_MAX_BODY_BYTES)",
            {"Connection": "close"},
        )
        self.code, self.message = "body_too_large", self.detail


class IntakeMiddleware:
    """Stamps arrival time and a request id (the client's ``X-Request-ID`` when plain, else a
    new one: answered in ``X-Request-ID`` and on every log line of the request), enforces the
    body cap (by Content-Length and while streaming), sets the security headers, and records
    request count and latency per route. A 413 is answered at once; the rest of the body is
    read and dropped by the HTTP protocol (:mod:`service.api.http_protocol`), so a client still
    sending never sees a reset."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, metrics: Metrics) -> None:
        self.app, self.limit, self.metrics = app, max_body_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrival = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        rid = request_id(headers.get(b"x-request-id"))
        _INTAKE.set(Intake(arrival, rid))
        REQUEST_ID.set(rid)
        secure = [*security_headers(scope.get("path", "")), (b"x-request-id", rid.encode())]
        code, depth = 500, ""
        try:
            declared = int(headers.get(b"content-length", b"-1"))
        except ValueError:
            declared = -1
        if declared > self.limit:
            await self._reject(send, BodyTooLarge(self.limit), secure)
            self._record(scope, 413, "", arrival)
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
            nonlocal code, depth
            if message["type"] == "http.response.start":
                code = message["status"]
                for name, value in message.get("headers", []):
                    if name == b"x-exit-depth":  # an inference route's answer: its depth
                        depth = value.decode("latin-1")
                message["headers"] = [*message.get("headers", []), *secure]
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        finally:
            self._record(scope, code, depth, arrival)

    async def _reject(
        self, send: Send, exc: BodyTooLarge, extra: list[tuple[bytes, bytes]]
    ) -> None:
        body = json.dumps(error_body(exc.code, exc.message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": exc.status_code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope: Scope, status: int, depth: str, arrival: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", "unmatched")
        self.metrics.requests.labels(path, str(status)).inc()
        self.metrics.latency.labels(path, str(depth)).observe(time.perf_counter() - arrival)
