"""uvicorn's HTTP protocol with the two timeouts it lacks: headers and body must arrive in time.

Without them a client that sends its headers (or its body) a byte at a time holds a connection
and its buffers for as long as it likes (slowloris). Each request's headers must be complete
within ``header_timeout_s`` of its first byte (or of the connection opening), and its body
within ``body_timeout_s`` after its headers; otherwise the client gets 408 (if nothing was
answered yet) and the connection is closed. A request whose body has arrived is never cut off,
however long its answer takes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import error_body


def _timeout_response(what: str, seconds: float) -> bytes:
    body = json.dumps(
        error_body("request_timeout", f"the request's {what} did not arrive within {seconds:g} s")
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class TimedHttpProtocol(HttpToolsProtocol):
    """Use :func:`protocol_class` to bind the timeouts."""

    header_timeout_s = 10.0
    body_timeout_s = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._awaiting = "headers"

    def _arm(self, what: str, seconds: float) -> None:
        self._disarm()
        self._awaiting = what
        self._deadline = self.loop.call_later(seconds, self._expired, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(_timeout_response(self._awaiting, seconds))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() now reports a disconnect
            cycle.message_event.set()
        self.transport.close()

    # ---- the points where a request's parts begin and end ---------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers", self.header_timeout_s)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None or self._awaiting != "headers":
            self._arm("headers", self.header_timeout_s)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm("body", self.body_timeout_s)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol_class(header_timeout_s: float, body_timeout_s: float) -> type[TimedHttpProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these timeouts."""
    return type(
        "TimedHttpProtocol",
        (TimedHttpProtocol,),
        {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s},
    )
