"""``ItemIndex``: a bundle's items and their nearest-neighbour index, the one facade the service,
``sdssl-reindex`` and the benchmarks write through. One gallery: each item is embedded once,
at the bundle's gallery depth, and a query of any exit depth — bridged into that space by the
bundle's graphs — searches it.

SQLite and the vectors file (:mod:`.store`) are the truth; FAISS (:mod:`.vectors`) is derived,
loaded from its last snapshot and brought up to date by replaying the change log, then checked
against SQLite and rebuilt from it if they disagree. An approximate index's candidates are
re-ranked by their exact cosine from the stored vectors. One process writes a folder at a time
(:mod:`.lock`). A write is acknowledged only once it is durable (:mod:`.storage`); a folder
deleted while in use is restored from the still-open files, so nothing acknowledged is lost.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import Manifest, gallery_depth
from service.collection.filters import Filter, compile_filter
from service.collection.lock import WriterLock, WriterLockHeld
from service.collection.storage import Storage, StorageError, from_os_error, fsync_rename
from service.collection.store import DATABASE, ItemStore, Reader
from service.collection.vector_file import VECTORS
from service.collection.vectors import GalleryVectors
from service.errors import APIError
from service.jsonio import dumps_canonical, loads_stored
from service.settings import Settings

log = logging.getLogger(__name__)
BUILD_RETRY_S = 600  # after a failed background build of a new index type
FULL_CHECK = 1_000_000  # up to this many items the id sets are compared at load, else counts
HIT_BYTES = 64  # a hit's JSON besides its id and metadata: keys, score, punctuation


def open_index(
    settings: Settings,
    manifest: Manifest,
    bundle_id: str,
    use_gpu: bool = False,
    background: bool = True,
) -> ItemIndex:
    """The index of a bundle in ``settings.data_dir``, as the server and every tool open it
    (offline tools build a new index type in place: ``background=False``)."""
    return ItemIndex(
        settings.data_dir / bundle_id,
        bundle_id,
        gallery_depth(manifest),  # a format-1 bundle (no bridges): BundleIntegrityError
        manifest.model.dim,
        settings.index_factory,
        settings.snapshot_every,
        use_gpu=use_gpu,
        min_free_bytes=settings.min_free_bytes,
        max_filter_work=settings.max_filter_work,
        filter_timeout_s=settings.filter_timeout_s,
        nprobe=settings.nprobe,
        rerank=settings.rerank,
        background=background,
    )


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata_json: str | None  # as stored (canonical JSON); None: none, or not asked for

    @property
    def metadata(self) -> Any:
        return loads_stored(self.metadata_json)


class ItemIndex:
    """Thread-safe; every method is blocking (call from a worker thread)."""

    def __init__(
        self,
        root: Path,
        bundle_id: str,
        gallery_depth: int,
        dim: int,
        factory: str = "Flat",
        snapshot_every: int = 1000,
        use_gpu: bool = False,
        min_free_bytes: int = 0,
        max_filter_work: int = 10**12,
        filter_timeout_s: float = 3600.0,
        nprobe: int = 16,
        rerank: int = 16,
        background: bool = True,
    ) -> None:
        self.root, self.bundle_id = root, bundle_id
        self.max_filter_work, self.filter_timeout_s = max_filter_work, filter_timeout_s
        self.gallery_depth, self.dim = gallery_depth, dim
        self.snapshot_every, self.rerank = snapshot_every, rerank
        self.background = background  # train a new index type on a thread while reads go on
        self._building: threading.Thread | None = None
        self._retry_build_at = 0.0  # after a failed build, not before this (monotonic)
        self._closed = False
        self._vector_args = (root, dim, factory, use_gpu, nprobe)
        self._lock = threading.RLock()
        self._changes = 0
        root.mkdir(parents=True, exist_ok=True)
        self._writer = WriterLock(root).acquire()
        try:
            owner = {"bundle_id": bundle_id, "dim": str(dim), "gallery_depth": str(gallery_depth)}
            self.store = ItemStore(root, owner, dim)
            self.reader = Reader(self.store.path)
            self.storage = Storage(root, self.store.path, min_free_bytes,
                                   (self.store.vectors.path,))  # fmt: skip
            self.vectors = GalleryVectors(root, dim, factory, use_gpu, nprobe)
            self._items = self.store.count()  # counted once (a second at 10 M), then kept
            if self._items >= self.vectors.min_train:
                self.vectors.active = factory
            started = time.perf_counter()
            how = self.loaded = self._load()
        except BaseException:
            if hasattr(self, "store"):
                self.reader.close()
                self.store.close()
            self._writer.release()
            raise
        log.info("index %s: %d items, %s in %.1f s", root.name[:12], self.count(), how,
                 time.perf_counter() - started)  # fmt: skip

    @property
    def factory(self) -> str:
        return self.vectors.factory

    @property
    def device(self) -> str:
        """Where searches run (``gpu`` or ``cpu``)."""
        return self.vectors.device

    @property
    def active_factory(self) -> str:
        """The factory serving now (``Flat`` until a factory that needs training can train)."""
        return self.vectors.active

    # ---- loading -------------------------------------------------------------------------------
    def _load(self) -> str:
        seq = self.vectors.read_snapshot(self.bundle_id)
        if seq is None:
            self._rebuild()
            return "rebuilt from SQLite"
        replayed = self._replay(seq)
        problem = self._disagreement()
        if problem:
            log.warning("index %s: FAISS disagreed with SQLite (%s); rebuilt from SQLite, the "
                        "truth", self.root.name[:12], problem)  # fmt: skip
            self._rebuild()
            return f"rebuilt from SQLite ({problem})"
        return f"snapshot at change {seq} + {replayed} replayed"

    def _replay(self, after: int) -> int:
        """Apply the log's changes after ``after`` in order, a run of one kind at a time."""
        rows = self.store.changes_after(after)
        self._apply(self.vectors, rows)
        return len(rows)

    def _apply(self, vectors: GalleryVectors, rows: list[tuple[str, int]]) -> None:
        start = 0
        while start < len(rows):
            op, end = rows[start][0], start
            while end < len(rows) and rows[end][0] == op:
                end += 1
            ids = np.array([n for _, n in rows[start:end]], dtype=np.int64)
            if op == "del":
                vectors.remove(ids)
            else:  # a row stays in the vectors file after its item is deleted (a later "del")
                vectors.add(ids, self.store.vectors_of(ids))
            start = end

    def _rebuild(self) -> None:
        needs_sample = self.vectors.active != "Flat" and self.vectors.min_train > 0
        sample = (
            self.store.sample_vectors(max(100_000, self.vectors.min_train))
            if needs_sample
            else None
        )
        self.vectors.rebuild(sample, self.store.iter_vectors())

    def _disagreement(self) -> str | None:
        """Why FAISS and SQLite disagree, or None: the id sets (up to FULL_CHECK items; past
        it, the counts — comparing 10 M ids costs seconds and a gigabyte at every start)."""
        items = self._items
        if items > FULL_CHECK:
            held = self.vectors.size() - self.vectors.stale
            return None if held == items else f"{items} items, {held} vectors indexed"
        truth, ids = self.store.num_ids(), self.vectors.ids()
        missing = len(np.setdiff1d(truth, ids, assume_unique=True))
        extra = len(np.setdiff1d(ids, truth))
        if missing or extra > self.vectors.stale:
            return f"{missing} items missing, {extra} unknown"
        return None

    # ---- storage -------------------------------------------------------------------------------
    def _usable(self) -> None:
        """Raise StorageError unless a write can be made durable now (restoring a deleted
        folder first)."""
        problem = self.storage.problem()
        if problem is not None and self.storage.moved():
            self._restore()
            problem = self.storage.problem()
        if problem is not None:
            raise problem

    def _restore(self) -> None:
        """The folder or its files were deleted while open: recreate them from the open
        handles (which still read the deleted files) and re-take the writer lock."""
        db = self.root / DATABASE
        if (self.storage.unchanged(self.root) and self.storage.unchanged(db)
                and not (self.root / VECTORS).exists()):  # fmt: skip
            self._restore_vectors()
            return
        writer = WriterLock(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if db.exists():
                raise StorageError("the data folder's database was replaced while in use")
            writer.acquire()
            tmp, tmp_vectors = self.root / f".{DATABASE}.restore", self.root / f".{VECTORS}.restore"
            tmp.unlink(missing_ok=True)
            self.store.copy_to(tmp, tmp_vectors)
            fsync_rename(
                tmp_vectors, self.root / VECTORS
            )  # the rows first: the database names them
            fsync_rename(tmp, db)
        except WriterLockHeld as exc:
            raise StorageError(f"the data folder was removed and re-taken: {exc}") from exc
        except (OSError, sqlite3.Error) as exc:
            writer.release()
            raise from_os_error(exc, "the data folder was removed and cannot be restored") from exc
        self._writer.release()
        self._writer = writer
        self.store.reopen()
        self.reader.reopen()
        self.storage.reopened()
        log.warning("index %s: the data folder was removed while in use; restored %d items "
                    "from the open database", self.root.name[:12], self.store.count())  # fmt: skip
        self._safe_snapshot()

    def _restore_vectors(self) -> None:
        """Only the vectors file was deleted while open: copy it back from the open handle."""
        tmp = self.root / f".{VECTORS}.restore"
        try:
            self.store.vectors.copy_to(tmp)
            fsync_rename(tmp, self.root / VECTORS)
        except OSError as exc:
            raise from_os_error(exc, "the vectors file was removed and cannot be restored") from exc
        self.store.reopen()
        self.storage.reopened()
        log.warning("index %s: the vectors file was removed while in use; restored it from the "
                    "open file", self.root.name[:12])  # fmt: skip

    def health(self) -> str | None:
        """Why writes would fail now (missing, read-only or full storage), or None. Never waits
        for the index: while a write or search holds it, the storage is checked without it
        (a deleted folder is then restored by the next write)."""
        if not self._lock.acquire(blocking=False):
            problem = self.storage.problem()
            return None if problem is None else str(problem)
        try:
            self._usable()
        except StorageError as exc:
            return str(exc)
        finally:
            self._lock.release()
        return None

    def _write(self, what: str, fn: Any) -> Any:
        """Run one SQLite transaction; acknowledge it only if it landed in the live file."""
        self._usable()
        try:
            result = fn()
        except (sqlite3.Error, OSError) as exc:  # the database, or the vectors file
            raise from_os_error(exc, f"cannot {what}") from exc
        if self.storage.moved():  # committed into a file deleted meanwhile: copy it back
            self._restore()
        return result

    # ---- public API ----------------------------------------------------------------------------
    def upsert(
        self,
        ids: list[str],
        metadata: list[Any],
        vectors: np.ndarray,
        inputs: list[bytes | None] | None = None,
    ) -> list[bool]:
        """Add or replace items (``vectors [N, D]`` in the gallery's space, optionally each one's
        kept input PNG); durable when this returns. Returns, per item, whether it replaced an
        existing one."""
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"vectors shape {vectors.shape} != {(len(ids), self.dim)}")
        texts = [dumps_canonical(m) for m in metadata]
        vectors = vectors.astype(np.float16).astype(np.float32)  # as stored: FAISS agrees exactly
        with self._lock:
            change = self._write(
                "add items", lambda: self.store.upsert(ids, texts, vectors, inputs)
            )
            # Committed: now the derived indexes (a crash here is repaired by the log replay).
            self._items += len(change.added) - len(change.removed)
            if change.removed:
                self.vectors.remove(np.array(change.removed, dtype=np.int64))
            self.vectors.add(np.array(change.added, dtype=np.int64), vectors)
            self._after_change(len(ids) + len(change.removed))
        return change.replaced

    def delete(self, item_id: str) -> bool:
        """Remove an item; False if it does not exist."""
        with self._lock:
            num_id = self._write("delete an item", lambda: self.store.delete(item_id))
            if num_id is None:
                return False
            self._items -= 1
            self.vectors.remove(np.array([num_id], dtype=np.int64))
            self._after_change(1)
        return True

    def get(self, item_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self.store.get(item_id)
        if row is None:
            return None
        return {"id": row[0], "metadata": loads_stored(row[1]), "created_at": row[2]}

    def _reader(self) -> Reader:
        """The read-only connections — after restoring the folder if it was deleted while in
        use (a connection opened now would find no database file)."""
        if self.storage.moved():
            with self._lock, contextlib.suppress(StorageError):
                self._usable()
        return self.reader

    def size(self) -> int:
        """Items, as counted at load and kept up to date by every write (no SQL, no lock)."""
        return self._items

    @contextlib.contextmanager
    def _scanning(self, compiled: Filter) -> Iterator[Reader]:
        """The reader, with a filter's scan interrupted past ``filter_timeout_s`` (503)."""
        reader = self._reader()
        if not compiled.conditions:
            yield reader
            return
        try:
            with reader.deadline(self.filter_timeout_s):
                yield reader
        except sqlite3.OperationalError as exc:
            if "interrupt" not in str(exc):
                raise
            raise APIError(
                503,
                "filter_timeout",
                f"the filter's scan of {self.size()} items took longer than "
                f"{self.filter_timeout_s:g} s (SDSSL_FILTER_TIMEOUT_S): use fewer conditions",
                {"Retry-After": "5"},
            ) from None

    def compile(self, filter: Any) -> Filter:
        """A metadata filter (:mod:`.filters`) compiled, and refused (422) when a scan of every
        item would make more than ``max_filter_work`` condition checks — before it runs."""
        compiled = compile_filter(filter)
        items = self.size()
        if compiled.cost(items) > self.max_filter_work:
            raise APIError(
                422,
                "filter_too_costly",
                f"this filter checks {compiled.conditions} conditions on each of {items} items "
                f"({compiled.cost(items)} checks); the limit is {self.max_filter_work} "
                "(SDSSL_MAX_FILTER_WORK): use fewer conditions",
            )
        return compiled

    def count(self, filter: Any = None) -> int:
        """Items — the kept count, no scan (a COUNT(*) of 10 M rows takes about a second) — or
        those a metadata filter selects (a scan that holds no lock)."""
        compiled = self.compile(filter)
        if not compiled.conditions:
            return self.size()
        with self._scanning(compiled) as reader:
            return reader.count(compiled.where, compiled.params)

    def page(
        self,
        limit: int,
        after: str | None = None,
        filter: Any = None,
        max_bytes: int | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` items with ids after ``after``, in id order, fewer where their ids
        and metadata would pass ``max_bytes``; and the id the next page starts after (None at
        the end). Holds no lock: writes go on, and a replaced item keeps its place."""
        compiled = self.compile(filter)
        with self._scanning(compiled) as reader:
            rows = reader.page(after, limit + 1, compiled.where, compiled.params)
        more = len(rows) > limit and limit > 0
        rows = rows[:limit]
        if max_bytes is not None:
            weight, fit = 0, 0
            for item_id, meta_bytes, _ in rows:
                weight += len(item_id.encode()) + meta_bytes + HIT_BYTES
                if weight > max_bytes and fit:
                    break
                fit += 1
            more, rows = more or fit < len(rows), rows[:fit]
        texts = self._reader().metadata_of([r[0] for r in rows])
        items = [{"id": i, "metadata": loads_stored(texts[i]), "created_at": created}
                 for i, _, created in rows if i in texts]  # fmt: skip
        return items, (rows[-1][0] if more and rows else None)

    def with_inputs(
        self, after: int, limit: int, upto: int
    ) -> list[tuple[int, str, Any, bytes | None]]:
        """``(num_id, id, metadata, kept PNG or None)`` of up to ``limit`` items with ``after``
        < num_id <= ``upto``, in insertion order (what a rollout re-embeds)."""
        with self._lock:
            rows = self.store.with_inputs(after, limit, upto)
        return [(n, i, loads_stored(m), png) for n, i, m, png in rows]

    def input_of(self, item_id: str) -> bytes | None:
        """An item's kept input (PNG bytes), or None."""
        with self._lock:
            return self.store.input_of(item_id)

    def count_after(self, after: int, upto: int) -> int:
        """Items with ``after`` < num_id <= ``upto`` (what a rollout has left)."""
        with self._lock:
            return self.store.count_after(after, upto)

    def last_num_id(self) -> int:
        """The newest item's insertion number (0 when empty)."""
        with self._lock:
            return self.store.last_num_id()

    def versions(self, ids: list[str]) -> dict[str, int]:
        """id → the num_id of its current version, for those that exist (a replaced item gets
        a new num_id, so an unchanged num_id means an unchanged item)."""
        with self._lock:
            return self.store.num_ids_of(ids)

    def ids(self) -> set[str]:
        with self._lock:
            return self.store.ids()

    def vector(self, item_id: str) -> np.ndarray | None:
        """An item's stored embedding (gallery space, float16 precision), or None."""
        with self._lock:
            return self.store.vector_of(item_id)

    def indexed(self) -> int:
        """Vectors in the FAISS index (equals size() unless some are stale)."""
        with self._lock:
            return self.vectors.size()

    def search(
        self,
        queries: np.ndarray,
        k: int,
        filter: Any = None,
        metadata: bool = True,
        max_bytes: int | None = None,
    ) -> list[list[Hit]]:
        """Top-k items by cosine for each query row (gallery space: a bridged embedding of any
        exit depth), among those a metadata filter selects when given. The filter's scan and
        the hits' rows are read without the lock (FAISS alone needs it). 422 when the hits'
        ids and metadata (if asked for) would weigh more than ``max_bytes`` — checked before
        any metadata is read."""
        allowed = None
        if filter is not None:
            compiled = self.compile(filter)
            with self._scanning(compiled) as reader:
                allowed = reader.matching(compiled.where, compiled.params)
            if not len(allowed):
                return [[] for _ in range(len(queries))]
        with self._lock:
            if self.vectors.size() == 0:
                return [[] for _ in range(len(queries))]
            exact = self.vectors.exact or self.rerank <= 1
            scores, nums = self.vectors.search(queries, k if exact else k * self.rerank, allowed)
        if not exact:
            scores, nums = self._reranked(queries, scores, nums, k)
        found = self._reader().sizes(sorted({int(n) for n in nums.ravel() if n >= 0}))
        picked = []
        for row_scores, row_nums in zip(scores, nums, strict=True):
            row = [(int(n), float(s)) for s, n in zip(row_scores, row_nums, strict=True)
                   if n >= 0 and int(n) in found]  # fmt: skip
            picked.append(row[:k])
        used = sorted({n for row in picked for n, _ in row})
        if max_bytes is not None:
            weight = sum(len(found[n][0].encode()) + HIT_BYTES + (found[n][1] if metadata else 0)
                         for row in picked for n, _ in row)  # fmt: skip
            if weight > max_bytes:
                raise APIError(
                    422,
                    "reply_too_large",
                    f"the answer would be about {weight} bytes; the limit is {max_bytes} "
                    "(SDSSL_MAX_REPLY_BYTES): ask for fewer results, or metadata=false",
                )
        if not metadata:
            return [[Hit(found[n][0], s, None) for n, s in row] for row in picked]
        texts = self._reader().metadata(used)  # an item deleted meanwhile drops out
        return [[Hit(found[n][0], s, texts[n]) for n, s in row if n in texts] for row in picked]

    def _reranked(
        self, queries: np.ndarray, scores: np.ndarray, nums: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """An approximate index's candidates ordered by their exact cosine (the stored vectors);
        -1 marks no candidate, and sorts last. Stale candidates drop out later, as before."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        safe = np.where(nums >= 0, nums, 1)
        exact = np.einsum("qd,qcd->qc", q, self.store.vectors_of(safe.ravel()).reshape(
            *nums.shape, -1))  # fmt: skip
        exact = np.where(nums >= 0, exact, -np.inf)
        order = np.argsort(-exact, axis=1, kind="stable")
        return np.take_along_axis(exact, order, 1), np.take_along_axis(nums, order, 1)

    def consistency(self) -> dict[str, Any]:
        """Ids in SQLite vs ids in the FAISS index (for tests and the crash suite)."""
        with self._lock:
            ids = self.store.num_ids()
            stored = self.vectors.ids()
        extra = np.setdiff1d(stored, ids)
        same = not len(np.setdiff1d(ids, stored)) and (len(extra) == 0 or self.vectors.stale > 0)
        return {"items": len(ids), "consistent": same}

    # ---- persistence ---------------------------------------------------------------------------
    def _after_change(self, n: int) -> None:
        """Snapshot after ``snapshot_every`` changes — or a tenth of the items, when that is
        more: a snapshot writes the whole index, and a restart replays at most that many."""
        self._changes += n
        if self._changes >= max(self.snapshot_every, self._items // 10):
            self._safe_snapshot()

    def _safe_snapshot(self) -> None:
        """A snapshot that fails (disk full, say) costs a longer replay at the next start, never
        a write that SQLite already made durable: log it and try again later."""
        try:
            self.snapshot()
        except (OSError, RuntimeError, sqlite3.Error) as exc:
            self._changes = 0  # retry after another snapshot_every changes
            log.warning("index %s: snapshot failed (%s); SQLite still holds every change",
                        self.root.name[:12], exc)  # fmt: skip

    def snapshot(self) -> None:
        """Persist the index atomically, tagged with the change-log position it contains. Past
        the configured factory's training size, the exact index is replaced by it: trained on
        a thread of its own while reads and writes go on (``background``), or here."""
        with self._lock:
            v = self.vectors
            if self._building is not None:
                return  # the log must keep what the build will catch up with
            if v.active != v.factory and self._items >= v.min_train:
                if self._closed or (self.background and time.monotonic() < self._retry_build_at):
                    pass  # closing, or a build failed lately: the exact index is snapshotted
                else:
                    log.info("index %s: %d items, switching to %s", self.root.name[:12],
                             self._items, v.factory)  # fmt: skip
                    if self.background:
                        self._switch_in_background()
                        return
                    v.active = v.factory
                    self._rebuild()
            elif v.stale:
                self._rebuild()
            else:
                v.refresh_gpu_copies()  # sheds the deletes GPU copies could not apply
            seq = self.store.last_seq()
            v.write_snapshot(self.bundle_id, seq)
            self.store.mark_snapshot(seq)
            self._changes = 0

    def _switch_in_background(self) -> None:
        """Start training the configured factory on a sample of the stored vectors and
        filling it with the items as of now; :meth:`_build` catches up and swaps."""
        seq, ids = self.store.last_seq(), self.store.num_ids()
        sample = self.store.sample_vectors(max(100_000, self.vectors.min_train))
        thread = threading.Thread(target=self._build, args=(seq, ids, sample),
                                  name="index-build", daemon=True)  # fmt: skip
        thread.start()  # if it cannot start, nothing is left marked as building
        self._building = thread

    def _build(self, seq: int, ids: np.ndarray, sample: np.ndarray) -> None:
        started = time.perf_counter()
        try:
            new = GalleryVectors(*self._vector_args)
            new.active = new.factory
            step = 65536
            new.rebuild(sample, ((ids[i : i + step], self.store.vectors_of(ids[i : i + step]))
                                 for i in range(0, len(ids), step)))  # fmt: skip
            with self._lock:
                if self._closed:
                    return
                caught_up = self.store.changes_after(seq)  # written while it was built
                self._apply(new, caught_up)
                self.vectors, self._building = new, None
                log.info("index %s: now %s (%d items; built in %.1f s beside the exact index, "
                         "%d changes caught up)", self.root.name[:12], new.active, len(ids),
                         time.perf_counter() - started, len(caught_up))  # fmt: skip
                self._safe_snapshot()
        except Exception as exc:  # the exact index keeps serving; a later snapshot tries again
            with self._lock:
                self._building = None
                if self._closed:  # closed under it: the restart replays the log
                    return
                self._changes, self._retry_build_at = 0, time.monotonic() + BUILD_RETRY_S
            log.warning("index %s: building %s failed (%r); the exact index keeps serving, "
                        "another try in %d s", self.root.name[:12], self.vectors.factory, exc,
                        BUILD_RETRY_S)  # fmt: skip

    def wait_built(self, timeout: float = 600.0) -> None:
        """Wait for a background switch of index type to finish (tests and tools)."""
        thread = self._building
        if thread is not None:
            thread.join(timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True  # a build in progress is dropped, not swapped in
            try:
                if self._changes:
                    self._safe_snapshot()
            finally:
                self.reader.close()
                self.store.close()
                self._writer.release()
