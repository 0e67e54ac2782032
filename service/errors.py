"""The service's error types and the JSON shape every failure is answered in,
``{"error": {"code": str, "message": str}}``. No web framework here (the engine and the index
use these too); :mod:`service.api.error_handlers` maps them onto HTTP."""

from __future__ import annotations


class APIError(Exception):
    """An error with an HTTP status, a stable machine code and a human message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class Refusal(RuntimeError):
    """A reason this process must not serve at all (another writer holds the index, the
    requested device cannot be used): ``python -m service`` exits non-zero with it, one line."""


class StorageError(RuntimeError):
    """A write that cannot be made durable (503; 507 when ``full``): never acknowledged."""

    def __init__(self, message: str, full: bool = False) -> None:
        super().__init__(message)
        self.full = full


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}
