"""ItemIndex on its own: one gallery vector per item, exact results, factories that need
training or cannot delete, snapshots plus log replay."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from service.collection import ItemIndex

BID = "b" * 64


def vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    return v.astype(np.float16).astype(np.float32)  # as the vectors file stores them


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
    idx.wait_built()  # trained on a thread of its own (see the next tests)
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
from service.collection import ItemIndex
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


def clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Unit vectors around 50 centres: neighbours that an approximate index can confuse."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim)).astype(np.float32)
    v = centres[rng.integers(0, 50, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    return v.astype(np.float16).astype(np.float32)


def test_pq_candidates_are_reranked_exactly_from_the_stored_vectors(tmp_path) -> None:
    """IVF with PQ codes alone mis-orders close neighbours; re-ranked from the vectors file,
    the scores are exact cosines and recall@10 against brute force rises."""
    v, q = clustered(4000), clustered(60, seed=5)
    truth = [list(np.argsort(-(v @ x))[:10]) for x in q]
    recall = {}
    for rerank in (1, 8):
        idx = ItemIndex(tmp_path / f"r{rerank}", BID, 3, 32, factory="IVF8,PQ8", nprobe=8,
                        rerank=rerank, snapshot_every=10**6)  # fmt: skip
        idx.upsert([f"p{i}" for i in range(4000)], [None] * 4000, v)
        idx.snapshot()  # 4000 items: enough to train; the index switches to IVF8,PQ8
        idx.wait_built()
        assert idx.active_factory == "IVF8,PQ8"
        hits = idx.search(q, 10, metadata=False)
        found = [[int(h.id[1:]) for h in row] for row in hits]
        recall[rerank] = np.mean(
            [len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]
        )
        if rerank > 1:
            for x, row in zip(q, hits, strict=True):
                want = [float(v[int(h.id[1:])] @ x) for h in row]
                assert np.allclose([h.score for h in row], want, atol=1e-5)
                assert want == sorted(want, reverse=True)
        idx.close()
    assert recall[8] >= 0.95 and recall[8] > recall[1] + 0.2, recall


def test_a_restart_loads_the_saved_index_instead_of_rebuilding(tmp_path) -> None:
    v = clustered(3000)
    idx = ItemIndex(tmp_path, BID, 3, 32, factory="IVF8,Flat", snapshot_every=10**6)
    idx.upsert([f"s{i}" for i in range(3000)], [None] * 3000, v)
    idx.snapshot()
    idx.wait_built()
    idx.close()  # the close persists a snapshot
    again = ItemIndex(tmp_path, BID, 3, 32, factory="IVF8,Flat")
    assert again.loaded.startswith("snapshot at change") and again.active_factory == "IVF8,Flat"
    assert again.search(v[17:18], 1)[0][0].id == "s17"
    again.upsert(["late"], [None], v[:1])  # and a crash-free restart replays what came after
    again.delete("s3")
    again.close()
    third = ItemIndex(tmp_path, BID, 3, 32, factory="IVF8,Flat")
    assert third.count() == 3000 and third.consistency()["consistent"]
    third.close()


def test_factories_that_wrap_an_ivf_keep_their_ids(tmp_path) -> None:
    """A refined IVF (IVF…,RFlat) cannot take ids itself: it sits in an id map like the rest."""
    v = clustered(3000)
    idx = ItemIndex(tmp_path, BID, 3, 32, factory="IVF8,Flat,RFlat", snapshot_every=10**6)
    idx.upsert([f"f{i}" for i in range(3000)], [None] * 3000, v)
    idx.snapshot()
    idx.wait_built()
    assert idx.active_factory == "IVF8,Flat,RFlat" and idx.consistency()["consistent"]
    assert idx.search(v[42:43], 1)[0][0].id == "f42"
    idx.close()


def test_a_restore_that_drops_deleted_newest_rows_still_opens_with_a_trained_index(tmp_path):
    """Snapshots carry rows up to the newest live item; training samples must stay in them."""
    from service.collection import snapshots

    v = clustered(3000)
    idx = ItemIndex(tmp_path / "a" / BID, BID, 3, 32, snapshot_every=10**6)
    idx.upsert([f"d{i}" for i in range(3000)], [None] * 3000, v)
    for i in range(2000, 3000):
        idx.delete(f"d{i}")
    made = snapshots.create({BID: idx.root}, tmp_path / "snaps", BID[:12])
    idx.close()
    snapshots.restore(made.path, tmp_path / "b")
    again = ItemIndex(tmp_path / "b" / BID, BID, 3, 32, factory="IVF8,Flat")
    assert again.count() == 2000 and again.active_factory == "IVF8,Flat"
    assert again.search(v[7:8], 1)[0][0].id == "d7"
    again.close()


def test_a_vectors_file_deleted_while_open_is_restored_by_the_next_write(tmp_path) -> None:
    v = vectors(20)
    idx = ItemIndex(tmp_path, BID, 3, 16)
    idx.upsert([f"x{i}" for i in range(10)], [None] * 10, v[:10])
    (tmp_path / "vectors.f16").unlink()
    idx.upsert(["late"], [None], v[10:11])  # acknowledged: its row and every earlier one durable
    assert (tmp_path / "vectors.f16").is_file()
    idx.close()
    again = ItemIndex(tmp_path, BID, 3, 16)
    assert np.array_equal(again.vector("x3"), v[3]) and np.array_equal(again.vector("late"), v[10])
    again.close()


def test_a_batch_that_repeats_an_id_keeps_its_last_row(tmp_path) -> None:
    """Image folders may repeat a file stem (dog/1.jpg, cat/1.jpg): the bulk path keeps one."""
    from service.collection.bulk import Batch, Counts, write

    v = vectors(3)
    idx = ItemIndex(tmp_path, BID, 3, 16)
    counts = write(idx, [Batch(["a", "b", "a"], [1, 2, 3], v)], 3, Counts(), progress=False)
    assert counts.imported == 2 and idx.get("a")["metadata"] == 3
    assert np.array_equal(idx.vector("a"), v[2])
    idx.close()


def test_a_new_index_type_is_trained_beside_the_exact_one_while_writes_go_on(tmp_path) -> None:
    """Past its training size the configured factory is built on a thread of its own; the
    exact index answers meanwhile, and writes made during the build are caught up."""
    v = clustered(3000)
    idx = ItemIndex(tmp_path, BID, 3, 32, factory="IVF8,Flat", snapshot_every=10**6)
    idx.upsert([f"w{i}" for i in range(2000)], [None] * 2000, v[:2000])
    idx.snapshot()  # starts the build and returns
    idx.upsert([f"w{i}" for i in range(2000, 3000)], [None] * 1000, v[2000:])  # meanwhile
    assert idx.search(v[2500:2501], 1)[0][0].id == "w2500"
    assert idx.delete("w5")
    idx.wait_built()
    assert idx.active_factory == "IVF8,Flat"
    state = idx.consistency()
    assert state["consistent"] and state["items"] == 2999, state
    assert idx.search(v[2999:3000], 1)[0][0].id == "w2999"
    assert "w5" not in {h.id for h in idx.search(v[5:6], 5)[0]}
    idx.close()
    again = ItemIndex(tmp_path, BID, 3, 32, factory="IVF8,Flat")
    assert again.loaded.startswith("snapshot") and again.active_factory == "IVF8,Flat"
    assert again.count() == 2999 and again.consistency()["consistent"]
    again.close()
