"""``sdssl-reindex`` from another bundle's index folder: the way a collection moves
to a bundle a rollout cannot reach — including a folder an older server wrote, which the server
now refuses — re-embedding the kept inputs with their ids and metadata."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import numpy as np

from export.manifest import EXIT_OUTPUT, INPUT_NAME, Manifest, bundle_id
from export.parity import onnx_session
from service.inference.images import prepare
from tests.harness import ROOT
from tests.service.conftest import digit_png
from tests.service.server import Server

# The item tables every schema version has had, and version 2's vectors-in-SQLite table.
OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (id TEXT PRIMARY KEY, num_id INTEGER NOT NULL UNIQUE, metadata TEXT,
                    created_at REAL NOT NULL);
CREATE TABLE vectors (num_id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE inputs (num_id INTEGER PRIMARY KEY, png BLOB NOT NULL);
CREATE TABLE log (seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, num_id INTEGER NOT NULL);
"""


def reindex(*args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SDSSL_")}
    return subprocess.run([sys.executable, "-m", "service.lifecycle.reindex", *args, "--quiet"],
                          cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=clean)  # fmt: skip


def test_an_older_servers_folder_moves_to_a_new_bundle(tiny_bundle, tmp_path) -> None:
    old = tmp_path / "old" / ("f" * 64)
    old.mkdir(parents=True)
    db = sqlite3.connect(old / "items.sqlite")
    db.executescript(OLD_SCHEMA)
    pngs = [digit_png(i) for i in range(4)]
    for n, png in enumerate(pngs, 1):
        db.execute("INSERT INTO items VALUES (?, ?, ?, ?)",
                   (f"old-{n}", n, json.dumps({"n": n}), time.time()))  # fmt: skip
        db.execute("INSERT INTO vectors VALUES (?, ?)", (n, b"\0" * 12 * 4 * 32))
        if n != 3:  # item 3 came in without a kept input
            db.execute("INSERT INTO inputs VALUES (?, ?)", (n, png))
    db.commit()
    db.close()
    data = tmp_path / "data"
    res = reindex(str(tiny_bundle), str(old), "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    assert "indexed 3, already present 0, failed 1" in res.stdout, res.stdout
    assert "old-3: no kept input" in res.stderr
    m = Manifest.read(tiny_bundle)
    p = m.preprocess
    gallery = next(e for e in m.exits if e.exit_depth == m.bridge.gallery_depth)
    with Server(tiny_bundle, data, tmp_path / "log") as s, s.client() as c:
        for n in (1, 2, 4):
            got = c.get(f"/v1/items/old-{n}", params={"vector": "true"}).json()
            assert got["metadata"] == {"n": n}
            x = prepare(pngs[n - 1], p.resize, p.crop, p.interpolation, 10**8)[None]
            (want,) = onnx_session(tiny_bundle / gallery.file).run([EXIT_OUTPUT], {INPUT_NAME: x})
            assert float(np.dot(got["vector"], want[0])) > 0.999  # stored as float16
            assert c.get(f"/v1/items/old-{n}/input").content  # the input is kept again
        assert c.get("/v1/items/old-3").status_code == 404
    again = reindex(str(tiny_bundle), str(old), "--data-dir", str(data))
    assert "indexed 0, already present 3, failed 1" in again.stdout, again.stdout


def test_a_served_bundles_folder_moves_to_another_bundle(tiny_bundle, tiny_bundle_b, tmp_path):
    data = tmp_path / "data"
    with Server(tiny_bundle, data, tmp_path / "log") as s, s.client() as c:
        files = [("images", (f"{i}.png", digit_png(i), "image/png")) for i in range(5)]
        meta = [json.dumps({"label": str(i)}) for i in range(5)]
        r = c.post("/v1/items", files=files,
                   data={"ids": [f"a-{i}" for i in range(5)], "metadata": meta})  # fmt: skip
        assert r.status_code == 200, r.text
    source = data / bundle_id(tiny_bundle)
    res = reindex(str(tiny_bundle_b), str(source), "--data-dir", str(tmp_path / "moved"))
    assert res.returncode == 0 and "indexed 5," in res.stdout, res.stderr
    with Server(tiny_bundle_b, tmp_path / "moved", tmp_path / "log2") as s, s.client() as c:
        assert c.get("/v1/items", params={"limit": 0}).json()["count"] == 5
        assert c.get("/v1/items/a-2").json()["metadata"] == {"label": "2"}
        hit = c.post("/v1/search", files=[("image", ("q.png", digit_png(2), "image/png"))],
                     data={"k": "1"}).json()  # fmt: skip
        assert hit["results"][0]["id"] == "a-2"
