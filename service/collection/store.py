"""The durable truth of a bundle's items: SQLite holds ids, metadata, each item's kept input (a
canonical PNG a later bundle re-embeds from, when kept) and a change log that the FAISS
snapshots are tagged against; :mod:`.vector_file` holds each item's one embedding (in the
gallery depth's space: queries of every depth are bridged into it), written and made durable
before the transaction that makes it reachable commits.

WAL journal, ``synchronous=FULL``; every mutation is one ``BEGIN IMMEDIATE`` transaction,
committed before a request is acknowledged. Numeric ids (FAISS's ids) are never reused, so a
snapshot can never hold a stale meaning for one.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.collection.vector_file import VECTORS, VectorFile

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    num_id INTEGER NOT NULL UNIQUE,
    metadata TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS inputs (num_id INTEGER PRIMARY KEY, png BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, num_id INTEGER NOT NULL
);
"""
DATABASE = "items.sqlite"
SCHEMA_VERSION = 3  # a snapshot's manifest names it; restore takes only this one
# 3: vectors in vectors.f16 beside the database; 2: one float32 row per item in SQLite;
# 1: one per exit depth
SQL_PARAMS = 900  # SQLite's bound-parameter limit is 999 on older builds


def _objects(db: sqlite3.Connection) -> set[tuple[str, str, str, str | None]]:
    rows = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    return {(t, n, tbl, None if sql is None else " ".join(sql.split())) for t, n, tbl, sql in rows}


def _expected_objects() -> set[tuple[str, str, str, str | None]]:
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(SCHEMA)
        return _objects(db)
    finally:
        db.close()


def foreign_database_problem(db: sqlite3.Connection, bundle_id: str) -> str | None:
    """Why a database from outside (a snapshot being restored) is not one of ours for
    ``bundle_id``, or None: exactly our tables and indexes (no triggers, no views), this bundle's
    owner record, and rows the server can read (JSON metadata, numbers below the next one to
    give). Its vectors file is checked against it by :func:`vectors_file_problem`."""
    found, expected = _objects(db), _expected_objects()
    if found != expected:
        extra = sorted(f"{t} {n}" for t, n, _, _ in found - expected)
        missing = sorted(f"{t} {n}" for t, n, _, _ in expected - found)
        what = "; ".join(p for p in (f"unexpected: {', '.join(extra)[:200]}" if extra else "",
                                      f"missing or altered: {', '.join(missing)[:200]}"
                                      if missing else "") if p)  # fmt: skip
        return f"its schema is not ours ({what})"
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("bundle_id") != bundle_id:
        return "its owner record names another bundle"
    try:
        int(meta["dim"]), int(meta["gallery_depth"])
    except (KeyError, ValueError, TypeError):
        return "its owner record has no model shape"
    checks = {
        "items without a positive number": "SELECT COUNT(*) FROM items WHERE typeof(num_id) != "
        "'integer' OR num_id < 1",
        "metadata that is not JSON": "SELECT COUNT(*) FROM items WHERE metadata IS NOT NULL "
        "AND (typeof(metadata) != 'text' OR NOT json_valid(metadata))",
        "ids that are not text": "SELECT COUNT(*) FROM items WHERE typeof(id) != 'text'",
        "log entries of unknown kind": "SELECT COUNT(*) FROM log WHERE op NOT IN ('add', 'del')",
        "items without a time": "SELECT COUNT(*) FROM items WHERE typeof(created_at) "
        "NOT IN ('real', 'integer')",
        "numbers past the next one to give": "SELECT COUNT(*) FROM items WHERE num_id >= "
        "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'next_num_id'), 1)",
    }
    for key, what in (("next_num_id", "next item number"), ("snapshot_seq", "snapshot mark")):
        value = meta.get(key)
        if value is not None and not _counter(value):
            return f"its owner record's {what} is not a number below 2^63"
    for what, sql in checks.items():
        if n := db.execute(sql).fetchone()[0]:
            return f"it holds {n} {what}"
    return None


def _counter(value: object) -> bool:
    """A stored counter: ASCII decimal digits that SQLite's 64-bit integers hold."""
    return (isinstance(value, str) and re.fullmatch(r"[0-9]{1,19}", value) is not None
            and int(value) < 2**63)  # fmt: skip


def vectors_file_problem(db: sqlite3.Connection, size: int) -> str | None:
    """Why a vectors file of ``size`` bytes cannot hold the vectors of ``db``'s items (checked
    by :func:`foreign_database_problem` first), or None."""
    row_bytes = 2 * int(dict(db.execute("SELECT key, value FROM meta").fetchall())["dim"])
    newest = db.execute("SELECT COALESCE(MAX(num_id), 0) FROM items").fetchone()[0]
    if size % row_bytes:
        return f"its vectors file is {size} bytes, not whole rows of {row_bytes}"
    if size < newest * row_bytes:
        return f"its vectors file holds {size // row_bytes} rows; its items need {newest}"
    return None


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
    """Not thread-safe on its own: :class:`~service.collection.ItemIndex` serialises calls."""

    def __init__(self, folder: Path, owner: dict[str, str], dim: int) -> None:
        self.folder, self.path = folder, folder / DATABASE
        self.dim = dim
        self.db = connect(self.path)
        try:
            self.db.executescript(SCHEMA)
            self._check_owner(owner)
            self.vectors = VectorFile(folder, dim)
            newest = self.db.execute("SELECT COALESCE(MAX(num_id), 0) FROM items").fetchone()[0]
            if newest > self.vectors.capacity:
                self.vectors.close()
                raise IndexMismatch(f"this index folder's {VECTORS} holds "
                                    f"{self.vectors.capacity} rows; its items need {newest} "
                                    "(the file was cut short or replaced)")  # fmt: skip
        except BaseException:
            self.db.close()
            raise

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
        stale = self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'vectors'").fetchone()
        if stale or any(rows.get(k) != expected[k] for k in ("dim", "gallery_depth")):
            raise IndexMismatch(
                "this index folder holds another model shape, or items stored by an older "
                "server (vectors inside its database): move it aside, then re-embed its kept "
                "inputs into this bundle (sdssl-reindex BUNDLE MOVED_FOLDER) or "
                "bulk-import their vectors"
            )

    # ---- writes --------------------------------------------------------------------------------
    def upsert(
        self,
        ids: list[str],
        metadata: list[str],
        vectors: np.ndarray,
        inputs: list[bytes | None] | None = None,
    ) -> Change:
        """Insert or replace items (distinct ids) in one transaction; ``metadata`` is canonical
        JSON text, ``inputs`` the kept PNGs (None: none kept). The vectors are written to the
        vectors file and made durable first: a crash before the commit leaves rows no item
        number reaches (the next write overwrites them)."""
        if len(set(ids)) != len(ids):
            raise ValueError("ids repeat within one upsert")
        now = time.time()
        inputs = inputs if inputs is not None else [None] * len(ids)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT value FROM meta WHERE key='next_num_id'").fetchone()
            first = int(row[0]) if row else 1
            old = self._num_ids_of(ids)
            self.vectors.write(first, vectors)
            self.vectors.sync()
            removed = [old[i] for i in ids if i in old]
            for num_id in removed:
                self._delete_rows(num_id)
            added = list(range(first, first + len(ids)))
            self.db.executemany(
                "INSERT INTO items VALUES (?, ?, ?, ?)",
                zip(ids, added, metadata, [now] * len(ids), strict=True),
            )
            self.db.executemany(
                "INSERT INTO inputs VALUES (?, ?)",
                [(n, png) for n, png in zip(added, inputs, strict=True) if png is not None],
            )
            self.db.executemany("INSERT INTO log (op, num_id) VALUES ('add', ?)",
                                [(n,) for n in added])  # fmt: skip
            self.db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('next_num_id', ?)", (str(first + len(ids)),)
            )
        return Change(removed, added, [i in old for i in ids])

    def _num_ids_of(self, ids: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for start in range(0, len(ids), SQL_PARAMS):
            part = ids[start : start + SQL_PARAMS]
            marks = ",".join("?" * len(part))
            found.update(
                self.db.execute(f"SELECT id, num_id FROM items WHERE id IN ({marks})", part)
            )
        return found

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
        self.db.execute("DELETE FROM inputs WHERE num_id = ?", (num_id,))
        self.db.execute("INSERT INTO log (op, num_id) VALUES ('del', ?)", (num_id,))

    def mark_snapshot(self, seq: int) -> None:
        """A snapshot holds every change up to ``seq``: record it and trim the log."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('snapshot_seq', ?)", (str(seq),))
            self.db.execute("DELETE FROM log WHERE seq <= ?", (seq,))

    # ---- reads ---------------------------------------------------------------------------------
    def get(self, item_id: str) -> tuple[str, str | None, float] | None:
        return self.db.execute(
            "SELECT id, metadata, created_at FROM items WHERE id = ?", (item_id,)
        ).fetchone()

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def vector_of(self, item_id: str) -> np.ndarray | None:
        """``[D]``: an item's stored embedding."""
        row = self.db.execute("SELECT num_id FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else self.vectors.read(np.array([row[0]]))[0]

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
        return self._num_ids_of(ids)

    def ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM items")}

    def num_ids(self) -> np.ndarray:
        """Every item's number, ascending."""
        cur = self.db.execute("SELECT num_id FROM items ORDER BY num_id")
        chunks = []
        while rows := cur.fetchmany(65536):
            chunks.append(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)))
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)

    def last_seq(self) -> int:
        """The newest change: the log's last entry, or the snapshot's when the log is trimmed."""
        row = self.db.execute("SELECT MAX(seq) FROM log").fetchone()
        stored = self.db.execute("SELECT value FROM meta WHERE key='snapshot_seq'").fetchone()
        return max(row[0] or 0, int(stored[0]) if stored else 0)

    def changes_after(self, seq: int) -> list[tuple[str, int]]:
        return self.db.execute(
            "SELECT op, num_id FROM log WHERE seq > ? ORDER BY seq", (seq,)
        ).fetchall()

    def vectors_of(self, num_ids: np.ndarray) -> np.ndarray:
        """``[n, D]`` float32: the stored vectors of these item numbers."""
        return self.vectors.read(num_ids)

    def iter_vectors(self, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(num_ids [n], vectors [n, D])`` chunks of every stored item, in number order."""
        cur = self.db.execute("SELECT num_id FROM items ORDER BY num_id")
        while rows := cur.fetchmany(chunk):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            yield ids, self.vectors.read(ids)

    def sample_vectors(self, n: int, seed: int = 0) -> np.ndarray:
        """``[n', D]``: up to ``n`` stored rows drawn at random (FAISS training data; a deleted
        item's row is as good a sample of the data as a live one)."""
        last = min(self.last_num_id_given(), self.vectors.capacity)  # a restore may cut the tail
        if last == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        rng = np.random.default_rng(seed)
        picks = np.sort(rng.choice(last, size=min(n, last), replace=False)) + 1
        return self.vectors.read(picks)

    def last_num_id_given(self) -> int:
        """The newest item number ever given (rows beyond it are not vectors)."""
        row = self.db.execute("SELECT value FROM meta WHERE key='next_num_id'").fetchone()
        return int(row[0]) - 1 if row else 0

    # ---- lifecycle -----------------------------------------------------------------------------
    def copy_to(self, path: Path, vectors: Path) -> None:
        """Copy the whole database (SQLite's online backup) to ``path`` and the vectors file to
        ``vectors`` — also when the files we have open were deleted: open handles still read
        them."""
        target = sqlite3.connect(path)
        try:
            self.db.backup(target)
        finally:
            target.close()
        self.vectors.copy_to(vectors)

    def reopen(self) -> None:
        self.db.close()
        self.db = connect(self.path)
        self.vectors.close()
        self.vectors = VectorFile(self.folder, self.dim)

    def close(self) -> None:
        self.db.close()
        self.vectors.close()


class Reader:
    """Read-only connections to a store's database, one per thread, for the reads that scan
    (filters, counts, listing) or fetch many rows (search hits): WAL gives each statement a
    consistent view beside the writer, so they never hold the index's lock. A scan under
    :meth:`deadline` is interrupted when it runs past it (``sqlite3.OperationalError``)."""

    def __init__(self, path: Path) -> None:
        self.uri = f"{path.resolve().as_uri()}?mode=ro"
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self._generation = 0
        self._closed = False
        self._active = 0  # statements running now: close() waits for them
        self._idle = threading.Condition(self._guard)

    @contextlib.contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, counted as in use: closing a connection while another
        thread runs a statement on it crashes the process."""
        with self._guard:
            if self._closed:
                raise sqlite3.ProgrammingError("the index is closed")
            self._active += 1
        try:
            yield self._db()
        finally:
            with self._guard:
                self._active -= 1
                self._idle.notify_all()

    def _db(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "generation", None) != self._generation:
            with self._guard:
                if self._closed:
                    raise sqlite3.ProgrammingError("the index is closed")
                db = sqlite3.connect(self.uri, uri=True, check_same_thread=False)
                db.set_progress_handler(self._past_deadline, 1000)
                self._opened.append(db)
            local.db, local.generation = db, self._generation
        return local.db

    def _past_deadline(self) -> int:
        if self._closed:  # closing: every running statement stops now
            return 1
        until = getattr(self._local, "until", None)
        return int(until is not None and time.monotonic() > until)

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Statements of this thread inside the block are interrupted after ``seconds``."""
        self._local.until = time.monotonic() + seconds
        try:
            yield
        finally:
            self._local.until = None

    def reopen(self) -> None:
        """The database file was replaced (a restore): every thread opens it again (the old
        connections close with the reader)."""
        self._generation += 1

    def count(self, where: str = "1", params: tuple = ()) -> int:
        """Items matching a compiled filter (:mod:`.filters`); all by default."""
        sql = f"SELECT COUNT(*) FROM items WHERE {where}"
        with self._using() as db:
            return db.execute(sql, params).fetchone()[0]

    def page(
        self, after: str | None, limit: int, where: str = "1", params: tuple = ()
    ) -> list[tuple[str, int, float]]:
        """``(id, metadata bytes, created_at)`` of up to ``limit`` matching items with ids
        after ``after``, in id order: a scroll that neither skips nor repeats an item, whatever
        is written meanwhile (a replaced item keeps its id, and its place)."""
        sql = (f"SELECT id, coalesce(length(CAST(metadata AS BLOB)), 0), created_at FROM items "
               f"WHERE id > ? AND ({where}) ORDER BY id LIMIT ?")  # fmt: skip
        with self._using() as db:
            return db.execute(sql, (after or "", *params, limit)).fetchall()

    def matching(self, where: str, params: tuple) -> np.ndarray:
        """num_ids of the items a compiled filter selects."""
        with self._using() as db:
            rows = db.execute(f"SELECT num_id FROM items WHERE {where}", params).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def sizes(self, num_ids: list[int]) -> dict[int, tuple[str, int]]:
        """num_id → (id, metadata bytes) for those that exist: what a reply will weigh,
        before any metadata is read."""
        sql = ("SELECT num_id, id, coalesce(length(CAST(metadata AS BLOB)), 0) FROM items "
               "WHERE num_id IN ({})")  # fmt: skip
        return {n: (i, b) for n, i, b in self._chunked(sql, num_ids)}

    def metadata(self, num_ids: list[int]) -> dict[int, str | None]:
        """num_id → metadata text for those that exist."""
        sql = "SELECT num_id, metadata FROM items WHERE num_id IN ({})"
        return dict(self._chunked(sql, num_ids))

    def metadata_of(self, ids: list[str]) -> dict[str, str | None]:
        """id → metadata text for those that exist."""
        sql = "SELECT id, metadata FROM items WHERE id IN ({})"
        return dict(self._chunked(sql, ids))

    def _chunked(self, sql: str, keys: list) -> Iterator[tuple]:
        with self._using() as db:
            for start in range(0, len(keys), SQL_PARAMS):
                part = keys[start : start + SQL_PARAMS]
                yield from db.execute(sql.format(",".join("?" * len(part))), part).fetchall()

    def close(self, wait_s: float = 30.0) -> None:
        """Stop running statements (the progress handler interrupts them), wait for them to
        leave, then close every connection. Past ``wait_s`` the connections are left open."""
        with self._guard:
            self._closed = True
            if not self._idle.wait_for(lambda: self._active == 0, timeout=wait_s):
                log.warning("%d reads still running on a closed index", self._active)
                return
            for db in self._opened:
                db.close()
            self._opened.clear()
        self._generation += 1
