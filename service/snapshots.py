"""Snapshots of a bundle's index folder, and their restore.

A snapshot is one tar file: ``snapshot.json`` (bundle id, item count, when) and
``items.sqlite`` — SQLite is the truth; FAISS is rebuilt from it when the restored folder is
first opened. The copy is SQLite's ``VACUUM INTO`` on a connection of its own: one read
transaction in WAL mode, so writers are never blocked and the copy holds exactly what was
committed when it began (every item acknowledged before the snapshot was asked for).
"""

from __future__ import annotations

import json
import os
import sqlite3
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from service.index.lock import WriterLock
from service.index.storage import fsync_rename
from service.index.store import DATABASE

INFO = "snapshot.json"
FORMAT = 1


class SnapshotError(ValueError):
    """A snapshot that cannot be made or restored (one-line reason)."""


@dataclass(frozen=True)
class Snapshot:
    path: Path
    bundle_id: str
    items: int
    bytes: int
    seconds: float


def create(folder: Path, bundle_id: str, out_dir: Path) -> Snapshot:
    """Snapshot the index folder of ``bundle_id`` into ``out_dir/<id12>-<UTC time>.tar``."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = out_dir / f"{bundle_id[:12]}-{stamp}.tar"
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".snapshot-") as tmp:
        copy = Path(tmp) / DATABASE
        source = sqlite3.connect(f"file:{folder / DATABASE}?mode=ro", uri=True)
        try:
            source.execute("VACUUM INTO ?", (str(copy),))
        finally:
            source.close()
        items = _count(copy)  # of the copy: writers may have committed since
        info = {"format": FORMAT, "bundle_id": bundle_id, "items": items,
                "created_at": time.time()}  # fmt: skip
        (Path(tmp) / INFO).write_text(json.dumps(info))
        partial = Path(tmp) / "snapshot.tar"
        with tarfile.open(partial, "w") as tar:
            tar.add(Path(tmp) / INFO, INFO)
            tar.add(copy, DATABASE)
        fsync_rename(partial, path)
    return Snapshot(path, bundle_id, items, path.stat().st_size, time.perf_counter() - started)


def restore(snapshot: Path, data_dir: Path, force: bool = False) -> Snapshot:
    """Put a snapshot's database in ``data_dir/<bundle id>/``, refusing a folder that a server
    writes or that holds items (unless ``force``). FAISS is rebuilt when it is next opened."""
    started = time.perf_counter()
    try:
        tar = tarfile.open(snapshot)  # noqa: SIM115 - closed by the with below
    except (OSError, tarfile.TarError) as exc:
        raise SnapshotError(f"{snapshot.name} is not a snapshot: {exc}") from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    with tar, tempfile.TemporaryDirectory(prefix=".restore-", dir=data_dir) as tmp:
        names = {m.name: m for m in tar.getmembers()}
        if set(names) != {INFO, DATABASE} or not all(m.isfile() for m in names.values()):
            raise SnapshotError(f"{snapshot.name} holds {sorted(names)}, not a snapshot")
        tar.extractall(tmp, filter="data")
        info = json.loads((Path(tmp) / INFO).read_text())
        if info.get("format") != FORMAT or not isinstance(info.get("bundle_id"), str):
            raise SnapshotError(f"{snapshot.name}: unknown snapshot format")
        db = sqlite3.connect(Path(tmp) / DATABASE)
        try:
            if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise SnapshotError(f"{snapshot.name}: the database fails its integrity check")
        finally:
            db.close()
        items = _count(Path(tmp) / DATABASE)
        bid = info["bundle_id"]
        folder = data_dir / bid
        folder.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(folder).acquire()  # refuses while a server writes this folder
        try:
            target = folder / DATABASE
            if target.exists() and not force:
                held = _count(target)
                if held:
                    raise SnapshotError(f"{folder.name[:12]} already holds {held} items "
                                        "(restore with --force to replace them)")  # fmt: skip
            for old in [*folder.glob("index_d*.faiss"), folder / "snapshot.json",
                        folder / f"{DATABASE}-wal", folder / f"{DATABASE}-shm"]:  # fmt: skip
                old.unlink(missing_ok=True)
            fsync_rename(Path(tmp) / DATABASE, target)
            os.sync()
        finally:
            lock.release()
    return Snapshot(folder, bid, items, target.stat().st_size, time.perf_counter() - started)


def _count(database: Path) -> int:
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    finally:
        db.close()
