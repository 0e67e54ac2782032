"""Bulk import of precomputed vectors (``sdssl-import``): rows checked as the
API checks them, served afterwards, and durable batch by batch under kill -9."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from export.manifest import bundle_id
from service.collection import ItemIndex
from tests.service.server import Server

ROOT = Path(__file__).resolve().parents[2]
DIM = 32


def unit(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def source(folder: Path, vectors: np.ndarray, ids: list[str], metadata: list | None = None):
    folder.mkdir(parents=True)
    np.save(folder / "vectors.npy", vectors)
    (folder / "ids.txt").write_text("\n".join(ids) + "\n")
    if metadata is not None:
        (folder / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in metadata) + "\n")
    return folder


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SDSSL_")}
    return subprocess.run([sys.executable, "-m", "service.lifecycle.bulk_import", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=clean, **kw)  # fmt: skip


def test_rows_are_checked_like_the_api_then_served(tiny_bundle, tmp_path) -> None:
    v = unit(50).astype(np.float16)
    v[3] = np.nan  # refused: not finite
    v[4] = 0.0  # refused: no direction
    v[7] *= 3  # taken, normalised
    ids = [f"b-{i}" for i in range(50)]
    ids[5] = "a/b"  # refused: not an id a URL path can address
    ids[9] = "b-8"  # a repeat: the later row wins
    meta = [{"n": i} for i in range(50)]
    meta[6] = json.loads("[" * 20 + "]" * 20)  # refused: deeper than 16 levels
    src = source(tmp_path / "src", v, ids, meta)
    data = tmp_path / "data"
    res = run(str(tiny_bundle), str(src), "--data-dir", str(data), "--batch-size", "16")
    assert res.returncode == 0, res.stderr
    assert "imported 45, already present 0, refused 4" in res.stdout, res.stdout
    assert "row 3" in res.stderr and "a/b" in res.stderr and "deeper than 16" in res.stderr
    with Server(tiny_bundle, data, tmp_path / "log") as s, s.client() as c:
        assert c.get("/v1/items", params={"limit": 0}).json()["count"] == 45
        got = c.get("/v1/items/b-8", params={"vector": "true"}).json()
        assert got["metadata"] == {"n": 9}  # the later row
        want = v[9].astype(np.float32) / np.linalg.norm(v[9].astype(np.float32))
        assert np.abs(np.array(got["vector"]) - want).max() < 1e-3
        hit = c.post("/v1/search", json={"vector": (3 * v[7]).astype(float).tolist(), "k": 1})
        assert hit.json()["results"][0]["id"] == "b-7"
        assert c.get("/v1/items/b-3").status_code == 404


def test_an_npz_and_sources_that_cannot_be_read(tiny_bundle, tmp_path) -> None:
    npz = tmp_path / "rows.npz"
    np.savez(npz, vectors=unit(5), ids=np.array([f"z-{i}" for i in range(5)]),
             metadata=np.array(['{"k": 1}', "", "null", '{"k": 2}', '{"k": 3}']))  # fmt: skip
    data = tmp_path / "data"
    res = run(str(tiny_bundle), str(npz), "--data-dir", str(data), "--quiet")
    assert res.returncode == 0 and "imported 5," in res.stdout, res.stderr
    for bad, why in (
        (source(tmp_path / "wide", unit(3)[:, :16], ["a", "b", "c"]), "have 16 values"),
        (source(tmp_path / "short", unit(3), ["a", "b"]), "3 vectors but 2 ids"),
        (source(tmp_path / "meta", unit(3), ["a", "b", "c"], [{}]), "1 lines for 3 ids"),
        (tmp_path / "nowhere", "neither a folder"),
    ):
        res = run(str(tiny_bundle), str(bad), "--data-dir", str(data), "--quiet")
        assert res.returncode == 2, (bad, res.stderr)
        assert (
            res.stderr.startswith("error: ") and why in res.stderr and "Traceback" not in res.stderr
        )


def test_kill9_during_a_bulk_import_loses_no_stored_batch_and_resume_finishes(
    tiny_bundle, tmp_path
) -> None:
    n = 120_000
    src = source(tmp_path / "src", unit(n, seed=1), [f"k-{i:06d}" for i in range(n)])
    data = tmp_path / "data"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SDSSL_")}
    proc = subprocess.Popen([sys.executable, "-m", "service.lifecycle.bulk_import",
                             str(tiny_bundle),
                             str(src), "--data-dir", str(data), "--batch-size", "2000"],
                            cwd=ROOT, stderr=subprocess.PIPE, env=clean)  # fmt: skip
    stored, out = 0, b""
    deadline = time.monotonic() + 120
    while stored < 20_000 and time.monotonic() < deadline:
        chunk = os.read(proc.stderr.fileno(), 4096)
        if not chunk:
            break
        out += chunk
        found = re.findall(rb"(\d+) stored", out)
        stored = int(found[-1]) if found else 0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 20_000 <= stored < n, out[-300:]
    bid = bundle_id(tiny_bundle)
    idx = ItemIndex(data / bid, bid, 4, DIM)
    try:
        state = idx.consistency()
        assert state["consistent"] and state["items"] >= stored, state
        assert idx.versions([f"k-{i:06d}" for i in range(stored)]).keys() == {
            f"k-{i:06d}" for i in range(stored)
        }  # every row the progress line reported is there
    finally:
        idx.close()
    res = run(str(tiny_bundle), str(src), "--data-dir", str(data), "--resume", "--quiet")
    assert res.returncode == 0, res.stderr
    done = re.search(r"imported (\d+), already present (\d+)", res.stdout)
    assert done and int(done[1]) + int(done[2]) == n, res.stdout
    idx = ItemIndex(data / bid, bid, 4, DIM)
    try:
        assert idx.count() == n and idx.consistency()["consistent"]
    finally:
        idx.close()
