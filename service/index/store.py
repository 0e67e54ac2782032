"""SQLite, the durable truth of a bundle's items: ids, metadata, embeddings at every exit depth,
each item's kept input (a canonical PNG a later bundle re-embeds from, when kept), and a change
log that the FAISS snapshots are tagged against.

WAL journal, ``synchronous=FULL``; every mutation is one ``BEGIN IMMEDIATE`` transaction,
committed before a request is acknowledged. Numeric ids (FAISS's ids) are never reused, so a
snapshot can never hold a stale meaning for one.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    num_id INTEGER NOT NULL UNIQUE,
    metadata TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS vectors (num_id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS inputs (num_id INTEGER PRIMARY KEY, png BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, num_id INTEGER NOT NULL
);
"""
DATABASE = "items.sqlite"
SQL_PARAMS = 900  # SQLite's bound-parameter limit is 999 on older builds


class IndexMismatch(RuntimeError):
    """The index folder belongs to a different bundle (or model shape)."""


@dataclass(frozen=True)
class Change:
    """What one upsert did: num_ids removed (replaced items) and added, and which ids replaced."""

    removed: list[int]
    added: list[int]
    replaced: list[bool]


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


class ItemStore:
    """Not thread-safe on its own: :class:`~service.index.ItemIndex` serialises calls."""

    def __init__(self, folder: Path, owner: dict[str, str], depth: int, dim: int) -> None:
        self.path = folder / DATABASE
        self.depth, self.dim = depth, dim
        self.db = connect(self.path)
        self.db.executescript(SCHEMA)
        self._check_owner(owner)

    def _check_owner(self, expected: dict[str, str]) -> None:
        rows = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if not rows:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany("INSERT INTO meta VALUES (?, ?)", expected.items())
            return
        if rows.get("bundle_id") != expected["bundle_id"]:
            raise IndexMismatch(
                f"this index folder belongs to bundle {rows.get('bundle_id', '?')[:12]}, not "
                f"{expected['bundle_id'][:12]}: re-index it for this bundle"
            )
        if any(rows.get(k) != expected[k] for k in ("dim", "depth")):
            raise IndexMismatch("this index folder holds another model shape")

    # ---- writes --------------------------------------------------------------------------------
    def upsert(
        self,
        ids: list[str],
        metadata: list[str],
        vectors: np.ndarray,
        inputs: list[bytes | None] | None = None,
    ) -> Change:
        """Insert or replace rows in one transaction; ``metadata`` is canonical JSON text,
        ``inputs`` the kept PNGs (None: none kept)."""
        now = time.time()
        inputs = inputs if inputs is not None else [None] * len(ids)
        removed, added, replaced = [], [], []
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT value FROM meta WHERE key='next_num_id'").fetchone()
            next_id = int(row[0]) if row else 1
            for item_id, meta, vec, png in zip(ids, metadata, vectors, inputs, strict=True):
                old = self.db.execute(
                    "SELECT num_id FROM items WHERE id = ?", (item_id,)
                ).fetchone()
                if old is not None:
                    self._delete_rows(old[0])
                    removed.append(old[0])
                self.db.execute(
                    "INSERT INTO items VALUES (?, ?, ?, ?)", (item_id, next_id, meta, now)
                )
                self.db.execute(
                    "INSERT INTO vectors VALUES (?, ?)",
                    (next_id, np.ascontiguousarray(vec, dtype=np.float32).tobytes()),
                )
                if png is not None:
                    self.db.execute("INSERT INTO inputs VALUES (?, ?)", (next_id, png))
                self.db.execute("INSERT INTO log (op, num_id) VALUES ('add', ?)", (next_id,))
                added.append(next_id)
                replaced.append(old is not None)
                next_id += 1
            self.db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('next_num_id', ?)", (str(next_id),)
            )
        return Change(removed, added, replaced)

    def delete(self, item_id: str) -> int | None:
        """Remove an item in one transaction; its num_id, or None if there was none."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT num_id FROM items WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                return None
            self._delete_rows(row[0])
        return row[0]

    def _delete_rows(self, num_id: int) -> None:
        self.db.execute("DELETE FROM items WHERE num_id = ?", (num_id,))
        self.db.execute("DELETE FROM vectors WHERE num_id = ?", (num_id,))
        self.db.execute("DELETE FROM inputs WHERE num_id = ?", (num_id,))
        self.db.execute("INSERT INTO log (op, num_id) VALUES ('del', ?)", (num_id,))

    def mark_snapshot(self, seq: int) -> None:
        """A snapshot holds every change up to ``seq``: record it and trim the log."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('snapshot_seq', ?)", (str(seq),))
            self.db.execute("DELETE FROM log WHERE seq <= ?", (seq,))

    # ---- reads ---------------------------------------------------------------------------------
    def decode(self, blob: bytes) -> np.ndarray:
        return np.frombuffer(blob, dtype=np.float32).reshape(self.depth, self.dim)

    def get(self, item_id: str) -> tuple[str, str | None, float] | None:
        return self.db.execute(
            "SELECT id, metadata, created_at FROM items WHERE id = ?", (item_id,)
        ).fetchone()

    def count(self, where: str = "1", params: list | None = None) -> int:
        """Items matching a compiled filter (:mod:`.filters`); all by default."""
        sql = f"SELECT COUNT(*) FROM items WHERE {where}"
        return self.db.execute(sql, params or []).fetchone()[0]

    def page(
        self, after: int, limit: int, where: str = "1", params: list | None = None
    ) -> list[tuple[int, str, str | None, float]]:
        """``(num_id, id, metadata, created_at)`` of up to ``limit`` matching items with
        num_id > ``after``, in num_id order (new items come last: a stable scroll)."""
        sql = (f"SELECT num_id, id, metadata, created_at FROM items WHERE num_id > ? AND "
               f"({where}) ORDER BY num_id LIMIT ?")  # fmt: skip
        return self.db.execute(sql, [after, *(params or []), limit]).fetchall()

    def matching(self, where: str, params: list) -> np.ndarray:
        """num_ids of the items a compiled filter selects."""
        rows = self.db.execute(f"SELECT num_id FROM items WHERE {where}", params).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def vector_of(self, item_id: str) -> np.ndarray | None:
        """``[L, D]``: an item's stored embeddings at every depth."""
        row = self.db.execute(
            "SELECT data FROM vectors JOIN items USING (num_id) WHERE id = ?", (item_id,)
        ).fetchone()
        return None if row is None else self.decode(row[0])

    def with_inputs(
        self, after: int, limit: int, upto: int
    ) -> list[tuple[int, str, str | None, bytes | None]]:
        """``(num_id, id, metadata, kept PNG or None)`` of up to ``limit`` items with ``after``
        < num_id <= ``upto``, in num_id order: what a rollout re-embeds."""
        return self.db.execute(
            "SELECT num_id, id, metadata, png FROM items LEFT JOIN inputs USING (num_id) "
            "WHERE num_id > ? AND num_id <= ? ORDER BY num_id LIMIT ?",
            (after, upto, limit),
        ).fetchall()

    def input_of(self, item_id: str) -> bytes | None:
        """An item's kept input PNG (None: no such item, or none kept)."""
        row = self.db.execute(
            "SELECT png FROM inputs JOIN items USING (num_id) WHERE id = ?", (item_id,)
        ).fetchone()
        return None if row is None else row[0]

    def count_after(self, after: int, upto: int) -> int:
        sql = "SELECT COUNT(*) FROM items WHERE num_id > ? AND num_id <= ?"
        return self.db.execute(sql, (after, upto)).fetchone()[0]

    def last_num_id(self) -> int:
        """The newest item's num_id (0 when empty)."""
        return self.db.execute("SELECT COALESCE(MAX(num_id), 0) FROM items").fetchone()[0]

    def num_ids_of(self, ids: list[str]) -> dict[str, int]:
        """id → num_id (the item's current version) of those that exist."""
        found: dict[str, int] = {}
        for start in range(0, len(ids), SQL_PARAMS):
            part = ids[start : start + SQL_PARAMS]
            marks = ",".join("?" * len(part))
            found.update(
                self.db.execute(f"SELECT id, num_id FROM items WHERE id IN ({marks})", part)
            )
        return found

    def ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM items")}

    def num_ids(self) -> set[int]:
        return {r[0] for r in self.db.execute("SELECT num_id FROM items")}

    def last_seq(self) -> int:
        """The newest change: the log's last entry, or the snapshot's when the log is trimmed."""
        row = self.db.execute("SELECT MAX(seq) FROM log").fetchone()
        stored = self.db.execute("SELECT value FROM meta WHERE key='snapshot_seq'").fetchone()
        return max(row[0] or 0, int(stored[0]) if stored else 0)

    def changes_after(self, seq: int) -> list[tuple[str, int]]:
        return self.db.execute(
            "SELECT op, num_id FROM log WHERE seq > ? ORDER BY seq", (seq,)
        ).fetchall()

    def vector(self, num_id: int) -> np.ndarray | None:
        row = self.db.execute("SELECT data FROM vectors WHERE num_id = ?", (num_id,)).fetchone()
        return None if row is None else self.decode(row[0])

    def iter_vectors(self, chunk: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(num_ids [n], vectors [n, L, D])`` chunks of every stored item."""
        cur = self.db.execute("SELECT num_id, data FROM vectors ORDER BY num_id")
        while rows := cur.fetchmany(chunk):
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            yield ids, np.stack([self.decode(r[1]) for r in rows])

    def sample_vectors(self, n: int) -> np.ndarray:
        """``[n', L, D]``: up to ``n`` random stored items (FAISS training data)."""
        rows = self.db.execute(
            "SELECT data FROM vectors ORDER BY RANDOM() LIMIT ?", (n,)
        ).fetchall()
        return np.stack([self.decode(r[0]) for r in rows])

    def lookup(self, num_ids: list[int]) -> dict[int, tuple[str, str | None]]:
        """num_id → (id, metadata text) for those that exist."""
        found: dict[int, tuple[str, str | None]] = {}
        for start in range(0, len(num_ids), SQL_PARAMS):
            part = num_ids[start : start + SQL_PARAMS]
            marks = ",".join("?" * len(part))
            for num_id, item_id, meta in self.db.execute(
                f"SELECT num_id, id, metadata FROM items WHERE num_id IN ({marks})", part
            ):
                found[num_id] = (item_id, meta)
        return found

    # ---- lifecycle -----------------------------------------------------------------------------
    def copy_to(self, path: Path) -> None:
        """Copy the whole database (SQLite's online backup) to ``path`` — also when the file we
        have open was deleted: the open connection still reads it."""
        target = sqlite3.connect(path)
        try:
            self.db.backup(target)
        finally:
            target.close()

    def reopen(self) -> None:
        self.db.close()
        self.db = connect(self.path)

    def close(self) -> None:
        self.db.close()
