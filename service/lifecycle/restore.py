"""``sdssl-restore``: put a snapshot (POST /v1/admin/snapshot) back into a data dir.

The archive is checked against its own manifest (files, sizes, hashes, schema version) and
each database against our schema before anything is written; free space must stay above
``SDSSL_MIN_FREE_BYTES``. Each bundle's folder must not be written by a server at that moment
(its writer lock says so) and must hold no items unless ``--force``. Any refusal is one line on
stderr (exit 2) and leaves the data dir as it was. FAISS indexes are rebuilt from the restored
SQLite when the server next opens a folder.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from pydantic import ValidationError

from service.collection import WriterLockHeld
from service.collection.snapshots import SnapshotError, restore
from service.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sdssl-restore",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
    )
    parser.add_argument("snapshot", type=Path, help="a snapshot's .tar file")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: SDSSL_DATA_DIR")
    parser.add_argument("--force", action="store_true", help="replace the items already there")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
        data_dir = args.data_dir or settings.data_dir
        done = restore(args.snapshot, data_dir, args.force, settings.min_free_bytes)
    except (SnapshotError, WriterLockHeld) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"error: settings: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error) as exc:
        print(f"error: cannot restore {args.snapshot.name}: {type(exc).__name__}: {exc}",
              file=sys.stderr)  # fmt: skip
        return 2
    for bid, items in done.bundles.items():
        print(f"restored {items} items of bundle {bid[:12]} into {done.path / bid}")
    print(f"{len(done.bundles)} bundle(s) in {done.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
