"""What a client may read of a failure: a refusal's own one-line reason, or a generic one (the
details go to the server log, never a path or an unexpected exception's text)."""

from __future__ import annotations

from export.manifest import BundleIntegrityError
from service.collection import IndexMismatch, WriterLockHeld
from service.errors import StorageError
from service.lifecycle.serving import NotServable


class RolloutError(RuntimeError):
    """A rollout that cannot start or go on (one-line reason for the client)."""


def public_reason(exc: BaseException, failed: str = "it failed") -> str:
    """What a client may read of a failure (a job's error, a refused reload): the bundle's or
    the storage's own one-line reason, never a path or the text of an unexpected exception —
    those go to the server log."""
    if isinstance(
        exc, BundleIntegrityError | IndexMismatch | StorageError | RolloutError | NotServable
    ):
        return str(exc)
    if isinstance(exc, WriterLockHeld):
        return f"its index is held by another writer (pid {exc.pid})"
    if isinstance(exc, OSError):
        failed = f"{failed}: {exc.strerror or 'I/O error'}"
    return f"{failed} ({type(exc).__name__}; details in the server log)"
