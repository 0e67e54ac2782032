"""Bulk loading into a bundle's gallery: one write path for precomputed vectors
(``python -m service.bulk_import``) and for image folders embedded in bulk
(``python -m service.reindex``).

A source of precomputed vectors is a folder holding ``vectors.npy`` (``[N, D]`` float16, 32
or 64, in the gallery's space: what ``/v1/embeddings`` answers; read memory-mapped, so its size
is not bounded by RAM), ``ids.txt`` (one id per line) or ``ids.npy``, and optionally
``metadata.jsonl`` (one JSON document per line, ``null`` for none) — or one ``.npz`` holding the
arrays ``vectors``, ``ids`` and optionally ``metadata`` (JSON text per item) — or one
``.parquet`` file with the columns ``id`` (string), ``vector`` (a list of floats, one length
throughout) and optionally ``metadata`` (JSON text or null), read a record batch at a time
(it needs pyarrow: the ``parquet`` extra, which the serving image leaves out).

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
from collections.abc import Callable, Iterable, Iterator
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
MAX_BATCH = 100_000  # rows per batch an import may ask for (POST /v1/admin/import)
MAX_SOURCE_NAME = 4096  # characters of an import source's name
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


Chunk = tuple[list[str], np.ndarray, list[str | None]]  # ids, vectors [n, D], metadata texts


@dataclass
class VectorSource:
    """Rows of precomputed vectors: ``chunks(size)`` reads them in order, ``size`` at a time."""

    name: str
    rows: int
    dim: int
    chunks: Callable[[int], Iterator[Chunk]]

    def __len__(self) -> int:
        return self.rows


def open_source(path: Path, name: str | None = None) -> VectorSource:
    """A folder (``vectors.npy``, ``ids.txt``/``ids.npy``, ``metadata.jsonl``), an ``.npz`` or
    a ``.parquet`` file; ``name`` is how messages call it (default: the path)."""
    name = name or str(path)
    if path.is_dir():
        vectors, ids, metadata = _folder(path, name)
    elif path.suffix == ".npz" and path.is_file():
        vectors, ids, metadata = _npz(path, name)
    elif path.suffix == ".parquet" and path.is_file():
        return _parquet(path, name)
    else:
        raise SourceError(f"{name}: neither a folder with vectors.npy nor an .npz or .parquet file")
    _check_vectors(vectors, name)
    if len(ids) != len(vectors):
        raise SourceError(f"{name}: {len(vectors)} vectors but {len(ids)} ids")

    def chunks(size: int) -> Iterator[Chunk]:
        for start in range(0, len(ids), size):
            stop = min(start + size, len(ids))
            yield (ids[start:stop], np.asarray(vectors[start:stop], dtype=np.float32),
                   list(itertools.islice(metadata, stop - start)))  # fmt: skip

    return VectorSource(name, len(ids), int(vectors.shape[1]), chunks)


def _check_vectors(vectors: np.ndarray, name: str) -> None:
    if vectors.ndim != 2 or vectors.dtype not in (np.float16, np.float32, np.float64):
        raise SourceError(f"{name}: vectors must be [N, D] floats (16, 32 or 64 bits), not "
                          f"{vectors.shape} {vectors.dtype}")  # fmt: skip


def _folder(path: Path, name: str) -> tuple[np.ndarray, list[str], Iterator[str | None]]:
    try:
        vectors = np.load(path / "vectors.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SourceError(f"{name}: cannot read vectors.npy ({_reason(exc)})") from None
    try:
        if (path / "ids.txt").is_file():
            ids = _text_lines((path / "ids.txt").read_text(encoding="utf-8"))
        elif (path / "ids.npy").is_file():
            ids = _strings(np.load(path / "ids.npy", allow_pickle=False))
        else:
            raise SourceError(f"{name}: no ids.txt or ids.npy beside vectors.npy")
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise SourceError(f"{name}: cannot read its ids ({_reason(exc)})") from None
    meta_path = path / "metadata.jsonl"
    metadata: Iterator[str | None] = itertools.repeat(None)
    if meta_path.is_file():
        try:
            with open(meta_path, encoding="utf-8") as fh:
                lines = sum(1 for _ in fh)
        except (OSError, ValueError) as exc:
            raise SourceError(f"{name}: cannot read metadata.jsonl ({_reason(exc)})") from None
        if lines != len(ids):
            raise SourceError(f"{name}: metadata.jsonl has {lines} lines for {len(ids)} ids")
        metadata = _lines(meta_path)
    return vectors, ids, metadata


def _npz(path: Path, name: str) -> tuple[np.ndarray, list[str], Iterator[str | None]]:
    try:
        arrays = np.load(path, allow_pickle=False)
        vectors, ids = arrays["vectors"], _strings(arrays["ids"])
        texts = _strings(arrays["metadata"]) if "metadata" in arrays.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise SourceError(f"{name}: not an .npz with vectors and ids ({_reason(exc)})") from None
    metadata: Iterator[str | None] = itertools.repeat(None)
    if texts is not None:
        if len(texts) != len(ids):
            raise SourceError(f"{name}: {len(texts)} metadata for {len(ids)} ids")
        metadata = (None if m == "" else m for m in texts)
    return vectors, ids, metadata


PARQUET_EXTRA = "Parquet needs pyarrow: pip install 'sdssl-service[parquet]'"


def _parquet(path: Path, name: str) -> VectorSource:
    """Columns ``id`` (string), ``vector`` (a list of floats, the same length in every
    row) and optionally ``metadata`` (JSON text or null), read a record batch at a time."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError(f"{name}: {PARQUET_EXTRA}") from None
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"{name}: not a Parquet file ({_reason(exc)})") from None
    schema = pf.schema_arrow
    missing = [c for c in ("id", "vector") if c not in schema.names]
    if missing:
        raise SourceError(f"{name}: no column {missing[0]!r} (columns: id, vector, metadata)")
    vtype = schema.field("vector").type
    if not (pa.types.is_list(vtype) or pa.types.is_large_list(vtype)
            or pa.types.is_fixed_size_list(vtype)) or vtype.value_type not in (
            pa.float16(), pa.float32(), pa.float64()):  # fmt: skip
        raise SourceError(f"{name}: column 'vector' must be a list of floats, not "
                          f"{vtype}")  # fmt: skip
    if not (pa.types.is_string(schema.field("id").type)
            or pa.types.is_large_string(schema.field("id").type)):  # fmt: skip
        raise SourceError(f"{name}: column 'id' must be strings, not {schema.field('id').type}")
    columns = ["id", "vector"] + (["metadata"] if "metadata" in schema.names else [])
    if "metadata" in columns and not (
        pa.types.is_string(schema.field("metadata").type)
        or pa.types.is_large_string(schema.field("metadata").type)
    ):
        raise SourceError(f"{name}: column 'metadata' must be JSON text")  # fmt: skip
    if pa.types.is_fixed_size_list(vtype):
        dim = vtype.list_size
    else:
        first = next(pf.iter_batches(batch_size=1, columns=["vector"]), None)
        value = None if first is None or first.num_rows == 0 else first.column(0)[0]
        if value is not None and not value.is_valid:
            raise SourceError(f"{name}: row 0 has no vector")
        dim = 0 if value is None else len(value)

    def chunks(size: int) -> Iterator[Chunk]:
        for rb in pf.iter_batches(batch_size=size, columns=columns):
            vec = rb.column(1)
            if vec.null_count:
                raise SourceError(f"{name}: a row has no vector (a null)")
            lengths = np.diff(vec.offsets.to_numpy()) if hasattr(vec, "offsets") else None
            if lengths is not None and (lengths != dim).any():
                raise SourceError(f"{name}: vectors of {int(lengths[lengths != dim][0])} "
                                  f"and {dim} values in one file")  # fmt: skip
            flat = vec.flatten().to_numpy(zero_copy_only=False)
            ids = [("" if x is None else x) for x in rb.column(0).to_pylist()]
            metadata = rb.column(2).to_pylist() if len(columns) == 3 else [None] * rb.num_rows
            yield ids, flat.reshape(rb.num_rows, dim).astype(np.float32), metadata

    return VectorSource(name, pf.metadata.num_rows, dim, chunks)


def _reason(exc: BaseException) -> str:
    """A library error's first line, without the path it names (a message may reach a client)."""
    text = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(
        exc
    ).__name__
    return text.splitlines()[0][:200]


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
    if source.rows and source.dim != dim:
        raise SourceError(f"{source.name}: vectors have {source.dim} values; the bundle's "
                          f"have {dim}")  # fmt: skip
    start = 0
    for ids, rows, texts in source.chunks(size):
        norms = np.linalg.norm(rows, axis=1)
        good = np.isfinite(rows).all(axis=1) & np.isfinite(norms) & (norms > 0)
        kept: dict[str, tuple[Any, np.ndarray]] = {}  # a repeated id: the later row wins
        for j, (item_id, text) in enumerate(zip(ids, texts, strict=True)):
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
        start += len(ids)
        if kept:
            yield Batch(list(kept), [d for d, _ in kept.values()],
                        np.stack([v for _, v in kept.values()]))  # fmt: skip
        else:
            yield Batch([], [], np.zeros((0, dim), np.float32))  # progress still moves


def _last_of_each(batch: Batch) -> Batch:
    """The batch with each id once: its last row (image folders may repeat a file stem)."""
    last = {item_id: i for i, item_id in enumerate(batch.ids)}
    if len(last) == len(batch.ids):
        return batch
    keep = sorted(last.values())
    return Batch([batch.ids[i] for i in keep], [batch.metadata[i] for i in keep],
                 batch.vectors[keep],
                 None if batch.inputs is None else [batch.inputs[i] for i in keep])  # fmt: skip


def store(index: ItemIndex, batch: Batch, counts: Counts, resume: bool = False) -> int:
    """Upsert one batch durably (an id repeated within it keeps its last row; ``resume``: ids
    already stored are skipped and counted); the rows it held."""
    batch = _last_of_each(batch)
    rows = len(batch.ids)
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
    return rows


def write(
    index: ItemIndex,
    source: Iterable[Batch],
    total: int,
    counts: Counts,
    label: str = "import",
    resume: bool = False,
    progress: bool = True,
) -> Counts:
    """:func:`store` every batch (``resume``: an id repeated in the source then keeps its first
    row, where a run without it keeps the last); a progress line after each commit says how
    many rows are stored so far."""
    started, seen = time.perf_counter(), 0
    for batch in source:
        seen += store(index, batch, counts, resume)
        if progress:
            rate = counts.imported / max(1e-9, time.perf_counter() - started)
            print(f"\r{label}: {counts.imported} stored ({seen + counts.refused}/{total} rows "
                  f"read), {rate:,.0f}/s", end="", file=sys.stderr, flush=True)  # fmt: skip
    if progress:
        print(file=sys.stderr)
    return counts
