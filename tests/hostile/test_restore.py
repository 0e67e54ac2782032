"""Case 7 of issue #29: restore trusted the archive — any compression (a 1 MiB tar.gz wrote
902 MiB before it was refused), no free-space check, a database carrying a trigger accepted (it
later deleted an acknowledged item), a malformed snapshot.json answered with a traceback. Now
every refusal is one line, exit 2, and leaves the data dir exactly as it was."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from export.manifest import bundle_id
from tests.hostile.conftest import fill, tree
from tests.service.conftest import digit_png
from tests.service.server import Server

ROOT = Path(__file__).resolve().parents[2]
KEY = "restore-admin"


@pytest.fixture(scope="module")
def made(tiny_bundle, tmp_path_factory):
    """A real snapshot (downloaded from a server) of 30 items, and a data dir holding 5 other
    items of the same bundle that every refused restore must leave as it was."""
    root = tmp_path_factory.mktemp("hostile-restore")
    with Server(tiny_bundle, root / "src", root / "log", api_key=KEY) as s, s.client() as c:
        for i in range(3):
            ids = [f"s-{i}-{j}" for j in range(10)]
            files = [
                ("images", (f"{j}.png", digit_png(10 * i + j), "image/png")) for j in range(10)
            ]
            r = c.post("/v1/items", files=files, data={"ids": ids}, headers={"X-API-Key": KEY})
            assert r.status_code == 200
        snap = c.post("/v1/admin/snapshot", headers={"X-API-Key": KEY}).json()
        tar = c.get(f"/v1/admin/snapshots/{snap['name']}", headers={"X-API-Key": KEY}).content
    (root / "good.tar").write_bytes(tar)
    fill(tiny_bundle, root / "target", 5)
    return root, bundle_id(tiny_bundle)


def restore(snapshot: Path, data_dir: Path, *extra: str, env: dict | None = None):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SDSSL_")}
    return subprocess.run([sys.executable, "-m", "service.lifecycle.restore", str(snapshot),
                           "--data-dir",
                           str(data_dir), *extra], cwd=ROOT, capture_output=True, text=True,
                          env={**clean, **(env or {})}, timeout=120)  # fmt: skip


def members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def write_tar(path: Path, files: dict[str, bytes], sizes: dict[str, int] | None = None) -> Path:
    """A tar of ``files``; ``sizes`` overrides what a member's header declares."""
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = (sizes or {}).get(name, len(data))
            tar.addfile(info, io.BytesIO(data.ljust(info.size, b"\0")[: info.size]))
    return path


def with_database(good: dict[str, bytes], bid: str, change, tmp: Path) -> dict[str, bytes]:
    """The snapshot's files with its database changed by ``change(db)`` and the manifest's
    size and hash updated to match (an attacker who knows the format)."""
    db_path = tmp / "edit.sqlite"
    db_path.write_bytes(good[f"{bid}/items.sqlite"])
    db = sqlite3.connect(db_path)
    change(db)
    db.commit()
    db.close()
    data = db_path.read_bytes()
    info = json.loads(good["snapshot.json"])
    info["files"][f"{bid}/items.sqlite"] = {"bytes": len(data),
                                            "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    return {**good, "snapshot.json": json.dumps(info).encode(), f"{bid}/items.sqlite": data}


class Zeros(io.RawIOBase):
    """``n`` zero bytes, read without holding them."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def refused(made, snapshot: Path, why: str, env: dict | None = None) -> None:
    root, _ = made
    target = root / "target"
    before = tree(target)
    res = restore(snapshot, target, "--force", env=env)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr[-3000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr
    assert why in lines[0], lines[0]
    assert tree(target) == before, "the refused restore changed the data dir"
    assert not (root / "fresh").exists() or tree(root / "fresh") == {}


def test_compressed_archives_are_refused_before_anything_is_written(made, tmp_path) -> None:
    root, bid = made
    good = (root / "good.tar").read_bytes()
    gz = tmp_path / "good.tar.gz"
    gz.write_bytes(gzip.compress(good))
    refused(made, gz, "gzip-compressed")
    # a bomb: 1 MiB of gzip that expands to a gigabyte, named like our archive
    bomb = tmp_path / "bomb.tar"
    with gzip.open(bomb, "wb", compresslevel=9) as fh, tarfile.open(fileobj=fh, mode="w|") as tar:
        info = tarfile.TarInfo(f"{bid}/items.sqlite")
        info.size = 2**30
        tar.addfile(info, Zeros(info.size))
    assert bomb.stat().st_size < 2 * 2**20
    refused(made, bomb, "gzip-compressed")


def test_sizes_must_match_the_manifest_and_the_archive(made, tmp_path) -> None:
    root, bid = made
    good = members(root / "good.tar")
    info = json.loads(good["snapshot.json"])
    lying = dict(info, files={k: dict(v, bytes=v["bytes"] + 1) for k, v in info["files"].items()})
    files = {**good, "snapshot.json": json.dumps(lying).encode()}
    refused(made, write_tar(tmp_path / "lying.tar", files), "says")
    # a header that claims more than the file holds
    path = write_tar(tmp_path / "short.tar", good)
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    refused(made, cut, "")
    extra = {**good, f"{bid}/notes.txt": b"hello"}
    refused(made, write_tar(tmp_path / "extra.tar", extra), "not what its snapshot.json lists")


def test_free_space_is_checked_before_writing(made) -> None:
    root, _ = made
    refused(made, root / "good.tar", "SDSSL_MIN_FREE_BYTES",
            env={"SDSSL_MIN_FREE_BYTES": str(2**60)})  # fmt: skip


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (
            lambda db: db.execute(
                "CREATE TRIGGER eat AFTER INSERT ON log BEGIN DELETE FROM items "
                "WHERE id = 's-0-0'; END"
            ),
            "trigger eat",
        ),
        (lambda db: db.execute("CREATE VIEW v AS SELECT * FROM items"), "view v"),
        (lambda db: db.execute("CREATE TABLE extra (x)"), "table extra"),
        (lambda db: db.execute("CREATE INDEX by_meta ON items (metadata)"), "index by_meta"),
        (  # a number no vectors-file row can have
            lambda db: db.execute("UPDATE items SET num_id = -5 WHERE num_id = 3"),
            "without a positive number",
        ),
        (
            lambda db: db.execute("UPDATE items SET metadata = '{not json' WHERE num_id = 2"),
            "metadata that is not JSON",
        ),
        (
            lambda db: db.execute("UPDATE meta SET value = 'f' || value WHERE key = 'bundle_id'"),
            "another bundle",
        ),
        (  # every later add would collide with an existing item number
            lambda db: db.execute("UPDATE meta SET value = '2' WHERE key = 'next_num_id'"),
            "past the next one",
        ),
        (
            lambda db: db.execute("UPDATE meta SET value = 'x' WHERE key = 'next_num_id'"),
            "not a number",
        ),
        (
            lambda db: db.execute("UPDATE items SET created_at = 'yesterday' WHERE num_id = 4"),
            "without a time",
        ),
        (  # isdigit() takes it; int() and SQLite do not
            lambda db: db.execute("UPDATE meta SET value = '²' WHERE key = 'next_num_id'"),
            "not a number",
        ),
        (  # past SQLite's 64-bit integers: every later add would overflow
            lambda db: db.execute(
                "UPDATE meta SET value = '99999999999999999999' WHERE key = 'next_num_id'"
            ),
            "not a number",
        ),
        (
            lambda db: db.execute("INSERT OR REPLACE INTO meta VALUES ('snapshot_seq', 'zz')"),
            "not a number",
        ),
    ],
    ids=[
        "trigger",
        "view",
        "table",
        "index",
        "num-id-negative",
        "bad-json",
        "owner",
        "next-id",
        "next-id-text",
        "created-at",
        "next-id-superscript",
        "next-id-past-int64",
        "snapshot-seq-text",
    ],
)
def test_a_database_that_is_not_exactly_ours_is_refused(made, tmp_path, change, why) -> None:
    root, bid = made
    files = with_database(members(root / "good.tar"), bid, change, tmp_path)
    refused(made, write_tar(tmp_path / "evil.tar", files), why)


@pytest.mark.parametrize(
    ("cut", "why"), [(64, "its items need"), (1, "not whole rows")], ids=["a-row-short", "odd"]
)
def test_a_vectors_file_short_of_its_items_is_refused(made, tmp_path, cut, why) -> None:
    """The vectors file must hold a row for every item of its database (its manifest entry
    updated to match, as an attacker who knows the format would)."""
    root, bid = made
    good = members(root / "good.tar")
    name = f"{bid}/vectors.f16"
    data = good[name][:-cut]
    info = json.loads(good["snapshot.json"])
    info["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    files = {**good, "snapshot.json": json.dumps(info).encode(), name: data}
    refused(made, write_tar(tmp_path / "short.tar", files), why)


@pytest.mark.parametrize(
    "info",
    [b"[]", b"{", b'{"format": 3}', b'{"format": 2, "bundles": [1, 2]}',
     b'{"format": 2, "bundles": {"x": {"y": 1}}}', b'{"format": "3"}', b"\xff\xfe",
     b'{"format": 3, "schema_version": 1, "created_at": 0, "bundles": {}, "files": {"a": 1}}',
     b'{"format": 3, "schema_version": 9, "created_at": 0, "bundles": {}, "files": {}}',
     b'{"format": 2, "bundles": 5}', b'{"format": 1, "bundle_id": ["x"]}'],
    ids=["list", "cut", "no-fields", "bundles-list", "bundles-nested", "format-text", "binary",
         "files-wrong", "schema-9", "bundles-int", "bundle-id-list"],
)  # fmt: skip
def test_a_malformed_manifest_is_one_line_not_a_traceback(made, tmp_path, info) -> None:
    root, bid = made
    good = members(root / "good.tar")
    files = {"snapshot.json": info, f"{bid}/items.sqlite": good[f"{bid}/items.sqlite"]}
    refused(made, write_tar(tmp_path / "bad.tar", files), "")


def test_the_good_snapshot_restores_into_a_fresh_dir(made) -> None:
    """The checks refuse only what they should: the server's own snapshot restores."""
    root, bid = made
    res = restore(root / "good.tar", root / "fresh-ok")
    assert res.returncode == 0, res.stderr
    db = sqlite3.connect(root / "fresh-ok" / bid / "items.sqlite")
    assert db.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 30
    db.close()
    shutil.rmtree(root / "fresh-ok")


def test_a_refused_restore_into_a_new_dir_leaves_nothing(made, tmp_path) -> None:
    root, bid = made
    files = with_database(members(root / "good.tar"), bid,
                          lambda db: db.execute("CREATE VIEW v AS SELECT 1"), tmp_path)  # fmt: skip
    res = restore(write_tar(tmp_path / "evil.tar", files), tmp_path / "new-dir")
    assert res.returncode == 2 and not (tmp_path / "new-dir").exists()
