"""uvicorn's HTTP protocol with what it lacks: read timeouts, a cap on request headers, and
closes that never reset a client still sending its body.

- **Timeouts** (slowloris): each request's headers must be complete within ``header_timeout_s``
  of its first byte (or of the connection opening), and its body within ``body_timeout_s``
  after its headers; otherwise the client gets 408 (if nothing was answered yet) and the
  connection is closed. A request whose body has arrived is never cut off, however long its
  answer takes.
- **Header cap**: request line and headers together at most ``max_header_bytes`` (431).
- **No resets**: a server that closes a socket with unread data makes the kernel send a reset,
  and a client that writes its whole body before reading (urllib, requests, curl) then sees a
  broken connection instead of the answer. So a close asked for while the request's body is
  still arriving waits until the body has arrived (read and dropped) or its timeout; and after a
  request too broken to parse, the answer is sent, the sending side shut, and the rest read and
  dropped until the client closes (at most ``body_timeout_s``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api.middleware import security_headers
from service.errors import error_body


def _response(status: str, code: str, message: str) -> bytes:
    body = json.dumps(error_body(code, message)).encode()
    extra = "".join(f"{k.decode()}: {v.decode()}\r\n" for k, v in security_headers(""))
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
    )
    return head.encode() + body


class HeadersTooLarge(Exception):
    """Raised from a parser callback: the request line and headers passed the cap."""


class _CloseAfterBody:
    """The transport as uvicorn sees it: a close asked for while the request's body is still
    arriving waits for the end of the body (uvicorn's parser drops what the app did not read)."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpProtocol) -> None:
        self._transport, self._protocol = transport, protocol

    def close(self) -> None:
        if self._protocol.in_body and not self._transport.is_closing():
            self._protocol.close_after_body = True
            self._protocol.flow.resume_reading()
            return
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing() or self._protocol.close_after_body

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpProtocol(HttpToolsProtocol):
    """Use :func:`protocol_class` to bind the limits."""

    header_timeout_s = 10.0
    body_timeout_s = 60.0
    max_header_bytes = 65536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._awaiting = "headers"
        self._header_bytes = 0
        self._parsed_bytes = 0  # the same, as the parser hands it over (pipelined requests)
        self._tail = b""  # the last bytes of a head still arriving: its end may span chunks
        self._lingering = False
        self._pending_answer: bytes | None = None
        self.in_body = False  # headers complete, body not yet
        self.close_after_body = False

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
        raw = self.transport._transport if isinstance(self.transport, _CloseAfterBody) else None
        transport = raw or self.transport
        if transport.is_closing():
            return
        cycle = self.cycle
        if self._awaiting == "headers" or (cycle is not None and not cycle.response_started):
            what = f"the request's {self._awaiting} did not arrive within {seconds:g} s"
            transport.write(_response("408 Request Timeout", "request_timeout", what))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() now reports a disconnect
            cycle.message_event.set()
        transport.close()

    def _linger(self, answer: bytes) -> None:
        """Answer a request that cannot be parsed on, then read and drop whatever the client
        still sends until it closes (or the body timeout): a close now would reset it. A
        response still in progress (a pipelined predecessor) goes out first."""
        self._lingering = True  # nothing more is parsed; what arrives is dropped
        self._unset_keepalive_if_required()  # its timer must not close while the client sends
        self.flow.resume_reading()
        self._disarm()
        transport = self.transport._transport
        self._deadline = self.loop.call_later(self.body_timeout_s, transport.close)
        cycle = self.cycle
        if cycle is not None and self.pipeline and self.pipeline[0][0] is cycle:
            self.pipeline.popleft()  # broken while queued behind a running request: drop it,
            cycle.disconnected = True  # and answer once those before it are answered
            self._pending_answer = answer
            return
        if cycle is not None and not cycle.response_complete and not self.in_body:
            self._pending_answer = answer  # the app answers its (whole) request first
            return
        if cycle is not None and not cycle.response_complete:  # its own body broke: app, stop
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:  # an answer now would land inside its response
                transport.close()
                return
        self._answer_and_shut(answer)

    def _answer_and_shut(self, answer: bytes) -> None:
        transport = self.transport._transport
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()

    def on_response_complete(self) -> None:
        if self._pending_answer is not None and not self.pipeline:  # its turn has come
            self.server_state.total_requests += 1
            answer, self._pending_answer = self._pending_answer, None
            self._answer_and_shut(answer)
            return
        super().on_response_complete()

    # ---- the points where a request's parts begin and end ---------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _CloseAfterBody(transport, self)  # type: ignore[assignment]
        self._arm("headers", self.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if not self.in_body and self._headers_overflow(data):
            self.send_400_response("headers too large")
            return
        super().data_received(data)

    def _headers_overflow(self, data: bytes) -> bool:
        """Whether a request's head passes the cap with ``data`` — counted here, on the wire,
        because the parser buffers a header until it is complete (one endless header would
        otherwise grow without bound); a chunk's bytes after the head's end do not count."""
        end = (self._tail + data).find(b"\r\n\r\n")
        if end < 0:
            self._header_bytes += len(data)
            self._tail = (self._tail + data)[-3:]
        else:
            self._header_bytes += max(0, end + 4 - len(self._tail))
            self._tail = b""
        overflow = self._header_bytes > self.max_header_bytes
        if end >= 0:
            self._header_bytes = 0  # the next request's head counts afresh
        return overflow

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse: ours is JSON, names a passed limit,
        and lingers instead of resetting."""
        if self._header_bytes > self.max_header_bytes or msg == "headers too large":
            self._linger(_response(
                "431 Request Header Fields Too Large", "headers_too_large",
                f"the request line and headers exceed {self.max_header_bytes} bytes "
                "(SDSSL_MAX_HEADER_BYTES)",
            ))  # fmt: skip
        else:
            self._linger(_response("400 Bad Request", "malformed_http", "malformed HTTP request"))

    def _count(self, n: int) -> None:
        self._parsed_bytes += n
        if self._parsed_bytes > self.max_header_bytes:
            self._header_bytes = self._parsed_bytes
            raise HeadersTooLarge

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_bytes = 0
        if self._deadline is None or self._awaiting != "headers":
            self._arm("headers", self.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.in_body = True
        super().on_headers_complete()
        self._arm("body", self.body_timeout_s)

    def on_message_complete(self) -> None:
        self.in_body = False
        super().on_message_complete()
        self._disarm()
        if self.close_after_body:
            self.transport._transport.close()
        elif self.cycle is not None and self.cycle.response_complete:
            # answered before its body ended: keep-alive idles from now, as after any answer
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol_class(
    header_timeout_s: float, body_timeout_s: float, max_header_bytes: int
) -> type[GuardedHttpProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s,
         "max_header_bytes": max_header_bytes},
    )  # fmt: skip
