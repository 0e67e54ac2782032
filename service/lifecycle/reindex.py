"""``sdssl-reindex``: embed images into a bundle's indexes, offline (no server).

Sources are image folders (every image below them; id = file stem, metadata = the parent
folder's name as ``label`` and the path), text files listing ``path[<TAB>id]`` per line, or
another bundle's index folder (``DATA_DIR/<bundle id>``, one holding ``items.sqlite``, from this
server or an older one whose folders the server now refuses): its items' kept inputs are
re-embedded with their ids and metadata — how a collection moves to a bundle a rollout cannot
reach (items without a kept input are counted as failed and named: re-upload them).
Each item keeps its input as the server does (``SDSSL_KEEP_INPUTS``), so a later rollout
can re-embed it. Items already in the index are skipped, so an interrupted run resumes where
it stopped. Each batch is embedded once, at the bundle's gallery depth, and committed before
the next starts. Run it against a bundle that no server is serving at the same moment (e.g. a new
bundle, before ``POST /v1/admin/reload``): the index's writer lock refuses it otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import BundleIntegrityError, bundle_id, load_verified
from service.collection import IndexMismatch, StorageError, WriterLockHeld, open_index
from service.collection.bulk import Batch, Counts, write
from service.collection.store import DATABASE
from service.errors import APIError
from service.inference.engine import Engine
from service.inference.images import prepare, prepare_kept
from service.settings import Settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
log = logging.getLogger("reindex")


Entry = tuple[Callable[[], bytes | None], str, Any, str]  # read the image, id, metadata, where


def iter_sources(sources: list[Path]) -> Iterator[Entry]:
    """(read its bytes, id, metadata, where) for every image named by the sources, in a stable
    order."""
    for src in sources:
        if src.is_dir() and (src / DATABASE).is_file():
            yield from _index_folder(src)
        elif src.is_dir():
            for path in sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
                meta = {"label": path.parent.name, "path": str(path)}
                yield path.read_bytes, path.stem, meta, str(path)
        elif src.is_file():
            for n, line in enumerate(src.read_text().splitlines(), 1):
                if not line.strip() or line.startswith("#"):
                    continue
                path_s, _, item_id = line.partition("\t")
                path = Path(path_s.strip())
                if not path.is_absolute():
                    path = src.parent / path
                meta = {"path": str(path), "line": n}
                yield path.read_bytes, item_id.strip() or path.stem, meta, str(path)
        else:
            raise FileNotFoundError(f"source not found: {src}")


def _index_folder(folder: Path) -> Iterator[Entry]:
    """The items of an index folder, oldest first, each read with its kept input (None: it has
    none). Opened read-only; every schema version keeps ``items`` and ``inputs`` alike."""
    db = sqlite3.connect(f"file:{folder / DATABASE}?mode=ro", uri=True, check_same_thread=False)
    try:
        has_inputs = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'inputs'"
        ).fetchone()
        rows = db.execute("SELECT num_id, id, metadata FROM items ORDER BY num_id").fetchall()
    except sqlite3.Error as exc:
        db.close()
        raise FileNotFoundError(f"{folder}: not a readable index folder ({exc})") from None

    def reader(num_id: int) -> Callable[[], bytes | None]:
        def read() -> bytes | None:
            if not has_inputs:
                return None
            row = db.execute("SELECT png FROM inputs WHERE num_id = ?", (num_id,)).fetchone()
            return None if row is None else bytes(row[0])

        return read

    for num_id, item_id, metadata in rows:
        yield reader(num_id), item_id, None if metadata is None else json.loads(metadata), item_id


def reindex(
    bundle: Path,
    data_dir: Path,
    sources: list[Path],
    batch_size: int = 64,
    settings: Settings | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Embed and upsert every image not yet indexed; returns counts."""
    settings = settings or Settings()
    manifest = load_verified(bundle)
    here = settings.model_copy(update={"data_dir": data_dir})
    index = open_index(here, manifest, bundle_id(bundle), background=False)
    try:
        engine = Engine(bundle, manifest, settings.device, settings.threads)
    except BaseException:
        index.close()
        raise
    p = manifest.preprocess
    args = (p.resize, p.crop, p.interpolation)
    found = list(iter_sources(sources))  # walk the sources once
    todo = [(read, i, m, where) for read, i, m, where in found if index.get(i) is None]
    counts = Counts(skipped_existing=len(found) - len(todo))

    def embedded() -> Iterator[Batch]:
        for start in range(0, len(todo), batch_size):
            rows, ids, metas, kept = [], [], [], []
            for read, item_id, meta, where in todo[start : start + batch_size]:
                try:
                    data = read()
                    if data is None:
                        counts.refuse(f"{where}: no kept input to re-embed: re-upload it")
                        continue
                    if settings.keep_inputs:
                        row, png = prepare_kept(
                            data, *args, settings.max_pixels, settings.keep_input_side
                        )
                        kept.append(png)
                    else:
                        row = prepare(data, *args, settings.max_pixels)
                    rows.append(row)
                except (APIError, OSError) as exc:
                    counts.refuse(f"{where}: {exc.message if isinstance(exc, APIError) else exc}")
                    continue
                ids.append(item_id)
                metas.append(meta)
            if rows:
                yield Batch(ids, metas, engine.embed_gallery(np.stack(rows)), kept or None)

    try:
        write(index, embedded(), len(todo), counts, "reindex", progress=progress and bool(todo))
    finally:
        index.close()
    return {"indexed": counts.imported, "skipped_existing": counts.skipped_existing,
            "failed": counts.refused}  # fmt: skip


def _has_items(bundle: Path, data_dir: Path) -> bool:
    """Whether the bundle's index exists and is non-empty (cheap: no model is loaded)."""
    import sqlite3

    try:
        db = data_dir / bundle_id(bundle) / "items.sqlite"
    except OSError:
        return False
    if not db.is_file():
        return False
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] > 0
        except sqlite3.Error:
            return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sdssl-reindex",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="Sources: image folders (id = file stem, label = parent folder), text files "
        "of 'path<TAB>id' lines, or another bundle's index folder (DATA_DIR/<bundle id>: its "
        "kept inputs are re-embedded with their ids and metadata). Already indexed ids are "
        "skipped (resumable).",
    )
    parser.add_argument("bundle", type=Path, help="bundle directory")
    parser.add_argument("sources", type=Path, nargs="+",
                        help="image folders, list files or index folders")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, default=None, help="default: SDSSL_DATA_DIR")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--if-empty", action="store_true", help="do nothing if the index already holds items"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    settings = Settings()
    data_dir = args.data_dir or settings.data_dir
    if args.if_empty and _has_items(args.bundle, data_dir):
        print("index already holds items; nothing to do (--if-empty)")
        return 0
    try:
        counts = reindex(
            args.bundle,
            data_dir,
            args.sources,
            args.batch_size,
            settings,
            progress=not args.quiet,
        )
    except BundleIntegrityError as exc:
        print(f"error: {args.bundle}: {exc}", file=sys.stderr)
        return 2
    except (IndexMismatch, WriterLockHeld, StorageError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"indexed {counts['indexed']}, already present {counts['skipped_existing']}, "
        f"failed {counts['failed']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
