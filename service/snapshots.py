"""Snapshots of a bundle's index folder, and their restore.

A snapshot is one tar file: ``snapshot.json`` (bundle ids, item counts, when) and
``<bundle id>/items.sqlite`` per bundle (the served one, or every bundle of the data dir) — SQLite
is the truth (items, vectors, kept inputs); FAISS is rebuilt from it when a restored folder is
first opened. The copy is SQLite's ``VACUUM INTO`` on a connection of its own: one read
transaction in WAL mode, so writers are never blocked and the copy holds exactly what was
committed when it began (every item acknowledged before the snapshot was asked for).
"""

from __future__ import annotations

import json
import os
import re
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
FORMAT = 2  # 1: one bundle, its database at the top (read too)
BUNDLE_ID = re.compile(r"^[0-9a-f]{64}$")


class SnapshotError(ValueError):
    """A snapshot that cannot be made or restored (one-line reason)."""


@dataclass(frozen=True)
class Snapshot:
    path: Path
    bundles: dict[str, int]  # bundle id -> items
    bytes: int
    seconds: float

    @property
    def items(self) -> int:
        return sum(self.bundles.values())


def bundle_folders(data_dir: Path) -> dict[str, Path]:
    """Every bundle folder of a data dir that holds a database."""
    return {p.name: p for p in sorted(data_dir.iterdir())
            if BUNDLE_ID.match(p.name) and (p / DATABASE).is_file()}  # fmt: skip


def create(folders: dict[str, Path], out_dir: Path, label: str) -> Snapshot:
    """Snapshot the databases of ``folders`` (bundle id → folder) into
    ``out_dir/<label>-<UTC time>.tar``."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = out_dir / f"{label}-{stamp}.tar"
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".snapshot-") as tmp:
        counts = {}
        for bid, folder in folders.items():
            copy = Path(tmp) / bid / DATABASE
            copy.parent.mkdir()
            source = sqlite3.connect(f"file:{folder / DATABASE}?mode=ro", uri=True)
            try:
                source.execute("VACUUM INTO ?", (str(copy),))
            finally:
                source.close()
            counts[bid] = _count(copy)  # of the copy: writers may have committed since
        info = {"format": FORMAT, "bundles": counts, "created_at": time.time()}
        (Path(tmp) / INFO).write_text(json.dumps(info))
        partial = Path(tmp) / "snapshot.tar"
        with tarfile.open(partial, "w") as tar:
            tar.add(Path(tmp) / INFO, INFO)
            for bid in counts:
                tar.add(Path(tmp) / bid / DATABASE, f"{bid}/{DATABASE}")
        fsync_rename(partial, path)
    return Snapshot(path, counts, path.stat().st_size, time.perf_counter() - started)


def restore(snapshot: Path, data_dir: Path, force: bool = False) -> Snapshot:
    """Put a snapshot's databases in ``data_dir/<bundle id>/``, refusing (before touching any)
    folders a server writes or that hold items (unless ``force``). FAISS is rebuilt when each
    folder is next opened."""
    started = time.perf_counter()
    try:
        tar = tarfile.open(snapshot)  # noqa: SIM115 - closed by the with below
    except (OSError, tarfile.TarError) as exc:
        raise SnapshotError(f"{snapshot.name} is not a snapshot: {exc}") from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    with tar, tempfile.TemporaryDirectory(prefix=".restore-", dir=data_dir) as tmp:
        databases = _extract(tar, snapshot.name, Path(tmp))
        locks = []
        try:
            for bid in databases:  # every folder locked and checked before any is replaced
                folder = data_dir / bid
                folder.mkdir(parents=True, exist_ok=True)
                locks.append(WriterLock(folder).acquire())  # refuses while a server writes it
                target = folder / DATABASE
                if target.exists() and not force and (held := _count(target)):
                    raise SnapshotError(f"{bid[:12]} already holds {held} items "
                                        "(restore with --force to replace them)")  # fmt: skip
            for bid, db in databases.items():
                folder = data_dir / bid
                for old in [*folder.glob("index_d*.faiss"), folder / "snapshot.json",
                            folder / f"{DATABASE}-wal", folder / f"{DATABASE}-shm"]:  # fmt: skip
                    old.unlink(missing_ok=True)
                fsync_rename(db, folder / DATABASE)
            os.sync()
        finally:
            for lock in locks:
                lock.release()
    counts = {bid: _count(data_dir / bid / DATABASE) for bid in databases}
    size = sum((data_dir / bid / DATABASE).stat().st_size for bid in databases)
    return Snapshot(data_dir, counts, size, time.perf_counter() - started)


def _extract(tar: tarfile.TarFile, name: str, tmp: Path) -> dict[str, Path]:
    """The snapshot's databases (bundle id → extracted file), each integrity-checked."""
    members = {m.name: m for m in tar.getmembers()}
    if INFO not in members or not all(m.isfile() for m in members.values()):
        raise SnapshotError(f"{name} holds {sorted(members)[:5]}, not a snapshot")
    tar.extract(members[INFO], tmp, filter="data")
    try:
        info = json.loads((tmp / INFO).read_text())
        if info.get("format") == 1 and isinstance(info.get("bundle_id"), str):
            layout = {info["bundle_id"]: DATABASE}
        elif info.get("format") == FORMAT and isinstance(info.get("bundles"), dict):
            layout = {bid: f"{bid}/{DATABASE}" for bid in info["bundles"]}
        else:
            raise ValueError("unknown format")
    except ValueError as exc:
        raise SnapshotError(f"{name}: unknown snapshot format") from exc
    if not all(BUNDLE_ID.match(b) for b in layout) or set(members) != {INFO, *layout.values()}:
        raise SnapshotError(f"{name} holds {sorted(members)[:5]}, not what its info lists")
    out = {}
    for bid, member in layout.items():
        tar.extract(members[member], tmp / "db", filter="data")
        db_path = tmp / "db" / member
        db = sqlite3.connect(db_path)
        try:
            if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise SnapshotError(f"{name}: {bid[:12]}'s database fails its integrity check")
        except sqlite3.DatabaseError as exc:
            raise SnapshotError(f"{name}: {bid[:12]}'s file is not a database") from exc
        finally:
            db.close()
        out[bid] = db_path
    return out


def _count(database: Path) -> int:
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    finally:
        db.close()
