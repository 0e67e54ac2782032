"""Listing cursors: where a scroll stands (the last item id it gave), bound to the filter it
scrolls and signed with a key of the data dir.

Listing walks items in id order, so a cursor stays meaningful whatever is written meanwhile
and across a rollout (the new bundle holds the same ids). A cursor that was altered, made by
another data dir, or used with another filter is refused (422) rather than silently skipping or
repeating items.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from service.errors import APIError

KEY_FILE = "cursor.key"
VERSION = b"\x01"
MAC_BYTES, FILTER_BYTES = 16, 8
MAX_CURSOR = 2048  # characters: an id of 256 characters of up to 4 UTF-8 bytes, in base64


def _digest(spec: Any) -> bytes:
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))  # ASCII: lone surrogates too
    return hashlib.sha256(text.encode()).digest()[:FILTER_BYTES]


class Cursors:
    """Encodes and checks the cursors of one data dir (its key is made on first use)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / KEY_FILE
        self._key: bytes | None = None
        self._guard = threading.Lock()

    def _secret(self) -> bytes:
        with self._guard:
            if self._key is None:
                self._key = self._load_or_make()
            return self._key

    def _load_or_make(self) -> bytes:
        """The data dir's key; made atomically (mode 0600) if there is none — two servers on
        one data dir agree on whichever was linked first."""
        if not self.path.is_file():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{KEY_FILE}.{os.getpid()}.{threading.get_ident()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, secrets.token_hex(32).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self.path)
            tmp.unlink()
        return bytes.fromhex(self.path.read_text().strip())

    def encode(self, after: str, spec: Any) -> str:
        """The cursor of a page whose last item is ``after``, in a listing with filter ``spec``."""
        body = VERSION + _digest(spec) + after.encode()
        mac = hmac.new(self._secret(), body, hashlib.sha256).digest()[:MAC_BYTES]
        return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")

    def decode(self, cursor: str, spec: Any) -> str:
        """The item id a cursor continues after; 422 for a cursor this data dir did not give
        out, or one from a listing with another filter."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except ValueError:
            raw = b""
        mac, body = raw[:MAC_BYTES], raw[MAC_BYTES:]
        good = hmac.new(self._secret(), body, hashlib.sha256).digest()[:MAC_BYTES]
        if len(body) <= 1 + FILTER_BYTES or not hmac.compare_digest(mac, good):
            raise APIError(422, "invalid_cursor", "cursor is not one this server gave out")
        if body[:1] != VERSION or body[1 : 1 + FILTER_BYTES] != _digest(spec):
            raise APIError(
                422, "invalid_cursor", "cursor belongs to a listing with another filter: "
                "send the filter it was given with, or start again without a cursor",
            )  # fmt: skip
        return body[1 + FILTER_BYTES :].decode()
