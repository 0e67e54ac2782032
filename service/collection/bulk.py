"""Bulk loading into a bundle's gallery: one write path for precomputed vectors
(``sdssl-import``, ``POST /v1/admin/import``) and for image folders embedded in
bulk (``sdssl-reindex``).

Sources of precomputed vectors — a folder holding ``vectors.npy`` (``[N, D]`` floats in the
gallery's space: what ``/v1/embeddings`` answers), ``ids.txt`` (one id per line) or ``ids.npy``
and optionally ``metadata.jsonl`` (one JSON document per line, ``null`` for none); an ``.npz``
with the arrays ``vectors``, ``ids`` and optionally ``metadata``; a ``.parquet`` with the
columns ``id``, ``vector``, ``metadata`` (the ``parquet`` extra) — are read by
:mod:`service.collection.vector_sources`, a bounded chunk at a time.

Rows are checked as the API checks them — the id rule, metadata within the size and depth
limits, finite vectors of the bundle's dimension with a non-zero norm (normalised here) — and a
row that fails is skipped and counted, its reason logged (the first few). Each batch is one
durable upsert (:meth:`~service.collection.ItemIndex.upsert`): once the progress bar counts it as
stored it survives a kill -9. A later id replaces an earlier one, within a source as across runs;
``resume`` skips ids already stored instead, so an interrupted import goes on where it stopped.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from service.collection import ItemIndex
from service.collection.ids import ID_RULE, valid_id
from service.collection.vector_sources import BadLine, SourceError, VectorSource
from service.collection.vectors import unit_rows
from service.errors import APIError
from service.jsonio import loads_strict, metadata_problem
from service.settings import Settings

log = logging.getLogger(__name__)
BATCH = 10_000
MAX_BATCH = 100_000  # rows per batch an import may ask for (POST /v1/admin/import)
MAX_SOURCE_NAME = 4096  # characters of an import source's name
LOGGED = 20  # refused rows whose reason is logged


@dataclass
class Batch:
    """Rows ready to store: distinct ids, their metadata, ``vectors [n, D]`` in the gallery's
    space, and kept inputs (None: none)."""

    ids: list[str]
    metadata: list[Any]
    vectors: np.ndarray
    inputs: list[bytes | None] | None = None
    read: int = 0  # rows of the source it came from (refused ones and repeats included)


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


def _metadata(text: str | None, settings: Settings) -> tuple[Any, str | None]:
    """(document, None) or (None, why it is refused)."""
    if isinstance(text, BadLine):
        return None, f"its metadata line is {text}"
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
    if (source.rows or source.dim) and source.dim != dim:
        raise SourceError(f"{source.name}: vectors have {source.dim} values; the bundle's "
                          f"have {dim}")  # fmt: skip
    start = 0
    for ids, rows, texts in source.chunks(size):
        if rows.shape[1:] != (dim,):  # a source whose header said otherwise
            raise SourceError(f"{source.name}: rows of {rows.shape[1:]} values; the bundle's "
                              f"have {dim}")  # fmt: skip
        unit, good = unit_rows(rows)
        kept: dict[str, tuple[Any, np.ndarray]] = {}  # a repeated id: the later row wins
        for j, (item_id, text) in enumerate(zip(ids, texts, strict=True)):
            where = f"row {start + j}"
            if isinstance(item_id, BadLine):
                counts.refuse(f"{where}: its id is {item_id}")
                continue
            if not valid_id(item_id):
                counts.refuse(f"{where} ({item_id[:64]!r}): the id is not {ID_RULE}")
                continue
            if not good[j]:
                counts.refuse(f"{where} ({item_id!r}): its vector is missing, of another "
                              "length, not finite or zero")  # fmt: skip
                continue
            doc, why = _metadata(text, settings)
            if why is not None:
                counts.refuse(f"{where} ({item_id!r}): {why}")
                continue
            kept.pop(item_id, None)
            kept[item_id] = (doc, unit[j])
        start += len(ids)
        if kept:
            yield Batch(list(kept), [d for d, _ in kept.values()],
                        np.stack([v for _, v in kept.values()]), read=len(ids))  # fmt: skip
        else:
            yield Batch([], [], np.zeros((0, dim), np.float32), read=len(ids))  # progress moves


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
    row, where a run without it keeps the last); the progress bar (stderr) counts rows read and
    says how many are stored, after each commit."""
    bar = tqdm(total=total, desc=label, unit="row", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, postfix="0 stored")  # fmt: skip
    with bar:
        for batch in source:
            rows = store(index, batch, counts, resume)
            bar.set_postfix_str(f"{counts.imported} stored", refresh=False)
            bar.update(batch.read or rows)
    return counts
