"""The data folder's health: atomic file writes, and whether writes can be made durable now.

A write is acknowledged only once it is durable, so every write first asks :class:`Storage`
whether the folder is usable (present, the same folder we opened, writable, not nearly full) and
the database file is checked again after the commit: SQLite happily commits into a file that was
deleted while open, and such a write would be gone at the next start.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from pathlib import Path

from service.errors import StorageError


def fsync_write(path: Path, data: bytes) -> None:
    """Write ``path`` atomically: temp file, fsync, rename, fsync of the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    fsync_rename(tmp, path)


def fsync_rename(tmp: Path, path: Path) -> None:
    """Make a written temp file durable and move it to ``path`` atomically."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def from_os_error(exc: BaseException, what: str) -> StorageError:
    """A storage failure as a StorageError whose message holds no path."""
    full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    if isinstance(exc, sqlite3.Error):
        text = str(exc).lower()
        full = "full" in text
        reason = "disk full" if full else ("read-only" if "readonly" in text else "database error")
    elif isinstance(exc, OSError):
        reason = os.strerror(exc.errno) if exc.errno else "I/O error"
    else:
        reason = type(exc).__name__
    return StorageError(f"{what}: {reason}", full=full)


class Storage:
    """Health of one folder and of the files in it (the database, the vectors file), as they
    were when opened."""

    def __init__(
        self, folder: Path, database: Path, min_free_bytes: int = 0, others: tuple[Path, ...] = ()
    ) -> None:
        self.folder, self.database, self.min_free_bytes = folder, database, min_free_bytes
        self.files = (folder, database, *others)
        self._identity = tuple(self._stat(p) for p in self.files)

    @staticmethod
    def _stat(path: Path) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def reopened(self) -> None:
        """Record the folder and files as they are now (after a restore)."""
        self._identity = tuple(self._stat(p) for p in self.files)

    def moved(self) -> bool:
        """The folder or one of its files is gone or replaced since it was opened."""
        return tuple(self._stat(p) for p in self.files) != self._identity

    def unchanged(self, path: Path) -> bool:
        """Whether ``path`` (one of the watched) is the very file it was when opened."""
        return self._stat(path) == self._identity[self.files.index(path)]

    def problem(self) -> StorageError | None:
        """Why a write cannot be made durable right now, or None."""
        if self.moved():
            return StorageError("the data folder was removed or replaced while in use")
        try:
            fs = os.statvfs(self.folder)
        except OSError as exc:
            return from_os_error(exc, "the data folder cannot be read")
        if fs.f_flag & os.ST_RDONLY:
            return StorageError("the data folder is on a read-only filesystem")
        free = fs.f_bavail * fs.f_frsize
        if free < self.min_free_bytes:
            return StorageError(
                f"the data folder's filesystem has {free >> 20} MiB free; writes need "
                f"{self.min_free_bytes >> 20} MiB (SDSSL_MIN_FREE_BYTES)",
                full=True,
            )
        probe = self.folder / f".probe-{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            return from_os_error(exc, "the data folder is not writable")
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)
        return None
