"""One writer per bundle folder of the data dir: an exclusive ``flock`` on ``writer.lock``.

Two processes that both wrote one folder (two servers in an overlapping deploy, or
``sdssl-reindex`` beside a server) would each keep a FAISS index that misses the other's adds,
while their snapshots trim the shared change log — items acknowledged by one would never be
found by search again. The lock is per bundle folder, the unit of shared state: a new bundle can
still be indexed offline while a server serves another from the same data dir. The kernel drops
the lock when its holder exits, kill -9 included.

The file (mode 0600) names the holder by pid and start time only: never its command line, which
may carry secrets.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path

from service.errors import Refusal

LOCK_FILE = "writer.lock"


class WriterLockHeld(Refusal):
    """Another process writes this folder; the message names it (``pid`` alone: for clients)."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


def _describe(info: dict) -> str:
    pid, since = info.get("pid"), info.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(
        since, int | float) else "?"  # fmt: skip
    return f"pid {pid if isinstance(pid, int) else '?'} (since {when})"


class WriterLock:
    """Held from :meth:`acquire` until :meth:`release` (or the process ends)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> WriterLock:
        """Take the lock or raise :class:`WriterLockHeld` naming the holder; never waits."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = self._read_holder(fd)
            os.close(fd)
            raise WriterLockHeld(
                f"another writer holds this bundle's index: {_describe(info)}; stop it first "
                "(one writer per bundle folder of the data dir)",
                info.get("pid"),
            ) from None
        info = {"pid": os.getpid(), "since": time.time()}
        os.fchmod(fd, 0o600)  # also a file an older version made 0644
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _read_holder(fd: int) -> dict:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def still_ours(self) -> bool:
        """Whether the lock file on disk is the one we hold (a deleted folder loses it)."""
        if self._fd is None:
            return False
        try:
            on_disk = os.stat(self.path)
        except OSError:
            return False
        mine = os.fstat(self._fd)
        return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
