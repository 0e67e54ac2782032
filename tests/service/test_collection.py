"""The index as a vector database user expects it (issue #12): listing and counting with a
stable scroll, filters exact under the filter, compact vector encodings, and a read key."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from tests.harness import ROOT
from tests.service.conftest import digit_png
from tests.service.server import Server

KEY, READ = "admin-key", "read-key"
ADMIN, READER = {"X-API-Key": KEY}, {"Authorization": f"Bearer {READ}"}
N = 60
OPS = {
    "in": lambda v, x: v in x,
    "ne": lambda v, x: v != x,
    "gte": lambda v, x: v is not None and v >= x,
    "lt": lambda v, x: v is not None and v < x,
    "lte": lambda v, x: v is not None and v <= x,
}


def add(c, ids: list[str], metas: list[dict], first: int = 0):
    files = [("images", (f"{i}.png", digit_png(first + n), "image/png")) for n, i in enumerate(ids)]
    data = {"ids": ids, "metadata": [json.dumps(m) for m in metas]}
    r = c.post("/v1/items", files=files, data=data, headers=ADMIN)
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def coll(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("collection")
    s = Server(tiny_bundle, root / "data", root / "log", api_key=KEY, read_key=READ).start()
    with s.client() as c:
        for start in range(0, N, 20):
            ids = [f"item-{i:03d}" for i in range(start, start + 20)]
            metas = [{"label": str(i % 10), "score": i / 10, "even": i % 2 == 0} for i in
                     range(start, start + 20)]  # fmt: skip
            add(c, ids, metas, first=start)
    yield s
    s.stop()


def vectors_of(c) -> dict[str, np.ndarray]:
    """Every item's stored vector (the gallery depth's space) and metadata, read over HTTP."""
    out, cursor = {}, None
    while True:
        r = c.get("/v1/items", params={"limit": 25, **({"cursor": cursor} if cursor else {})},
                  headers=READER).json()  # fmt: skip
        for item in r["items"]:
            got = c.get(f"/v1/items/{item['id']}", params={"vector": "true"},
                        headers=READER).json()  # fmt: skip
            assert got["exit_depth"] == 4  # the gallery depth
            out[item["id"]] = (np.array(got["vector"]), item["metadata"])
        cursor = r["next_cursor"]
        if cursor is None:
            return out


def test_read_key_opens_reads_and_only_reads(coll) -> None:
    png = [("images", ("x.png", digit_png(1), "image/png"))]
    with coll.client() as c:
        for headers, status in (({}, 401), ({"X-API-Key": "wrong"}, 401), (READER, 200),
                                (ADMIN, 200)):  # fmt: skip
            assert c.post("/v1/embeddings", files=png, headers=headers).status_code == status
            assert c.get("/v1/items", headers=headers).status_code == status
            assert c.get("/v1/items/item-001", headers=headers).status_code == status
        r = c.post("/v1/items", files=png, data={"ids": "nope"}, headers=READER)
        assert r.status_code == 401  # the read key writes nothing
        for open_route in ("/livez", "/readyz", "/openapi.json", "/docs", "/demo/"):
            assert c.get(open_route).status_code == 200
        for read_route in ("/metrics", "/v1/model"):  # what the server holds: readers only
            assert c.get(read_route).status_code == 401
            assert c.get(read_route, headers=READER).status_code == 200


def test_listing_counts_and_scrolls_every_item_once_under_adds(coll) -> None:
    with coll.client() as c:
        first = c.get("/v1/items", params={"limit": 0}, headers=READER)
        assert first.status_code == 200, first.text
        assert first.json()["count"] >= N
        seen, cursor, stop = [], None, threading.Event()

        def writer() -> None:
            with coll.client() as w:
                i = 0
                while not stop.is_set() and i < 30:
                    add(w, [f"late-{i:03d}"], [{"label": "late"}], first=i)
                    i += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            while True:
                params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
                page = c.get("/v1/items", params=params, headers=READER).json()
                seen += [it["id"] for it in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
        finally:
            stop.set()
            t.join()
        assert len(seen) == len(set(seen))  # once each
        assert {f"item-{i:03d}" for i in range(N)} <= set(seen)  # none skipped
        too_big = base64.urlsafe_b64encode(b"n" + b"9" * 40).decode()  # past SQLite's integers
        for bad in ("bogus!", too_big):
            r = c.get("/v1/items", params={"cursor": bad}, headers=READER)
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor"


@pytest.mark.parametrize(
    "spec",
    [{"label": "3"}, {"label": {"in": ["1", "7"]}}, {"score": {"gte": 1.0, "lt": 3.5}},
     {"even": True}, {"label": {"ne": "0"}, "score": {"lte": 2}}],
    ids=["eq", "in", "range", "bool", "ne-and-range"],
)  # fmt: skip
def test_filtered_search_equals_brute_force_over_the_filtered_set(coll, spec) -> None:
    with coll.client() as c:
        stored = {k: v for k, v in vectors_of(c).items() if k.startswith("item-")}
        listed = c.get("/v1/items", params={"filter": json.dumps(spec), "limit": 1000},
                       headers=READER).json()  # fmt: skip
        query = stored["item-005"][0]
        r = c.post("/v1/search", json={"vector": query.tolist(), "exit_depth": 4, "k": 10,
                                       "filter": spec}, headers=READER)  # fmt: skip
        assert r.status_code == 200, r.text
    selected = {it["id"] for it in listed["items"] if it["id"].startswith("item-")}
    assert listed["count"] == len(listed["items"]) and selected

    def matches(meta: dict) -> bool:
        for field, cond in spec.items():
            value = meta.get(field)
            if not isinstance(cond, dict):
                if value != cond or type(value) is not type(cond):
                    return False
                continue
            for op, x in cond.items():
                if not OPS[op](value, x):
                    return False
        return True

    assert selected == {k for k, (_, m) in stored.items() if matches(m)}
    brute = sorted(selected, key=lambda k: -float(stored[k][0] @ query))[:10]
    got = [h["id"] for h in r.json()["results"] if h["id"].startswith("item-")]
    assert got == brute[: len(got)] and len(got) == min(10, len(selected))
    assert all(matches(h["metadata"]) for h in r.json()["results"])


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_an_image_search_at_any_depth_equals_brute_force_in_the_gallery_space(coll, depth):
    """One gallery, embedded at depth 4: an image searched at depth d finds what a brute-force
    scan of the stored vectors finds for its bridged depth-d embedding (/v1/embeddings)."""
    png = digit_png(777)
    with coll.client() as c:
        stored = vectors_of(c)
        emb = c.post("/v1/embeddings", files=[("images", ("q.png", png, "image/png"))],
                     data={"exit_depth": str(depth)}, headers=READER).json()  # fmt: skip
        assert emb["exit_depth"] == depth and emb["gallery_depth"] == 4
        r = c.post("/v1/search", files=[("image", ("q.png", png, "image/png"))],
                   data={"exit_depth": str(depth), "k": "10"}, headers=READER)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["exit_depth"] == depth and r.json()["gallery_depth"] == 4
    query = np.array(emb["embeddings"][0])
    scores = {k: float(v @ query) for k, (v, _) in stored.items()}
    brute = sorted(scores, key=lambda k: -scores[k])[:10]
    hits = r.json()["results"]
    assert [h["id"] for h in hits] == brute
    assert np.allclose([h["score"] for h in hits], [scores[k] for k in brute], atol=1e-5)


def test_vector_encodings_round_trip_exactly(coll) -> None:
    png = [("images", ("x.png", digit_png(2), "image/png"))]
    with coll.client() as c:
        as_json = c.post("/v1/embeddings", files=png, data={"exit_depth": "3"},
                         headers=READER).json()  # fmt: skip
        rows = np.array(as_json["embeddings"], dtype=np.float32)
        b64 = c.post("/v1/embeddings", files=png, data={"exit_depth": "3", "encoding": "base64"},
                     headers=READER).json()  # fmt: skip
        assert b64["encoding"] == "base64"
        decoded = np.frombuffer(base64.b64decode(b64["embeddings"][0]), "<f4")
        assert np.array_equal(decoded, rows[0])
        form = {"exit_depth": "3", "encoding": "base64-f16"}
        f16 = c.post("/v1/embeddings", files=png, data=form, headers=READER).json()
        half = np.frombuffer(base64.b64decode(f16["embeddings"][0]), "<f2").astype(np.float32)
        assert float(half @ rows[0]) / float(np.linalg.norm(half)) > 0.9999  # cosine
        npy = c.post("/v1/embeddings", files=png, data={"exit_depth": "3"},
                     headers={**READER, "Accept": "application/x-npy"})  # fmt: skip
        assert npy.headers["content-type"] == "application/x-npy"
        assert npy.headers["x-exit-depth"] == "3" and float(npy.headers["x-elapsed-ms"]) > 0
        assert np.array_equal(np.load(io.BytesIO(npy.content)), rows)
        # Stored vectors, and a base64 vector as a query: the same item comes first.
        item = c.get("/v1/items/item-002", params={"vector": "true", "encoding": "base64"},
                     headers=READER).json()  # fmt: skip
        stored = np.frombuffer(base64.b64decode(item["vector"]), "<f4")
        as_list = c.get("/v1/items/item-002", params={"vector": "true"}, headers=READER).json()
        assert np.array_equal(stored, np.array(as_list["vector"], dtype=np.float32))
        r = c.post("/v1/search", json={"vector": item["vector"], "exit_depth": 3, "k": 1},
                   headers=READER)  # fmt: skip
        assert r.json()["results"][0]["id"] == "item-002"
        r = c.post("/v1/search", json={"vector": "AAAA", "exit_depth": 3}, headers=READER)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_vector"


def test_batch_search_equals_the_single_searches(coll) -> None:
    blobs = [digit_png(i) for i in (3, 8, 11)]
    with coll.client() as c:
        files = [("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
        batch = c.post("/v1/search/batch", files=files,
                       data={"exit_depth": "4", "k": "5", "filter": '{"even": true}'},
                       headers=READER)  # fmt: skip
        assert batch.status_code == 200, batch.text
        singles = [c.post("/v1/search", files=[("image", ("q.png", b, "image/png"))],
                          data={"exit_depth": "4", "k": "5", "filter": '{"even": true}'},
                          headers=READER).json()["results"] for b in blobs]  # fmt: skip
        got = batch.json()["results"]
        assert [[h["id"] for h in r] for r in got] == [[h["id"] for h in r] for r in singles]
        assert batch.json()["timing"]["batch_size"] >= 3  # embedded together
        vectors = [c.get(f"/v1/items/item-00{i}", params={"vector": "true", "encoding": "base64"},
                         headers=READER).json()["vector"] for i in (1, 2)]  # fmt: skip
        by_vector = c.post("/v1/search/batch", json={"vectors": vectors, "exit_depth": 4,
                                                     "k": 1}, headers=READER).json()  # fmt: skip
        assert [r[0]["id"] for r in by_vector["results"]] == ["item-001", "item-002"]
        r = c.post("/v1/search/batch", json={"vectors": [], "exit_depth": 4}, headers=READER)
        assert r.status_code == 422


def test_snapshot_under_writes_restores_every_acknowledged_item(tiny_bundle, tmp_path) -> None:
    from export.manifest import bundle_id
    from service.collection import ItemIndex

    s = Server(tiny_bundle, tmp_path / "data", tmp_path / "log", api_key=KEY).start()
    acked: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with s.client() as w:
            i = 0
            while not stop.is_set():
                add(w, [f"w-{i:04d}"], [{"n": i}], first=i % 50)
                acked.append(f"w-{i:04d}")
                i += 1

    try:
        with s.client() as c:
            add(c, [f"pre-{i}" for i in range(20)], [{"n": i} for i in range(20)])
            t = threading.Thread(target=writer)
            t.start()
            while len(acked) < 10:
                threading.Event().wait(0.05)
            before = list(acked)  # acknowledged before the snapshot was asked for
            r = c.post("/v1/admin/snapshot", headers=ADMIN)
            assert r.status_code == 200, r.text
            snap = r.json()
            stop.set()
            t.join()
            assert c.post("/v1/admin/snapshot").status_code == 401
            got = c.get(f"/v1/admin/snapshots/{snap['name']}", headers=ADMIN)
            assert got.status_code == 200 and len(got.content) == snap["bytes"]
            assert c.get("/v1/admin/snapshots/..%2Fx", headers=ADMIN).status_code == 404
    finally:
        s.stop()
    file = tmp_path / "copy.tar"
    file.write_bytes(got.content)
    restored = tmp_path / "restored"
    res = subprocess.run([sys.executable, "-m", "service.lifecycle.restore", str(file),
                          "--data-dir",
                          str(restored)], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert res.returncode == 0, res.stderr
    bid = bundle_id(tiny_bundle)
    idx = ItemIndex(restored / bid, bid, 4, 32)
    try:
        state = idx.consistency()
        assert state["consistent"] and state["items"] == snap["items"]
        missing = [i for i in [*(f"pre-{n}" for n in range(20)), *before] if idx.get(i) is None]
        assert not missing, missing
    finally:
        idx.close()
    again = subprocess.run([sys.executable, "-m", "service.lifecycle.restore", str(file),
                          "--data-dir",
                            str(restored)], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert again.returncode == 2 and "already holds" in again.stderr


def test_restore_refuses_what_is_not_a_snapshot(tmp_path) -> None:
    import tarfile

    from service.collection.snapshots import SnapshotError, restore

    cases = {
        "not-a-tar.tar": None,
        "escape.tar": {"snapshot.json": b'{"format": 2, "bundles": {"../x": 1}}',
                       "../x/items.sqlite": b"x"},
        "unlisted.tar": {"snapshot.json": b'{"format": 2, "bundles": {}}', "extra": b"x"},
        "not-sqlite.tar": {"snapshot.json": b'{"format": 2, "bundles": {"' + b"a" * 64 + b'": 1}}',
                           "a" * 64 + "/items.sqlite": b"not a database"},
    }  # fmt: skip
    for name, files in cases.items():
        path = tmp_path / name
        if files is None:
            path.write_bytes(b"plain bytes")
        else:
            with tarfile.open(path, "w") as tar:
                for member, data in files.items():
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        with pytest.raises(SnapshotError):
            restore(path, tmp_path / "data")
    assert not (tmp_path / "x").exists()
