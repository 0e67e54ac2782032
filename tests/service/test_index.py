"""ItemIndex on its own: one gallery vector per item, exact results, factories that need
training or cannot delete, snapshots plus log replay."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from service.index import ItemIndex

BID = "b" * 64


def vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def brute_force(v: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    return list(np.argsort(-(v @ q))[:k])


def test_flat_search_equals_brute_force(tmp_path) -> None:
    v = vectors(200)
    idx = ItemIndex(tmp_path, BID, 3, 16)
    idx.upsert([f"i{i}" for i in range(200)], [{"i": i} for i in range(200)], v)
    for q in vectors(3, seed=9):
        hits = idx.search(q[None], 5)[0]
        assert [h.id for h in hits] == [f"i{i}" for i in brute_force(v, q, 5)]
        assert hits[0].metadata == {"i": int(hits[0].id[1:])}
    assert np.array_equal(idx.vector("i7"), v[7]) and idx.vector("nope") is None
    idx.close()


def test_ivf_serves_exact_until_trainable_then_switches(tmp_path) -> None:
    idx = ItemIndex(tmp_path, BID, 3, 16, factory="IVF4,Flat", snapshot_every=100)
    assert idx.active_factory == "Flat"  # too few items to train 4 lists
    v = vectors(300)
    idx.upsert(["first"], [None], v[:1])
    assert idx.search(v[:1], 1)[0][0].id == "first"
    idx.upsert([f"x{i}" for i in range(1, 300)], [None] * 299, v[1:])
    assert idx.active_factory == "IVF4,Flat" and idx.consistency()["consistent"]
    idx.close()
    again = ItemIndex(tmp_path, BID, 3, 16, factory="IVF4,Flat")
    assert again.active_factory == "IVF4,Flat" and again.count() == 300
    assert again.search(v[7:8], 1)[0][0].id == "x7"
    again.close()


def test_hnsw_deletes_are_filtered_and_compacted(tmp_path) -> None:
    v = vectors(50)
    idx = ItemIndex(tmp_path, BID, 3, 16, factory="HNSW8", snapshot_every=10**6)
    idx.upsert([f"h{i}" for i in range(50)], [None] * 50, v)
    assert idx.delete("h3")
    hits = idx.search(v[3:4], 50)[0]
    assert "h3" not in {h.id for h in hits} and len(hits) == 49
    assert idx.indexed() == 50  # HNSW cannot remove: the vector stays until a rebuild
    idx.snapshot()  # rebuilds without the stale vector
    assert idx.indexed() == 49
    idx.close()


CRASHING_WRITER = """
import os, sys
import numpy as np
from service.index import ItemIndex
v = np.load(sys.argv[2])
idx = ItemIndex(__import__("pathlib").Path(sys.argv[1]), "b" * 64, 3, 16,
                snapshot_every=int(sys.argv[3]))
for i in range(30):
    idx.upsert([f"r{i}"], [None], v[i : i + 1])
for i in range(0, 30, 3):
    idx.delete(f"r{i}")
idx.upsert(["r1"], [{"replaced": True}], v[2:3])
os._exit(0)  # no close(): as after a kill -9, the last changes exist only in SQLite's log
"""


@pytest.mark.parametrize("snapshot_every", [1, 7, 10**6])
def test_restart_replays_the_log_after_the_snapshot(tmp_path, snapshot_every, repo_root) -> None:
    v = vectors(30)
    np.save(tmp_path / "v.npy", v)
    data = tmp_path / "ix"
    subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(data), str(tmp_path / "v.npy"),
         str(snapshot_every)], cwd=repo_root, check=True,
    )  # fmt: skip
    again = ItemIndex(data, BID, 3, 16, snapshot_every=snapshot_every)
    state = again.consistency()
    assert state["consistent"] and state["items"] == 20
    assert again.get("r1")["metadata"] == {"replaced": True}
    ids = {h.id for h in again.search(v[2:3], 2)[0]}
    assert ids == {"r1", "r2"}
    again.close()
