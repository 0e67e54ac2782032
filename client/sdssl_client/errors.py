"""Typed errors: every non-2xx answer becomes one, carrying the server's code and message."""

from __future__ import annotations


class SDSSLError(Exception):
    """The server refused or failed a request (``status``, ``code``, ``message``)."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


class InvalidRequest(SDSSLError):
    """400/413/415/422: the request itself is wrong (fix it; retrying will not help)."""


class Unauthorized(SDSSLError):
    """401: missing or wrong API key."""


class NotFound(SDSSLError):
    """404: no such item, job or snapshot."""


class Conflict(SDSSLError):
    """409: refused in the server's current state (a bundle refused, a rollout running)."""


class Unavailable(SDSSLError):
    """503: loading or overloaded (``retry_after`` says when to come back); 507: storage full."""


class ServerError(SDSSLError):
    """5xx: the server failed (please report it with the server log)."""


def error_for(status: int, code: str, message: str, retry_after: float | None) -> SDSSLError:
    cls = {401: Unauthorized, 404: NotFound, 409: Conflict, 503: Unavailable, 507: Unavailable}.get(
        status, InvalidRequest if 400 <= status < 500 else ServerError
    )
    return cls(status, code, message, retry_after)
