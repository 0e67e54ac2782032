"""Snapshots of bundle folders, and their restore.

A snapshot is one uncompressed tar file: ``snapshot.json`` (its manifest: format, the store's
schema version, bundle ids with item counts, and every other file with its size and sha256) and
``<bundle id>/items.sqlite`` and ``<bundle id>/vectors.f16`` per bundle (the served one, or
every bundle of the data dir) — SQLite and the vectors file are the truth (items, kept inputs;
vectors); FAISS is rebuilt from them when a restored folder is first opened. The copy is
SQLite's ``VACUUM INTO`` on a connection of its own: one read transaction in WAL mode, so writers
are never blocked and the copy holds exactly what was committed when it began (every item
acknowledged before the snapshot was asked for); then the vectors file's rows up to the copy's
newest item, which were durable before that item's commit.

Restore trusts nothing in the archive: it takes only this format (no compression, no member the
manifest does not list, sizes as declared — so nothing expands past the archive's own size),
checks free space (``SDSSL_MIN_FREE_BYTES``) before writing, writes at most the declared bytes
of each file and checks its hash, and takes a database only with exactly our schema (no
triggers, no views) and rows the server can read, and a vectors file only with a row for each
of its items. Every check is made before the data dir is
touched: a refusal leaves it as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.collection.lock import WriterLock
from service.collection.storage import fsync_rename
from service.collection.store import (
    DATABASE,
    SCHEMA_VERSION,
    foreign_database_problem,
    vectors_file_problem,
)
from service.collection.vector_file import VECTORS
from service.errors import StorageError

INFO = "snapshot.json"
FORMAT = 3  # 2: no file list (sizes from the tar headers); 1: one bundle, its database at the top
MAX_INFO_BYTES = 2**20
BUNDLE_ID = re.compile(r"^[0-9a-f]{64}$")
NAME = re.compile(r"^(?:[0-9a-f]{12}|all)-\d{8}T\d{6}(?:\d{3})?Z(?:-\d+)?\.tar$")  # ms: since #29
COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"(\xb5/\xfd": "zstd"}
CHUNK = 2**20
_naming = threading.Lock()
Layout = dict[str, dict[str, tuple[str, str | None]]]  # bundle -> file -> (member, sha256|None)


class SnapshotError(ValueError):
    """A snapshot that cannot be made or restored (one-line reason)."""


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bytes: int = Field(ge=0)
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class Manifest(BaseModel):
    """``snapshot.json``: what the archive must hold, exactly."""

    model_config = ConfigDict(extra="forbid")
    format: Literal[3]
    schema_version: int
    created_at: float
    bundles: dict[str, int]
    files: dict[str, FileEntry]


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


def _free(path: Path) -> int:
    fs = os.statvfs(path)
    return fs.f_bavail * fs.f_frsize


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


# ---- making ------------------------------------------------------------------------------------
def create(
    folders: dict[str, Path], out_dir: Path, label: str, min_free_bytes: int = 0, keep: int = 0
) -> Snapshot:
    """Snapshot the databases of ``folders`` (bundle id → folder) into
    ``out_dir/<label>-<UTC time, ms>Z.tar``; then remove the oldest beyond ``keep`` (0: keep
    all). StorageError (507) when the copies would leave less than ``min_free_bytes`` free."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    need = 2 * sum(
        (f / name).stat().st_size
        for f in folders.values()
        for name in (DATABASE, f"{DATABASE}-wal", VECTORS)
        if (f / name).exists()
    )  # the copies, then the tar of them
    if (free := _free(out_dir)) - need < min_free_bytes:
        raise StorageError(
            f"a snapshot needs about {need >> 20} MiB and the data dir has {free >> 20} MiB free; "
            f"{min_free_bytes >> 20} MiB must stay free (SDSSL_MIN_FREE_BYTES)",
            full=True,
        )
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".snapshot-") as tmp:
        counts, files = {}, {}
        for bid, folder in folders.items():
            copy = Path(tmp) / bid / DATABASE
            copy.parent.mkdir()
            source = sqlite3.connect(f"file:{folder / DATABASE}?mode=ro", uri=True)
            try:
                source.execute("VACUUM INTO ?", (str(copy),))
            finally:
                source.close()
            counts[bid] = _count(copy)  # of the copy: writers may have committed since
            files[f"{bid}/{DATABASE}"] = {"bytes": copy.stat().st_size, "sha256": _sha256(copy)}
            rows = Path(tmp) / bid / VECTORS
            _copy_rows(folder / VECTORS, rows, _rows_needed(copy))
            files[f"{bid}/{VECTORS}"] = {"bytes": rows.stat().st_size, "sha256": _sha256(rows)}
        info = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "created_at": time.time(),
                "bundles": counts, "files": files}  # fmt: skip
        (Path(tmp) / INFO).write_text(json.dumps(info))
        partial = Path(tmp) / "snapshot.tar"
        with tarfile.open(partial, "w") as tar:
            tar.add(Path(tmp) / INFO, INFO)
            for member in files:
                tar.add(Path(tmp) / member, member)
        path = _place(partial, out_dir, label)
    if keep:
        prune(out_dir, keep)
    return Snapshot(path, counts, path.stat().st_size, time.perf_counter() - started)


def _rows_needed(database: Path) -> int:
    """Bytes of the vectors file that a database copy's items reach."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        dim = int(db.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()[0])
        newest = db.execute("SELECT COALESCE(MAX(num_id), 0) FROM items").fetchone()[0]
        return newest * 2 * dim
    finally:
        db.close()


def _copy_rows(source: Path, out: Path, size: int) -> None:
    """The first ``size`` bytes of a vectors file (rows past the copy's items are left out)."""
    if size and not source.is_file():
        raise SnapshotError(f"{source.parent.name[:12]} has items but no vectors file (a folder "
                            "of an older server?)")  # fmt: skip
    with open(out, "wb") as dst:
        if size:
            with open(source, "rb") as src:
                left = size
                while left and (block := src.read(min(CHUNK * 16, left))):
                    dst.write(block)
                    left -= len(block)
            if left:
                raise SnapshotError(f"{source.parent.name[:12]}'s vectors file is shorter than "
                                    "its items need")  # fmt: skip


def _place(partial: Path, out_dir: Path, label: str) -> Path:
    """Move the finished tar to a name no other snapshot has (two in one millisecond, or one
    second, get ``-2``, ``-3`` …)."""
    fd = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"
    with _naming:
        for n in range(1, 1000):
            path = out_dir / f"{label}-{stamp}{'' if n == 1 else f'-{n}'}.tar"
            try:
                os.link(partial, path)  # fails if the name is taken, by us or another process
                break
            except FileExistsError:
                continue
        else:
            raise SnapshotError("no free snapshot name")
    fsync_rename(partial, path)  # the same file: makes the new name durable
    return path


def listing(out_dir: Path) -> list[Path]:
    """The snapshots in ``out_dir``, oldest first."""
    if not out_dir.is_dir():
        return []
    found = []
    for p in out_dir.iterdir():
        if NAME.match(p.name):
            with contextlib.suppress(FileNotFoundError):
                found.append((p.stat().st_mtime, p.name, p))
    return [p for _, _, p in sorted(found)]


def described(out_dir: Path) -> list[dict]:
    """``{name, bytes, created_at}`` of each snapshot, oldest first (one removed meanwhile is
    left out)."""
    out = []
    for p in listing(out_dir):
        with contextlib.suppress(FileNotFoundError):
            st = p.stat()
            out.append({"name": p.name, "bytes": st.st_size, "created_at": st.st_mtime})
    return out


def prune(out_dir: Path, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` snapshots; the names removed."""
    old = listing(out_dir)[:-keep] if keep else []
    for p in old:
        p.unlink(missing_ok=True)
    return [p.name for p in old]


# ---- restoring ---------------------------------------------------------------------------------
def restore(
    snapshot: Path, data_dir: Path, force: bool = False, min_free_bytes: int = 0
) -> Snapshot:
    """Put a snapshot's databases in ``data_dir/<bundle id>/``. Every check — the archive, its
    manifest, free space, each database — is made, and every folder locked (refused while a
    server writes it) and checked for items (refused unless ``force``), before any file of the
    data dir is replaced; a refusal leaves the data dir as it was. FAISS is rebuilt when each
    folder is next opened."""
    started = time.perf_counter()
    made_dir = not data_dir.exists()
    try:
        with _open(snapshot) as tar:
            members, layout = _read_manifest(tar, snapshot.name)
            total = sum(m.size for m in members.values())
            if made_dir:
                data_dir.mkdir(parents=True)
            if (free := _free(data_dir)) - total < min_free_bytes:
                raise SnapshotError(
                    f"{snapshot.name} needs {total >> 20} MiB and the data dir has "
                    f"{free >> 20} MiB free; {min_free_bytes >> 20} MiB must stay free "
                    "(SDSSL_MIN_FREE_BYTES)"
                )
            with tempfile.TemporaryDirectory(prefix=".restore-", dir=data_dir) as tmp:
                databases = {}
                for bid, parts in layout.items():
                    out = {}
                    for file, (name, sha) in parts.items():
                        out[file] = Path(tmp) / bid / file
                        _extract(tar, members[name], out[file], sha, snapshot.name)
                    _check_database(out[DATABASE], bid, snapshot.name)
                    _check_vectors(out[DATABASE], out.get(VECTORS), bid, snapshot.name)
                    databases[bid] = out
                _put_in_place(databases, data_dir, force)
    except BaseException:
        if made_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    counts = {bid: _count(data_dir / bid / DATABASE) for bid in databases}
    size = sum((data_dir / bid / DATABASE).stat().st_size for bid in databases)
    return Snapshot(data_dir, counts, size, time.perf_counter() - started)


@contextlib.contextmanager
def _open(snapshot: Path):  # type: ignore[no-untyped-def]
    """The archive, uncompressed tar only."""
    try:
        with open(snapshot, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise SnapshotError(f"cannot read {snapshot.name}: {exc.strerror}") from exc
    for magic, kind in COMPRESSED.items():
        if head.startswith(magic):
            raise SnapshotError(f"{snapshot.name} is {kind}-compressed: restore the .tar as "
                                "the server made it")  # fmt: skip
    try:
        tar = tarfile.open(snapshot, "r:")  # noqa: SIM115 - closed by the with below
    except (OSError, tarfile.TarError) as exc:
        raise SnapshotError(f"{snapshot.name} is not a snapshot (not a tar file)") from exc
    with tar:
        yield tar


def _read_manifest(tar: tarfile.TarFile, name: str) -> tuple[dict[str, tarfile.TarInfo], Layout]:
    """The archive's members, checked against its manifest, and bundle id → (member, sha256)."""
    try:
        members = {m.name: m for m in tar.getmembers()}
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SnapshotError(f"{name} is damaged: {exc}") from exc
    info = members.get(INFO)
    if info is None or not all(m.isfile() for m in members.values()):
        listed = ", ".join(sorted(members)[:5])[:200]
        raise SnapshotError(f"{name} holds {listed or 'nothing'}, not a snapshot")
    if info.size > MAX_INFO_BYTES:
        raise SnapshotError(f"{name}: {INFO} is {info.size} bytes (at most {MAX_INFO_BYTES})")
    raw = tar.extractfile(info).read()  # type: ignore[union-attr]
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{name}: {INFO} is not JSON") from exc
    layout, declared = _layout(doc, name)
    if not all(BUNDLE_ID.match(b) for b in layout):
        raise SnapshotError(f"{name}: its bundle ids are not bundle ids")
    if set(members) != {INFO, *declared}:
        raise SnapshotError(f"{name} holds {', '.join(sorted(members)[:5])[:200]}, not what its "
                            f"{INFO} lists")  # fmt: skip
    for member, size in declared.items():
        if size is not None and members[member].size != size:
            raise SnapshotError(f"{name}: {member} is {members[member].size} bytes, its "
                                f"{INFO} says {size}")  # fmt: skip
    if (total := sum(m.size for m in members.values())) > os.fstat(tar.fileobj.fileno()).st_size:
        raise SnapshotError(f"{name} declares {total} bytes, more than the archive holds")
    return members, layout


def _layout(
    doc: object, name: str
) -> tuple[dict[str, tuple[str, str | None]], dict[str, int | None]]:
    """bundle id → (member, sha256 or None), and member → declared size (None: older formats,
    whose sizes are the tar headers')."""
    if not isinstance(doc, dict):
        raise SnapshotError(f"{name}: {INFO} is not an object")
    if doc.get("format") in (1, 2):
        listed = [doc.get("bundle_id")] if doc["format"] == 1 else doc.get("bundles")
        if not isinstance(listed, list | dict) or not all(isinstance(b, str) for b in listed):
            raise SnapshotError(f"{name}: {INFO} does not list its bundles")
        bundles = {b: DATABASE if doc["format"] == 1 else f"{b}/{DATABASE}" for b in listed}
        return ({b: {DATABASE: (m, None)} for b, m in bundles.items()},
                dict.fromkeys(bundles.values()))  # fmt: skip
    try:
        manifest = Manifest.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"]))
        raise SnapshotError(f"{name}: {INFO} is not a snapshot manifest ({where}: "
                            f"{err['msg']})"[:300]) from None  # fmt: skip
    if manifest.schema_version != SCHEMA_VERSION:
        raise SnapshotError(f"{name} holds schema version {manifest.schema_version}; this server "
                            f"restores version {SCHEMA_VERSION}")  # fmt: skip
    layout: Layout = {}
    for bid in manifest.bundles:
        layout[bid] = {}
        for file, what in ((DATABASE, "database"), (VECTORS, "vectors")):
            entry = manifest.files.get(f"{bid}/{file}")
            if entry is None or entry.sha256 is None:
                raise SnapshotError(f"{name}: {INFO} lists no {what} file for bundle {bid[:12]}")
            layout[bid][file] = (f"{bid}/{file}", entry.sha256)
    return layout, {m: e.bytes for m, e in manifest.files.items()}


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, out: Path, sha: str | None,
             name: str) -> None:  # fmt: skip
    """Write exactly the member's declared bytes to ``out`` and check its hash."""
    out.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    digest, left = hashlib.sha256(), member.size
    with source, open(out, "wb") as fh:  # type: ignore[union-attr]
        while left > 0 and (block := source.read(min(CHUNK, left))):  # type: ignore[union-attr]
            digest.update(block)
            fh.write(block)
            left -= len(block)
    if left:
        raise SnapshotError(f"{name}: {member.name} is cut short")
    if sha is not None and digest.hexdigest() != sha:
        raise SnapshotError(f"{name}: {member.name} does not match its sha256 in {INFO}")


def _check_database(path: Path, bid: str, name: str) -> None:
    """SQLite's integrity check, then our schema and rows (:func:`foreign_database_problem`)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise SnapshotError(f"{name}: {bid[:12]}'s file is not a database") from exc
    try:
        db.execute("PRAGMA trusted_schema = OFF")
        if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise SnapshotError(f"{name}: {bid[:12]}'s database fails its integrity check")
        problem = foreign_database_problem(db, bid)
    except sqlite3.DatabaseError as exc:
        raise SnapshotError(f"{name}: {bid[:12]}'s file is not a database we can read") from exc
    finally:
        db.close()
    if problem is not None:
        raise SnapshotError(f"{name}: {bid[:12]}'s database is refused: {problem}")


def _check_vectors(database: Path, vectors: Path | None, bid: str, name: str) -> None:
    """A vectors file with a row for every item of its (checked) database."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        size = vectors.stat().st_size if vectors is not None else 0
        problem = vectors_file_problem(db, size)
    finally:
        db.close()
    if problem is not None:
        raise SnapshotError(f"{name}: {bid[:12]} is refused: {problem}")


def _put_in_place(databases: dict[str, dict[str, Path]], data_dir: Path, force: bool) -> None:
    """Check every folder (no items there unless ``force``), lock each (refused while a server
    writes it) and check again; only then replace. A refusal leaves the folders as they were."""

    def check(folder: Path) -> None:
        target = folder / DATABASE
        if target.exists() and not force and (held := _count(target)):
            raise SnapshotError(f"{folder.name[:12]} already holds {held} items "
                                "(restore with --force to replace them)")  # fmt: skip

    for bid in databases:  # before anything is written, even a lock's holder record
        check(data_dir / bid)
    locks, made = [], []
    try:
        for bid in databases:
            folder = data_dir / bid
            if not folder.exists():
                folder.mkdir()
                made.append(folder)
            locks.append(WriterLock(folder).acquire())
            check(folder)  # a server may have written it meanwhile
        for bid, files in databases.items():
            folder = data_dir / bid
            for old in [*folder.glob("index*.faiss"), folder / "snapshot.json",
                        folder / f"{DATABASE}-wal", folder / f"{DATABASE}-shm"]:  # fmt: skip
                old.unlink(missing_ok=True)
            if VECTORS in files:  # the rows first: the database names them
                fsync_rename(files[VECTORS], folder / VECTORS)
            else:
                (folder / VECTORS).unlink(missing_ok=True)
            fsync_rename(files[DATABASE], folder / DATABASE)
        os.sync()
        made.clear()
    finally:
        for lock in locks:
            lock.release()
        for folder in made:  # refused: the folders this restore made go again
            shutil.rmtree(folder, ignore_errors=True)


def _count(database: Path) -> int:
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    finally:
        db.close()
