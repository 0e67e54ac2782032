"""``python -m service.restore``: put a snapshot (POST /v1/admin/snapshot) back into a data dir.

Each bundle's folder must not be written by a server at that moment (its writer lock says so)
and must hold no items unless ``--force`` — all are checked before any is replaced; FAISS indexes
are rebuilt from the restored SQLite when the server next opens a folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.index import WriterLockHeld
from service.settings import Settings
from service.snapshots import SnapshotError, restore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.restore", description=__doc__.split("\n\n")[0].split(": ", 1)[1]
    )
    parser.add_argument("snapshot", type=Path, help="a snapshot's .tar file")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: SDSSL_DATA_DIR")
    parser.add_argument("--force", action="store_true", help="replace the items already there")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or Settings().data_dir
    try:
        done = restore(args.snapshot, data_dir, force=args.force)
    except (SnapshotError, WriterLockHeld) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for bid, items in done.bundles.items():
        print(f"restored {items} items of bundle {bid[:12]} into {done.path / bid}")
    print(f"{len(done.bundles)} bundle(s) in {done.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
