"""The gallery's vectors, stored once and compactly: ``vectors.f16``, one float16 row of ``dim``
values per item number (row ``num_id - 1``), written with ``pwrite`` and read through a
read-only memory map.

Why a file beside SQLite rather than SQLite rows: a search re-ranks its candidates with their
stored vectors, and a gather from a memory map costs microseconds where a statement per query
costs a millisecond; training and rebuilding an index read every vector sequentially at disk
speed; and SQLite keeps only the small rows (ids, metadata), so its scans and ``VACUUM INTO``
snapshots stay fast. float16 halves the bytes (256 B per item at D = 128) and loses nothing a
cosine ranking sees (its rounding, ~5e-4 relative, is far below the gap between neighbours).

Crash safety comes from order: an item's row is written and made durable (``fdatasync``) before
the SQLite transaction that makes its number reachable commits. Rows past the newest committed
number are garbage a later write overwrites; rows of deleted or replaced items stay until the
file is rewritten (item numbers are never reused).
"""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path

import numpy as np

VECTORS = "vectors.f16"
GROWTH = 1 << 16  # rows added at least when the file grows (1 << 16 × 256 B = 16 MiB at D = 128)


class VectorFile:
    """Thread-safe for reads beside one writer (the index's lock serialises writers)."""

    def __init__(self, folder: Path, dim: int) -> None:
        self.path, self.dim = folder / VECTORS, dim
        self.row_bytes = 2 * dim
        new = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if new:  # its directory entry must survive a crash too
            folder_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(folder_fd)
            finally:
                os.close(folder_fd)
        self._guard = threading.Lock()
        size = os.fstat(self._fd).st_size
        if size % self.row_bytes:
            raise ValueError(f"{VECTORS} is {size} bytes, not whole rows of {self.row_bytes}")
        self._rows = size // self.row_bytes  # capacity
        self._map = self._mapped()

    def _mapped(self, rows: int | None = None) -> np.ndarray:
        """A read-only map of ``rows`` rows through the open descriptor (not the path: the
        file may have been deleted and still be ours)."""
        rows = self._rows if rows is None else rows
        if rows == 0:
            return np.zeros((0, self.dim), dtype=np.float16)
        view = mmap.mmap(self._fd, rows * self.row_bytes, prot=mmap.PROT_READ)
        return np.frombuffer(view, dtype=np.float16).reshape(rows, self.dim)

    @property
    def capacity(self) -> int:
        """Rows the file holds now (written or not)."""
        return self._rows

    def write(self, first: int, vectors: np.ndarray) -> None:
        """Rows for item numbers ``first``, ``first + 1``, …: ``vectors [n, dim]`` (as float16).
        Not durable until :meth:`sync`."""
        rows = np.ascontiguousarray(vectors, dtype=np.float16)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"vectors shape {rows.shape} != (n, {self.dim})")
        if first < 1:
            raise ValueError("item numbers start at 1")
        end = first - 1 + len(rows)
        if end > self._rows:
            self._grow(end)
        view = memoryview(rows.tobytes())
        offset, done = (first - 1) * self.row_bytes, 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], offset + done)

    def _grow(self, rows: int) -> None:
        capacity = max(rows, self._rows + max(GROWTH, self._rows // 4))
        os.ftruncate(self._fd, capacity * self.row_bytes)
        mapped = self._mapped(capacity)  # readers holding the old map keep reading it safely
        with self._guard:
            self._rows, self._map = capacity, mapped

    def sync(self) -> None:
        """Make every row written so far durable (and the file's new size)."""
        os.fsync(self._fd)

    def read(self, num_ids: np.ndarray) -> np.ndarray:
        """``[n, dim]`` float32 rows of these item numbers (each ≤ capacity)."""
        with self._guard:
            mapped = self._map
        index = np.asarray(num_ids, dtype=np.int64) - 1
        if len(index) and (index.min() < 0 or index.max() >= len(mapped)):
            raise IndexError("an item number past the vectors file")
        return np.asarray(mapped[index], dtype=np.float32)

    def close(self) -> None:
        with self._guard:
            self._map = np.zeros((0, self.dim), dtype=np.float16)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def copy_to(self, path: Path) -> None:
        """Copy every row to ``path`` (fsynced) through the open handle — also when the file
        was deleted meanwhile."""
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            size, offset = self._rows * self.row_bytes, 0
            while offset < size:
                block = os.pread(self._fd, min(1 << 24, size - offset), offset)
                if not block:
                    break
                os.write(out, block)
                offset += len(block)
            os.ftruncate(out, size)
            os.fsync(out)
        finally:
            os.close(out)
