"""``sdssl-import BUNDLE SOURCE``: load precomputed vectors into a bundle's
gallery, offline (no server; the index's writer lock refuses it while a server writes it — use
``POST /v1/admin/import`` then).

SOURCE is a folder with vectors.npy ([N, D] floats in the gallery's space, as /v1/embeddings
answers), ids.txt (one id per line) or ids.npy, and optionally metadata.jsonl (one JSON document
per line); or one .npz with the arrays vectors, ids and optionally metadata; or one .parquet with
the columns id, vector (a list of floats) and optionally metadata (JSON text; needs the parquet
extra). Rows are checked as the API checks them; a refused row is skipped and counted. Items
loaded this way keep no input image: a rollout lists them as needing re-upload."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from export.manifest import BundleIntegrityError, bundle_id, load_verified
from service.collection import IndexMismatch, StorageError, WriterLockHeld, open_index
from service.collection.bulk import BATCH, Counts, batches, write
from service.collection.vector_sources import SourceError, open_source
from service.settings import Settings


def bulk_import(
    bundle: Path,
    source: Path,
    data_dir: Path,
    batch_size: int = BATCH,
    resume: bool = False,
    settings: Settings | None = None,
    progress: bool = True,
) -> Counts:
    """Load ``source`` into ``bundle``'s gallery in ``data_dir``; the counts."""
    settings = settings or Settings()
    manifest = load_verified(bundle)
    rows = open_source(source, dim=manifest.model.dim)  # refused before the index opens
    try:
        index = open_index(settings.model_copy(update={"data_dir": data_dir}), manifest,
                           bundle_id(bundle), background=False)  # fmt: skip
        counts = Counts()
        try:
            write(index, batches(rows, manifest.model.dim, settings, counts, batch_size),
                  len(rows), counts, "bulk import", resume, progress)  # fmt: skip
        finally:
            index.close()
    finally:
        rows.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sdssl-import",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog=__doc__.split("\n\n")[1],
    )
    parser.add_argument("bundle", type=Path, help="bundle directory")
    parser.add_argument(
        "source", type=Path, help="a folder with vectors.npy, an .npz or a .parquet"
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="default: SDSSL_DATA_DIR")
    parser.add_argument("--batch-size", type=int, default=BATCH, help=f"default {BATCH}")
    parser.add_argument("--resume", action="store_true",
                        help="skip ids already stored (go on after an interruption) instead of "
                        "replacing them")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    settings = Settings()
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        counts = bulk_import(args.bundle, args.source, args.data_dir or settings.data_dir,
                             args.batch_size, args.resume, settings, not args.quiet)  # fmt: skip
    except BundleIntegrityError as exc:
        print(f"error: {args.bundle}: {exc}", file=sys.stderr)
        return 2
    except (SourceError, IndexMismatch, WriterLockHeld, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"imported {counts.imported}, already present {counts.skipped_existing}, "
          f"refused {counts.refused}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
