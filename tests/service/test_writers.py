"""One writer per bundle folder, and SQLite as the truth at start-up (issue #9)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from export.manifest import bundle_id
from service.collection.vector_file import VectorFile
from tests.service.conftest import digit_png
from tests.service.server import Server


def add(c, item_id: str, blob: bytes):
    return c.post("/v1/items", files=[("images", ("x.png", blob, "image/png"))],
                  data={"ids": item_id})  # fmt: skip


def search_ids(c, blob: bytes, k: int = 10) -> list[str]:
    r = c.post("/v1/search", files=[("image", ("q.png", blob, "image/png"))],
               data={"k": str(k), "exit_depth": "4"})  # fmt: skip
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["results"]]


@pytest.fixture
def serving(tiny_bundle, tmp_path):
    s = Server(tiny_bundle, tmp_path / "data", tmp_path / "a.log").start()
    with s.client() as c:
        for i in range(5):
            assert add(c, f"a-{i}", digit_png(i)).status_code == 200
    yield s
    s.stop()


def test_second_server_on_the_same_data_dir_refuses_to_start(serving, tiny_bundle, tmp_path):
    second = Server(tiny_bundle, tmp_path / "data", tmp_path / "b.log")
    with pytest.raises(RuntimeError, match="server exited"):
        second.start()
    assert second.proc.returncode == 3
    errors = [ln for ln in (tmp_path / "b.log").read_text().splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and f"pid {serving.proc.pid}" in errors[0], errors
    assert "another writer holds this bundle's index" in errors[0]
    with serving.client() as c:  # the first keeps serving, reads and writes
        assert add(c, "a-5", digit_png(5)).status_code == 200
        assert search_ids(c, digit_png(5))[0] == "a-5"


def test_reindex_of_a_served_bundle_is_refused(serving, tiny_bundle, tmp_path, repo_root):
    folder = tmp_path / "gallery"
    folder.mkdir()
    (folder / "g-0.png").write_bytes(digit_png(7))
    res = subprocess.run(
        [sys.executable, "-m", "service.lifecycle.reindex", str(tiny_bundle), str(folder),
         "--data-dir", str(tmp_path / "data"), "--quiet"],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: another writer holds"), lines
    assert f"pid {serving.proc.pid}" in lines[0]
    with serving.client() as c:
        assert [c.get(f"/v1/items/a-{i}").status_code for i in range(5)] == [200] * 5
        assert c.get("/v1/items/g-0").status_code == 404


def test_a_faiss_sqlite_mismatch_is_rebuilt_from_sqlite_at_start(tiny_bundle, tmp_path):
    s = Server(tiny_bundle, tmp_path / "data", tmp_path / "log").start()
    with s.client() as c:
        for i in range(6):
            assert add(c, f"m-{i}", digit_png(i)).status_code == 200
    s.stop()  # a clean stop: a FAISS snapshot holding all six
    # What a second writer used to leave behind: an item SQLite holds and FAISS never saw.
    folder = tmp_path / "data" / bundle_id(tiny_bundle)
    db = sqlite3.connect(folder / "items.sqlite")
    (num_id,) = db.execute("SELECT num_id FROM items WHERE id = 'm-3'").fetchone()
    rows = VectorFile(folder, 32)
    rows.write(1000, rows.read(np.array([num_id])))  # the ghost's row: m-3's vector
    rows.sync()
    rows.close()
    with db:
        db.execute("INSERT INTO items VALUES ('ghost', 1000, 'null', 0)")
        db.execute("UPDATE meta SET value = '1001' WHERE key = 'next_num_id'")
    db.close()
    s.start()
    try:
        with s.client() as c:
            assert c.get("/v1/items/ghost").status_code == 200
            assert set(search_ids(c, digit_png(3), k=2)) == {"m-3", "ghost"}
        log = (tmp_path / "log").read_text()
        assert "FAISS disagreed with SQLite" in log and "rebuilt from SQLite" in log
    finally:
        s.stop()
