"""FAISS, the derived part of a bundle's gallery: one index of the gallery-depth vectors (inner
product on L2-normalised vectors = cosine) whose ids are SQLite's item numbers — IVF indexes
hold ids themselves, others sit in an ``IDMap``. Queries of every exit depth search it, bridged
into its space by the bundle's graphs. The vectors themselves live in :mod:`.vector_file`: an
approximate index's candidates are re-ranked exactly from there (:class:`~.ItemIndex`).

Snapshots are a file ``index.s<seq>.faiss`` plus ``snapshot.json`` naming the change-log
position it contains. Factories that need training (IVF…) serve from an exact index until there
are enough items to train them.

On a GPU (when FAISS has one and the setting asks for it) the CPU index — always the persisted
truth — gets a GPU copy for search, if FAISS can put that index type on a GPU (Flat and IVF can,
HNSW cannot: it stays on the CPU, logged once). Adds go to both copies; a delete the GPU copy
cannot apply is filtered at search time like HNSW's, and the copy is refreshed at the next
snapshot — writes never re-copy a whole index.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from service.collection.storage import fsync_write

log = logging.getLogger(__name__)
SNAPSHOT = "snapshot.json"
GPU_MAX_K = 2048  # FAISS's GPU k-selection limit (k and nprobe)


def unit_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectors as the gallery stores and searches them: each row scaled to unit length (its
    inner product with another is the cosine score), float32; and which rows are usable (all
    values finite, a finite non-zero norm) — the others' rows are meaningless. The one rule for
    vectors that come from outside (a search by vector, a bulk import)."""
    rows = np.array(rows, dtype=np.float64)  # our own copy, normalised in place
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.linalg.norm(rows, axis=-1)  # NaN or inf when any value is
    good = np.isfinite(norms) & (norms > 0)
    rows[~good] = 0.0
    rows /= np.where(good, norms, 1.0)[..., None]
    return rows.astype(np.float32), good


def gpu_capable(dim: int, factory: str) -> bool:
    """Whether FAISS has a GPU version of this index type (graph indexes have none)."""
    probe = faiss.downcast_index(faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT))
    return not (hasattr(probe, "hnsw") or "NSG" in type(probe).__name__)


def training_points(dim: int, factory: str) -> int:
    """Vectors a factory needs before it can be trained (0: no training needed)."""
    probe = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if probe.is_trained:
        return 0
    try:
        return 39 * int(faiss.extract_index_ivf(probe).nlist)  # FAISS's own minimum
    except RuntimeError:
        return 10_000


class GalleryVectors:
    """Not thread-safe on its own: :class:`~service.collection.ItemIndex` serialises calls."""

    def __init__(
        self, folder: Path, dim: int, factory: str, use_gpu: bool, nprobe: int = 16
    ) -> None:
        self.folder, self.dim, self.nprobe = folder, dim, nprobe
        self.factory = factory
        self.min_train = training_points(dim, factory)
        self.active = "Flat"  # set by the owner once it knows the item count
        self.stale = 0  # vectors left in an index that cannot remove (e.g. HNSW)
        self.index: Any = self._new_index()
        self._gpu = self._gpu_resources() if use_gpu else None
        self._gpu_index: Any = None
        self._gpu_stale = 0  # deletes the GPU copy still holds
        self._gpu_refused: set[str] = set()  # index types FAISS cannot put on a GPU
        if use_gpu and not gpu_capable(dim, factory):
            log.info("FAISS has no GPU version of %s: it searches on the CPU", factory)
            self._gpu_refused.add(factory)

    @staticmethod
    def _gpu_resources() -> Any:
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            log.info("FAISS sees no GPU: the gallery searches on the CPU")
            return None
        return faiss.StandardGpuResources()

    @property
    def device(self) -> str:
        """Where searches run: ``gpu`` when the active index type has a GPU copy."""
        return "gpu" if self._gpu is not None and self.active not in self._gpu_refused else "cpu"

    @property
    def extra_fetch(self) -> int:
        """Results a search must over-fetch: deleted vectors some copy still holds."""
        return self.stale + (self._gpu_stale if self.device == "gpu" else 0)

    def _drop_gpu_copy(self) -> None:
        self._gpu_index = None
        self._gpu_stale = 0

    def _new_index(self) -> Any:
        index = faiss.index_factory(self.dim, self.active, faiss.METRIC_INNER_PRODUCT)
        top = faiss.downcast_index(index)
        if isinstance(top, faiss.IndexPreTransform):
            top = faiss.downcast_index(top.index)
        if isinstance(top, faiss.IndexIVF):  # holds ids itself; others (Refine…) need a map
            return self._tuned(index)
        return self._tuned(faiss.IndexIDMap(index))

    @staticmethod
    def _ivf(index: Any) -> Any:
        """The IVF index inside ``index``, or None."""
        try:
            return faiss.extract_index_ivf(index)
        except RuntimeError:
            return None

    def _tuned(self, index: Any) -> Any:
        if (ivf := self._ivf(index)) is not None:
            ivf.nprobe = min(self.nprobe, ivf.nlist, GPU_MAX_K)
        return index

    def _inner(self) -> Any:
        """The index under the id map (the index itself for IVF)."""
        index = faiss.downcast_index(self.index)
        return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index

    @property
    def exact(self) -> bool:
        """Whether search scores are exact (a flat index): no re-ranking needed."""
        return self.active == "Flat"

    # ---- building --------------------------------------------------------------------------
    def rebuild(
        self, sample: np.ndarray | None, chunks: Iterable[tuple[np.ndarray, np.ndarray]]
    ) -> None:
        """A fresh index of the active factory, trained on ``sample [n, D]`` if it needs it,
        filled from ``(num_ids, vectors [n, D])`` chunks."""
        index = self._new_index()  # built aside: a failure leaves the serving index as it was
        if not index.is_trained and sample is not None:
            index.train(np.ascontiguousarray(sample, dtype=np.float32))
        for ids, vecs in chunks:
            index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), ids)
        self.index, self.stale = index, 0
        self._drop_gpu_copy()

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """``vecs [N, D]`` under FAISS ids ``ids`` (and into the GPU copy)."""
        x = np.ascontiguousarray(vecs, dtype=np.float32)
        self.index.add_with_ids(x, ids)
        if self._gpu_index is not None:
            self._gpu_index.add_with_ids(x, ids)

    def remove(self, ids: np.ndarray) -> None:
        try:
            self.index.remove_ids(ids)
        except RuntimeError:  # e.g. HNSW: left in place, filtered out at search time
            self.stale += len(ids)
        if self._gpu_index is not None:
            try:
                self._gpu_index.remove_ids(ids)
            except RuntimeError:  # GPU flat indexes cannot remove: filtered likewise
                self._gpu_stale += len(ids)

    # ---- reading ---------------------------------------------------------------------------
    def size(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        """Every id the index holds (stale ones included), ascending."""
        index = faiss.downcast_index(self.index)
        if isinstance(index, faiss.IndexIDMap):
            found = faiss.vector_to_array(index.id_map)
        else:
            ivf = self._ivf(self.index)
            lists = ivf.invlists
            found = np.concatenate([np.zeros(0, np.int64)] + [
                faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                for i in range(ivf.nlist) if lists.list_size(i)
            ])  # fmt: skip
        return np.sort(found.astype(np.int64))

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, num_ids)`` of the best ``k`` plus :attr:`extra_fetch` per query row (-1
        where fewer exist); only among ``allowed`` num_ids when given (searched on the CPU
        index: exact for Flat, approximate within the filter for HNSW and IVF)."""
        index = self._search_index() if allowed is None else self.index
        fetch = max(1, min(int(index.ntotal), k + self.extra_fetch))
        if index is not self.index:
            fetch = min(fetch, GPU_MAX_K)  # FAISS's GPU search returns at most this many
        x = np.ascontiguousarray(queries, dtype=np.float32)
        inner = self._inner()
        if hasattr(inner, "hnsw"):  # HNSW returns fewer than k results when efSearch < k
            inner.hnsw.efSearch = max(inner.hnsw.efSearch, fetch)
        if allowed is None:
            return index.search(x, fetch)
        selector = faiss.IDSelectorBatch(allowed)
        if hasattr(inner, "hnsw"):
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(64, 4 * fetch))
        elif (ivf := self._ivf(self.index)) is not None:  # IVF takes only its own parameters
            params = faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
        else:
            params = faiss.SearchParameters(sel=selector)
        return index.search(x, fetch, params=params)

    def _search_index(self) -> Any:
        if self.device != "gpu":
            return self.index
        if self._gpu_index is None:  # copied once; writes then update the copy in place
            try:
                self._gpu_index = faiss.index_cpu_to_gpu(self._gpu, 0, self.index)
            except RuntimeError as exc:  # e.g. HNSW: FAISS has no GPU version of it
                log.warning("FAISS cannot put %s on a GPU (%s): it searches on the CPU",
                            self.active, str(exc).splitlines()[0][:120])  # fmt: skip
                self._gpu_refused.add(self.active)
                self._drop_gpu_copy()
                return self.index
        return self._gpu_index

    def refresh_gpu_copies(self) -> None:
        """Drop the GPU copy (and the deletes it held); the next search copies again."""
        self._drop_gpu_copy()

    # ---- snapshots -------------------------------------------------------------------------
    def _file(self, seq: int) -> Path:
        return self.folder / f"index.s{seq}.faiss"

    def read_snapshot(self, bundle_id: str) -> int | None:
        """Load the snapshot if it fits this bundle and factory; the seq it contains, or None."""
        path = self.folder / SNAPSHOT
        if not path.is_file():
            return None
        try:
            info = json.loads(path.read_text())
            seq = int(info["seq"])
            if info.get("factory") != self.active or info.get("bundle_id") != bundle_id:
                return None
            index = self._tuned(faiss.read_index(str(self._file(seq))))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("ignoring an unusable FAISS snapshot: %s", exc)
            return None
        self.index, self.stale = index, 0
        self._drop_gpu_copy()
        return seq

    def write_snapshot(self, bundle_id: str, seq: int) -> None:
        """Persist the index atomically, tagged with the change-log position it contains."""
        fsync_write(self._file(seq), faiss.serialize_index(self.index).tobytes())
        info = {"seq": seq, "bundle_id": bundle_id, "factory": self.active}
        fsync_write(self.folder / SNAPSHOT, json.dumps(info).encode())
        for old in self.folder.glob("index.s*.faiss"):
            if old.name != self._file(seq).name:
                old.unlink(missing_ok=True)
