"""Bulk loading into a bundle's gallery: one write path for precomputed vectors
(``python -m service.bulk_import``) and for image folders embedded in bulk
(``python -m service.reindex``).

A source of precomputed vectors is a folder holding ``vectors.npy`` (``[N, D]`` float32 or
float16, in the gallery's space: what ``/v1/embeddings`` answers; read memory-mapped, so its size
is not bounded by RAM), ``ids.txt`` (one id per line) or ``ids.npy``, and optionally
``metadata.jsonl`` (one JSON document per line, ``null`` for none) — or one ``.npz`` holding the
arrays ``vectors``, ``ids`` and optionally ``metadata`` (JSON text per item).

Rows are checked as the API checks them — the id rule, metadata within the size and depth
limits, finite vectors of the bundle's dimension with a non-zero norm (normalised here) — and a
row that fails is skipped and counted, its reason logged (the first few). Each batch is one
durable upsert (:meth:`~service.index.ItemIndex.upsert`): once its progress line is printed it
survives a kill -9. A later id replaces an earlier one, within a source as across runs;
``resume`` skips ids already stored instead, so an interrupted import goes on where it stopped.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import APIError
from service.index import ItemIndex
from service.index.ids import ID_RULE, valid_id
from service.jsonio import loads_strict, metadata_problem
from service.settings import Settings

log = logging.getLogger(__name__)
BATCH = 10_000
LOGGED = 20  # refused rows whose reason is logged


class SourceError(ValueError):
    """A bulk source that cannot be read at all (one-line reason)."""


@dataclass
class Batch:
    """Rows ready to store: distinct ids, their metadata, ``vectors [n, D]`` in the gallery's
    space, and kept inputs (None: none)."""

    ids: list[str]
    metadata: list[Any]
    vectors: np.ndarray
    inputs: list[bytes | None] | None = None


@dataclass
class Counts:
    imported: int = 0
    skipped_existing: int = 0
    refused: int = 0
    reasons: list[str] = field(default_factory=list)

    def refuse(self, what: str) -> None:
        self.refused += 1
        if len(self.reasons) < LOGGED:
            self.reasons.append(what)
            log.warning("skipping %s", what)


@dataclass
class VectorSource:
    """Rows of precomputed vectors, read a batch at a time."""

    name: str
    vectors: np.ndarray  # [N, D], possibly memory-mapped
    ids: list[str]
    metadata: Iterator[str | None]

    def __len__(self) -> int:
        return len(self.ids)


def open_source(path: Path) -> VectorSource:
    """A folder (``vectors.npy``, ``ids.txt``/``ids.npy``, ``metadata.jsonl``) or an ``.npz``."""
    if path.is_dir():
        try:
            vectors = np.load(path / "vectors.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SourceError(f"{path}: cannot read vectors.npy ({exc})") from None
        if (path / "ids.txt").is_file():
            ids = _text_lines((path / "ids.txt").read_text(encoding="utf-8"))
        elif (path / "ids.npy").is_file():
            try:
                ids = _strings(np.load(path / "ids.npy", allow_pickle=False))
            except (OSError, ValueError) as exc:
                raise SourceError(f"{path}: cannot read ids.npy ({exc})") from None
        else:
            raise SourceError(f"{path}: no ids.txt or ids.npy beside vectors.npy")
        meta_path = path / "metadata.jsonl"
        metadata: Iterator[str | None] = itertools.repeat(None)
        if meta_path.is_file():
            with open(meta_path, encoding="utf-8") as fh:
                lines = sum(1 for _ in fh)
            if lines != len(ids):
                raise SourceError(f"{path}: metadata.jsonl has {lines} lines for {len(ids)} ids")
            metadata = _lines(meta_path)
    elif path.suffix == ".npz" and path.is_file():
        try:
            arrays = np.load(path, allow_pickle=False)
            vectors, ids = arrays["vectors"], _strings(arrays["ids"])
            texts = _strings(arrays["metadata"]) if "metadata" in arrays.files else None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise SourceError(f"{path}: not an .npz with vectors and ids ({exc})") from None
        metadata = itertools.repeat(None)
        if texts is not None:
            if len(texts) != len(ids):
                raise SourceError(f"{path}: {len(texts)} metadata for {len(ids)} ids")
            metadata = (None if m == "" else m for m in texts)
    else:
        raise SourceError(f"{path}: neither a folder with vectors.npy nor an .npz file")
    if vectors.ndim != 2 or vectors.dtype not in (np.float32, np.float16):
        raise SourceError(f"{path}: vectors must be [N, D] float32 or float16, not "
                          f"{vectors.shape} {vectors.dtype}")  # fmt: skip
    if len(ids) != len(vectors):
        raise SourceError(f"{path}: {len(vectors)} vectors but {len(ids)} ids")
    return VectorSource(str(path), vectors, ids, metadata)


def _text_lines(text: str) -> list[str]:
    """Lines split at newlines only (``str.splitlines`` also splits at \\x1c, \\u2028…)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _strings(array: np.ndarray) -> list[str]:
    """Text from a numpy array of str or (UTF-8) bytes."""
    if array.dtype.kind == "S":
        return [b.decode("utf-8", errors="replace") for b in array.tolist()]
    return [str(x) for x in array.tolist()]


def _lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            yield line.rstrip("\n").removesuffix("\r")


def _metadata(text: str | None, settings: Settings) -> tuple[Any, str | None]:
    """(document, None) or (None, why it is refused)."""
    if text is None or text.strip() in ("", "null"):
        return None, None
    try:
        doc = loads_strict(text, "metadata")
    except APIError as exc:
        return None, exc.message
    why = metadata_problem(doc, settings.max_metadata_depth, settings.max_metadata_bytes)
    return (None, f"metadata {why}") if why is not None else (doc, None)


def batches(
    source: VectorSource, dim: int, settings: Settings, counts: Counts, size: int = BATCH
) -> Iterator[Batch]:
    """The source's valid rows, ``size`` at a time; refused rows are counted in ``counts``."""
    for start in range(0, len(source), size):
        stop = min(start + size, len(source))
        rows = np.asarray(source.vectors[start:stop], dtype=np.float32)
        if rows.shape[1] != dim:
            raise SourceError(f"{source.name}: vectors have {rows.shape[1]} values; the "
                              f"bundle's have {dim}")  # fmt: skip
        norms = np.linalg.norm(rows, axis=1)
        good = np.isfinite(rows).all(axis=1) & np.isfinite(norms) & (norms > 0)
        kept: dict[str, tuple[Any, np.ndarray]] = {}  # a repeated id: the later row wins
        texts = list(itertools.islice(source.metadata, stop - start))
        for j, (item_id, text) in enumerate(zip(source.ids[start:stop], texts, strict=True)):
            where = f"row {start + j}"
            if not valid_id(item_id):
                counts.refuse(f"{where} ({item_id[:64]!r}): the id is not {ID_RULE}")
                continue
            if not good[j]:
                counts.refuse(f"{where} ({item_id!r}): its vector is not finite or is zero")
                continue
            doc, why = _metadata(text, settings)
            if why is not None:
                counts.refuse(f"{where} ({item_id!r}): {why}")
                continue
            kept.pop(item_id, None)
            kept[item_id] = (doc, rows[j] / norms[j])
        if kept:
            yield Batch(list(kept), [d for d, _ in kept.values()],
                        np.stack([v for _, v in kept.values()]))  # fmt: skip


def _last_of_each(batch: Batch) -> Batch:
    """The batch with each id once: its last row (image folders may repeat a file stem)."""
    last = {item_id: i for i, item_id in enumerate(batch.ids)}
    if len(last) == len(batch.ids):
        return batch
    keep = sorted(last.values())
    return Batch([batch.ids[i] for i in keep], [batch.metadata[i] for i in keep],
                 batch.vectors[keep],
                 None if batch.inputs is None else [batch.inputs[i] for i in keep])  # fmt: skip


def write(
    index: ItemIndex,
    source: Iterable[Batch],
    total: int,
    counts: Counts,
    label: str = "import",
    resume: bool = False,
    progress: bool = True,
) -> Counts:
    """Upsert every batch durably (skipping ids already stored when ``resume``: an id repeated
    in the source then keeps its first row, where a run without it keeps the last); a progress
    line after each commit says how many rows are stored so far. An id repeated within one
    batch keeps its last row."""
    started, seen = time.perf_counter(), 0
    for batch in source:
        batch = _last_of_each(batch)
        seen += len(batch.ids)
        if resume:
            present = index.versions(batch.ids)
            if present:
                keep = [i for i, item_id in enumerate(batch.ids) if item_id not in present]
                counts.skipped_existing += len(batch.ids) - len(keep)
                batch = Batch(
                    [batch.ids[i] for i in keep],
                    [batch.metadata[i] for i in keep],
                    batch.vectors[keep],
                    None if batch.inputs is None else [batch.inputs[i] for i in keep],
                )
        if batch.ids:
            index.upsert(batch.ids, batch.metadata, batch.vectors, batch.inputs)
            counts.imported += len(batch.ids)
        if progress:
            rate = counts.imported / max(1e-9, time.perf_counter() - started)
            print(f"\r{label}: {counts.imported} stored ({seen + counts.refused}/{total} rows "
                  f"read), {rate:,.0f}/s", end="", file=sys.stderr, flush=True)  # fmt: skip
    if progress:
        print(file=sys.stderr)
    return counts
