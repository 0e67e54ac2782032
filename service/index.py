"""Items and nearest-neighbour indexes for one bundle.

SQLite (WAL, synchronous=FULL) is the durable truth: item ids, metadata, the item's embeddings
at every exit depth, and a change log — all written in one transaction before a request is
acknowledged. The FAISS indexes (one per exit depth, inner product on L2-normalised vectors =
cosine) are derived: persisted as snapshots tagged with the last change-log sequence they
contain, and on start-up loaded and brought up to date by replaying the log (or rebuilt from
SQLite when no usable snapshot exists). So after a kill -9 at any moment, index and metadata
agree and every acknowledged item is present.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    num_id INTEGER NOT NULL UNIQUE,
    metadata TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS vectors (num_id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, num_id INTEGER NOT NULL
);
"""
SNAPSHOT = "snapshot.json"


class IndexMismatch(RuntimeError):
    """The index folder belongs to a different bundle (or model shape)."""


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: Any


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ItemIndex:
    """Thread-safe; every method is blocking (call from a worker thread)."""

    def __init__(
        self,
        root: Path,
        bundle_id: str,
        exit_depths: list[int],
        dim: int,
        factory: str = "Flat",
        snapshot_every: int = 1000,
        use_gpu: bool = False,
    ) -> None:
        self.root, self.bundle_id = root, bundle_id
        self.exit_depths, self.dim, self.factory = list(exit_depths), dim, factory
        self.depth = max(exit_depths)  # rows stored per item: every depth 1..L
        self.snapshot_every = snapshot_every
        self._lock = threading.RLock()
        self._changes = 0
        self._stale = 0  # vectors left in indexes that cannot remove (e.g. HNSW)
        root.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            root / "items.sqlite", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._check_owner()
        # Factories that need training (IVF...) serve from an exact index until there are
        # enough items to train them; the switch happens at a snapshot.
        self._min_train = self._training_points(factory)
        count = self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        self._active = factory if count >= self._min_train else "Flat"
        self._gpu = self._gpu_resources() if use_gpu else None
        self._gpu_indexes: dict[int, Any] = {}
        self._indexes: dict[int, Any] = {}
        started = time.perf_counter()
        how = self._load()
        log.info(
            "index %s: %d items, %s in %.1f s",
            root,
            self.count(),
            how,
            time.perf_counter() - started,
        )

    # ---- ownership -------------------------------------------------------------------------
    def _check_owner(self) -> None:
        rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        expected = {"bundle_id": self.bundle_id, "dim": str(self.dim), "depth": str(self.depth)}
        if not rows:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT INTO meta VALUES (?, ?)", expected.items())
            return
        if rows.get("bundle_id") != self.bundle_id:
            raise IndexMismatch(
                f"index at {self.root} belongs to bundle {rows.get('bundle_id', '?')[:12]}, "
                f"not {self.bundle_id[:12]}: re-index it for this bundle"
            )
        if rows.get("dim") != str(self.dim) or rows.get("depth") != str(self.depth):
            raise IndexMismatch(f"index at {self.root} has another model shape")

    # ---- FAISS -------------------------------------------------------------------------------
    @staticmethod
    def _gpu_resources() -> Any:
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            return None
        return faiss.StandardGpuResources()

    def _training_points(self, factory: str) -> int:
        """Vectors a factory needs before it can be trained (0: no training needed)."""
        probe = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
        if probe.is_trained:
            return 0
        try:
            return 39 * int(faiss.extract_index_ivf(probe).nlist)  # FAISS's own minimum
        except RuntimeError:
            return 10_000

    def _new_index(self) -> Any:
        return faiss.index_factory(self.dim, f"IDMap2,{self._active}", faiss.METRIC_INNER_PRODUCT)

    def _snapshot_file(self, d: int, seq: int) -> Path:
        return self.root / f"index_d{d:02d}.s{seq}.faiss"

    def _last_seq(self) -> int:
        row = self._db.execute("SELECT MAX(seq) FROM log").fetchone()
        stored = self._db.execute("SELECT value FROM meta WHERE key='snapshot_seq'").fetchone()
        return max(row[0] or 0, int(stored[0]) if stored else 0)

    def _load(self) -> str:
        snap = self._read_snapshot()
        if snap is not None:
            seq, indexes = snap
            self._indexes = indexes
            replayed = self._replay(seq)
            return f"snapshot at change {seq} + {replayed} replayed"
        self._rebuild()
        return "rebuilt from SQLite"

    def _read_snapshot(self) -> tuple[int, dict[int, Any]] | None:
        path = self.root / SNAPSHOT
        if not path.is_file():
            return None
        try:
            info = json.loads(path.read_text())
            seq = int(info["seq"])
            if info.get("factory") != self._active or info.get("bundle_id") != self.bundle_id:
                return None
            indexes = {
                d: faiss.read_index(str(self._snapshot_file(d, seq))) for d in self.exit_depths
            }
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("ignoring unusable snapshot in %s: %s", self.root, exc)
            return None
        return seq, indexes

    def _replay(self, after: int) -> int:
        rows = self._db.execute(
            "SELECT op, num_id FROM log WHERE seq > ? ORDER BY seq", (after,)
        ).fetchall()
        for op, num_id in rows:
            if op == "del":
                self._remove_from_indexes(np.array([num_id], dtype=np.int64))
            else:
                vec = self._db.execute(
                    "SELECT data FROM vectors WHERE num_id = ?", (num_id,)
                ).fetchone()
                if vec is not None:  # added, then removed later in the log: skip
                    self._add_to_indexes(
                        np.array([num_id], dtype=np.int64), self._decode(vec[0])[None]
                    )
        return len(rows)

    def _rebuild(self) -> None:
        self._indexes = {d: self._new_index() for d in self.exit_depths}
        self._stale = 0
        if not next(iter(self._indexes.values())).is_trained:
            self._train()
        cur = self._db.execute("SELECT num_id, data FROM vectors ORDER BY num_id")
        while True:
            chunk = cur.fetchmany(4096)
            if not chunk:
                break
            ids = np.array([r[0] for r in chunk], dtype=np.int64)
            vecs = np.stack([self._decode(r[1]) for r in chunk])
            self._add_to_indexes(ids, vecs)
        self._gpu_indexes.clear()

    def _train(self, max_points: int = 100_000) -> None:
        """Train every depth's index on a sample of the stored vectors."""
        rows = self._db.execute(
            "SELECT data FROM vectors ORDER BY RANDOM() LIMIT ?", (max_points,)
        ).fetchall()
        sample = np.stack([self._decode(r[0]) for r in rows])  # [N, L, D]
        for d, index in self._indexes.items():
            index.train(np.ascontiguousarray(sample[:, d - 1, :]))

    def _decode(self, blob: bytes) -> np.ndarray:
        return np.frombuffer(blob, dtype=np.float32).reshape(self.depth, self.dim)

    def _add_to_indexes(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """``vecs [N, L, D]``: row d-1 goes to depth d's index."""
        for d, index in self._indexes.items():
            x = np.ascontiguousarray(vecs[:, d - 1, :], dtype=np.float32)
            index.add_with_ids(x, ids)
        self._gpu_indexes.clear()

    def _remove_from_indexes(self, ids: np.ndarray) -> None:
        for index in self._indexes.values():
            try:
                index.remove_ids(ids)
            except RuntimeError:  # e.g. HNSW: left in place, filtered out at search time
                self._stale += len(ids)
        self._gpu_indexes.clear()

    def _search_index(self, d: int) -> Any:
        if self._gpu is None:
            return self._indexes[d]
        if d not in self._gpu_indexes:  # the CPU index stays the persisted truth
            self._gpu_indexes[d] = faiss.index_cpu_to_gpu(self._gpu, 0, self._indexes[d])
        return self._gpu_indexes[d]

    # ---- public API ----------------------------------------------------------------------------
    def upsert(self, ids: list[str], metadata: list[Any], vectors: np.ndarray) -> list[bool]:
        """Add or replace items (``vectors [N, L, D]``); durable when this returns.
        Returns, per item, whether it replaced an existing one."""
        if vectors.shape != (len(ids), self.depth, self.dim):
            raise ValueError(f"vectors shape {vectors.shape} != {(len(ids), self.depth, self.dim)}")
        now = time.time()
        with self._lock:
            replaced, removed, added = [], [], []
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                # Numeric ids are never reused, so a snapshot can never hold a stale meaning.
                row = self._db.execute("SELECT value FROM meta WHERE key='next_num_id'").fetchone()
                next_id = int(row[0]) if row else 1
                for item_id, meta, vec in zip(ids, metadata, vectors, strict=True):
                    old = self._db.execute(
                        "SELECT num_id FROM items WHERE id = ?", (item_id,)
                    ).fetchone()
                    if old is not None:
                        self._db.execute("DELETE FROM items WHERE num_id = ?", (old[0],))
                        self._db.execute("DELETE FROM vectors WHERE num_id = ?", (old[0],))
                        self._db.execute(
                            "INSERT INTO log (op, num_id) VALUES ('del', ?)", (old[0],)
                        )
                        removed.append(old[0])
                    self._db.execute(
                        "INSERT INTO items VALUES (?, ?, ?, ?)",
                        (item_id, next_id, json.dumps(meta), now),
                    )
                    self._db.execute(
                        "INSERT INTO vectors VALUES (?, ?)",
                        (next_id, np.ascontiguousarray(vec, dtype=np.float32).tobytes()),
                    )
                    self._db.execute("INSERT INTO log (op, num_id) VALUES ('add', ?)", (next_id,))
                    added.append(next_id)
                    replaced.append(old is not None)
                    next_id += 1
                self._db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('next_num_id', ?)", (str(next_id),)
                )
            # Committed: now the derived indexes (a crash here is repaired by the log replay).
            if removed:
                self._remove_from_indexes(np.array(removed, dtype=np.int64))
            self._add_to_indexes(np.array(added, dtype=np.int64), vectors)
            self._after_change(len(ids) + len(removed))
        return replaced

    def delete(self, item_id: str) -> bool:
        """Remove an item; False if it does not exist."""
        with self._lock:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute(
                    "SELECT num_id FROM items WHERE id = ?", (item_id,)
                ).fetchone()
                if row is None:
                    return False
                self._db.execute("DELETE FROM items WHERE num_id = ?", (row[0],))
                self._db.execute("DELETE FROM vectors WHERE num_id = ?", (row[0],))
                self._db.execute("INSERT INTO log (op, num_id) VALUES ('del', ?)", (row[0],))
            self._remove_from_indexes(np.array([row[0]], dtype=np.int64))
            self._after_change(1)
        return True

    def get(self, item_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, metadata, created_at FROM items WHERE id = ?", (item_id,)
            ).fetchone()
        if row is None:
            return None
        return {"id": row[0], "metadata": json.loads(row[1]), "created_at": row[2]}

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def index_sizes(self) -> dict[int, int]:
        """Vectors per exit depth's FAISS index (equals count() unless some are stale)."""
        with self._lock:
            return {d: int(index.ntotal) for d, index in self._indexes.items()}

    def search(self, exit_depth: int, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-k items by cosine for each query row at one exit depth."""
        with self._lock:
            index = self._search_index(exit_depth)
            if index.ntotal == 0:
                return [[] for _ in range(len(queries))]
            fetch = min(index.ntotal, k + self._stale)
            inner = faiss.downcast_index(self._indexes[exit_depth].index)
            if hasattr(inner, "hnsw"):  # HNSW returns fewer than k results when efSearch < k
                inner.hnsw.efSearch = max(inner.hnsw.efSearch, fetch)
            scores, nums = index.search(np.ascontiguousarray(queries, dtype=np.float32), fetch)
            wanted = sorted({int(n) for n in nums.ravel() if n >= 0})
            found: dict[int, tuple[str, str]] = {}
            for start in range(0, len(wanted), 900):  # SQLite's bound-parameter limit
                part = wanted[start : start + 900]
                marks = ",".join("?" * len(part))
                for num_id, item_id, meta in self._db.execute(
                    f"SELECT num_id, id, metadata FROM items WHERE num_id IN ({marks})", part
                ):
                    found[num_id] = (item_id, meta)
        results = []
        for row_scores, row_nums in zip(scores, nums, strict=True):
            hits = []
            for s, n in zip(row_scores, row_nums, strict=True):
                if n >= 0 and int(n) in found:
                    item_id, meta = found[int(n)]
                    hits.append(Hit(item_id, float(s), json.loads(meta)))
                if len(hits) == k:
                    break
            results.append(hits)
        return results

    def consistency(self) -> dict[str, Any]:
        """Ids in SQLite vs ids in each FAISS index (for tests and the crash suite)."""
        with self._lock:
            ids = {r[0] for r in self._db.execute("SELECT num_id FROM items")}
            per_depth = {}
            for d, index in self._indexes.items():
                inner = faiss.downcast_index(index)
                stored = set(faiss.vector_to_array(inner.id_map).tolist())
                per_depth[d] = stored == ids or (self._stale > 0 and ids <= stored)
        return {"items": len(ids), "consistent": all(per_depth.values()), "per_depth": per_depth}

    # ---- persistence -------------------------------------------------------------------------
    def _after_change(self, n: int) -> None:
        self._changes += n
        if self._changes >= self.snapshot_every:
            self.snapshot()

    def snapshot(self) -> None:
        """Persist every index atomically, tagged with the change-log position it contains."""
        with self._lock:
            if self._active != self.factory and self.count() >= self._min_train:
                log.info(
                    "index %s: %d items, switching to %s", self.root, self.count(), self.factory
                )
                self._active = self.factory
                self._rebuild()
            elif self._stale:
                self._rebuild()
            seq = self._last_seq()
            for d, index in self._indexes.items():
                data = faiss.serialize_index(index).tobytes()
                _fsync_write(self._snapshot_file(d, seq), data)
            info = {"seq": seq, "bundle_id": self.bundle_id, "factory": self._active}
            _fsync_write(self.root / SNAPSHOT, json.dumps(info).encode())
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('snapshot_seq', ?)", (str(seq),)
                )
                self._db.execute("DELETE FROM log WHERE seq <= ?", (seq,))
            for old in self.root.glob("index_d*.s*.faiss"):
                if not old.name.endswith(f".s{seq}.faiss"):
                    old.unlink(missing_ok=True)
            self._changes = 0

    def close(self) -> None:
        with self._lock:
            if self._changes:
                self.snapshot()
            self._db.close()
