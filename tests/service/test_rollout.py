"""One-step rollout (issue #12): a second real bundle's indexes built inside a running server
from the kept inputs, under steady reads and writes, surviving kill -9, then swapped."""

from __future__ import annotations

import json
import threading
import time

import numpy as np

from tests.service.conftest import digit_png, png
from tests.service.server import Server

KEY = "admin-key"
ADMIN = {"X-API-Key": KEY}
DEPTH = 4


def add(c, ids: list[str], first: int) -> None:
    files = [("images", (f"{i}.png", digit_png(first + n), "image/png")) for n, i in enumerate(ids)]
    data = {"ids": ids, "metadata": [json.dumps({"n": first + n}) for n in range(len(ids))]}
    r = c.post("/v1/items", files=files, data=data, headers=ADMIN)
    assert r.status_code == 200, r.text


class Load:
    """Steady reads (image search) and writes (adds, and deletes of every fifth) while it runs;
    every answer must be a 200 (a delete of an item already gone a 404 is not made)."""

    def __init__(self, server, start: int) -> None:
        self.server, self.next = server, start
        self.failures: list[str] = []
        self.added: list[str] = []
        self.deleted: list[str] = []
        self.replaced: dict[str, int] = {}  # id -> seed of its newest image
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write), threading.Thread(target=self._read)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _write(self) -> None:
        with self.server.client() as c:
            while not self._stop.is_set():
                n = self.next
                self.next += 1
                item = f"live-{n}"
                files = [("images", ("x.png", png(seed=n), "image/png"))]  # all distinct
                r = c.post("/v1/items", files=files, data={"ids": [item]}, headers=ADMIN)
                if r.status_code != 200:
                    self.failures.append(f"add {item}: {r.status_code} {r.text}")
                    continue
                self.added.append(item)
                if n % 7 == 0:  # replace an item from before the job: the newest write wins
                    old = f"item-{n % 160:03d}"
                    files = [("images", ("x.png", png(seed=n), "image/png"))]
                    r = c.post("/v1/items", files=files, data={"ids": [old]}, headers=ADMIN)
                    if r.status_code != 200:
                        self.failures.append(f"replace {old}: {r.status_code} {r.text}")
                    self.replaced[old] = n
                if n % 5 == 0:
                    r = c.delete(f"/v1/items/{item}", headers=ADMIN)
                    if r.status_code != 200:
                        self.failures.append(f"delete {item}: {r.status_code} {r.text}")
                    else:
                        self.deleted.append(item)

    def _read(self) -> None:
        with self.server.client() as c:
            i = 0
            while not self._stop.is_set():
                files = {"image": ("q.png", digit_png(i % 50), "image/png")}
                r = c.post("/v1/search", files=files, data={"exit_depth": DEPTH, "k": 3})
                if r.status_code != 200:
                    self.failures.append(f"search: {r.status_code} {r.text}")
                i += 1


def job_state(c, job_id: str) -> dict:
    r = c.get(f"/v1/admin/jobs/{job_id}", headers=ADMIN)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(c, job_id: str, until, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = job_state(c, job_id)
        assert job["state"] not in ("failed", "cancelled"), job
        if until(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job did not get there: {job}")


def test_rollout_under_load_survives_kill9_and_loses_nothing(
    tiny_bundle, tiny_bundle_b, tmp_path
) -> None:
    from export.manifest import bundle_id
    from service.collection import ItemIndex

    data, log = tmp_path / "data", tmp_path / "log"
    a_id, b_id = bundle_id(tiny_bundle), bundle_id(tiny_bundle_b)
    # Three items from a time the server kept no inputs: the rollout must list them.
    with Server(tiny_bundle, data, log, api_key=KEY, keep_inputs="false") as s, s.client() as c:
        add(c, ["old-0", "old-1", "old-2"], first=900)
    s = Server(tiny_bundle, data, log, api_key=KEY).start()
    try:
        with s.client() as c:
            for start in range(0, 160, 20):
                add(c, [f"item-{i:03d}" for i in range(start, start + 20)], first=start)
            with Load(s, 10_000) as load:
                body = {"bundle": str(tiny_bundle_b), "batch": 8, "pause_ms": 40}
                r = c.post("/v1/admin/rollout", headers=ADMIN, json=body)
                assert r.status_code == 202, r.text
                job_id = r.json()["id"]
                assert c.post("/v1/admin/rollout", headers=ADMIN,
                              json={"bundle": str(tiny_bundle_b)}).status_code == 409  # fmt: skip
                r = c.post("/v1/admin/reload", headers=ADMIN, json={"bundle": str(tiny_bundle_b)})
                assert r.status_code == 409 and r.json()["error"]["code"] == "rollout_running"
                mid = wait_for(c, job_id, lambda j: j["state"] == "copying" and j["done"] >= 40)
                assert mid["target"] == b_id and mid["done"] < mid["total"]
            assert not load.failures, load.failures[:5]
            metrics = c.get("/metrics").text
            assert "sdssl_rollout_items_total" in metrics and "sdssl_rollout_progress" in metrics
        s.kill9()  # mid-job
        recorded = json.loads((data / "jobs" / f"{job_id}.json").read_text())
        assert recorded["state"] == "copying" and recorded["cursor"] > 0

        s = Server(tiny_bundle, data, log, api_key=KEY).start()  # the old bundle, as configured
        with s.client() as c:
            resumed = job_state(c, job_id)
            assert resumed["state"] == "copying" and resumed["done"] >= recorded["done"]
            with Load(s, 20_000) as load2:
                done = wait_for(c, job_id, lambda j: j["state"] == "swapped")
                time.sleep(0.5)  # writes pinned to the old bundle finish; new ones go to the new
            assert not load2.failures, load2.failures[:5]
            assert c.get("/v1/model").json()["model"] == b_id
            assert done["missing"] == ["old-0", "old-1", "old-2"]
            assert done["copied"] > 0 and done["mirrored"] > 0
            # What the new bundle stores is its own embedding of the item, not the old one's.
            emb = c.post("/v1/embeddings", files={"images": ("x.png", digit_png(7), "image/png")},
                         data={"exit_depth": DEPTH}).json()["embeddings"][0]  # fmt: skip
            stored = c.get("/v1/items/item-007", params={"vector": "true"}).json()["vector"]
            if "item-007" not in load.replaced and "item-007" not in load2.replaced:
                assert float(np.dot(emb, stored)) > 0.999  # stored as float16
            for item, seed in {**load.replaced, **load2.replaced}.items():
                files = {"images": ("x.png", png(seed=seed), "image/png")}
                emb = c.post("/v1/embeddings", files=files, data={"exit_depth": DEPTH})
                stored = c.get(f"/v1/items/{item}", params={"vector": "true"}).json()
                assert float(np.dot(emb.json()["embeddings"][0], stored["vector"])) > 0.999
        s.stop()

        # A restart with SDSSL_BUNDLE still naming the old bundle serves the new one.
        with Server(tiny_bundle, data, log, api_key=KEY) as s2, s2.client() as c:
            assert c.get("/v1/model").json()["model"] == b_id
    finally:
        s.stop()

    deleted = set(load.deleted) | set(load2.deleted)
    expected = {f"item-{i:03d}" for i in range(160)} | (set(load.added) | set(load2.added))
    expected -= deleted
    idx = ItemIndex(data / b_id, b_id, DEPTH, 32)
    try:
        assert idx.consistency()["consistent"]
        assert idx.ids() == expected  # every acknowledged item, nothing deleted, no "old-*"
        for item in sorted(expected):
            vector = idx.vector(item)  # noise images can embed close together: top 10
            hits = idx.search(vector[None], 10)[0]
            assert item in {h.id for h in hits if h.score > 0.999}, item  # float16 rows
    finally:
        idx.close()
    old = ItemIndex(data / a_id, a_id, DEPTH, 32)
    try:  # the old bundle's index got the same writes while it served, and nothing else: an item
        # added before the swap and deleted after it stays there (the old index is retired)
        assert old.ids() - {"old-0", "old-1", "old-2"} <= expected | deleted
    finally:
        old.close()


def test_a_restart_follows_a_chain_of_rollouts(tiny_bundle, tiny_bundle_b, tmp_path) -> None:
    """A → X → B by two rollouts, SDSSL_BUNDLE still A: the restart serves B; named B or
    another bundle, the setting wins."""
    from export.manifest import bundle_id
    from service.lifecycle.serving import SERVING, bundle_to_serve
    from service.settings import Settings

    record = {"bundle": str(tiny_bundle_b), "bundle_id": bundle_id(tiny_bundle_b),
              "replaces": ["x" * 64, bundle_id(tiny_bundle)], "job": "j"}  # fmt: skip
    (tmp_path / SERVING).write_text(json.dumps(record))
    assert bundle_to_serve(Settings(bundle=tiny_bundle, data_dir=tmp_path)) == tiny_bundle_b
    assert bundle_to_serve(Settings(bundle=tiny_bundle_b, data_dir=tmp_path)) == tiny_bundle_b
    record["replaces"] = ["x" * 64]
    (tmp_path / SERVING).write_text(json.dumps(record))
    assert bundle_to_serve(Settings(bundle=tiny_bundle, data_dir=tmp_path)) == tiny_bundle


def test_swap_on_request_and_cancel(tiny_bundle, tiny_bundle_b, tmp_path) -> None:
    from export.manifest import bundle_id

    a_id, b_id = bundle_id(tiny_bundle), bundle_id(tiny_bundle_b)
    server = Server(tiny_bundle, tmp_path / "data", tmp_path / "log", api_key=KEY)
    with server as s, s.client() as c:
        add(c, [f"i-{n}" for n in range(20)], first=0)
        # Cancelled mid-copy: the old bundle serves on, and a reload is possible again.
        body = {"bundle": str(tiny_bundle_b), "batch": 1, "pause_ms": 200}
        job = c.post("/v1/admin/rollout", headers=ADMIN, json=body).json()
        wait_for(c, job["id"], lambda j: j["state"] == "copying")
        r = c.post(f"/v1/admin/jobs/{job['id']}/cancel", headers=ADMIN)
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        assert c.post(f"/v1/admin/jobs/{job['id']}/swap", headers=ADMIN).status_code == 409
        assert c.get("/v1/admin/jobs/0123456789abcdef", headers=ADMIN).status_code == 404
        assert c.get("/v1/model").json()["model"] == a_id
        # swap: false waits at ready, writes still reaching both, until asked.
        body = {"bundle": str(tiny_bundle_b), "swap": False}
        job = c.post("/v1/admin/rollout", headers=ADMIN, json=body).json()
        wait_for(c, job["id"], lambda j: j["state"] == "ready")
        add(c, ["late"], first=300)
        assert c.get("/v1/model").json()["model"] == a_id
        r = c.post(f"/v1/admin/jobs/{job['id']}/swap", headers=ADMIN)
        assert r.status_code == 200 and r.json()["state"] == "swapped"
        assert c.get("/v1/model").json()["model"] == b_id
        assert c.get("/v1/items", params={"limit": 0}).json()["count"] == 21
        assert c.get("/v1/items/late").status_code == 200
        jobs = c.get("/v1/admin/jobs", headers=ADMIN).json()["jobs"]
        assert [j["state"] for j in jobs] == ["swapped", "cancelled"]
        # A snapshot of every bundle of the data dir: both, restorable together.
        snap = c.post("/v1/admin/snapshot", params={"all": "true"}, headers=ADMIN).json()
        assert snap["name"].startswith("all-") and snap["bundles"][b_id] == 21
        assert set(snap["bundles"]) == {a_id, b_id} and snap["bundles"][a_id] >= 20
        tar = c.get(f"/v1/admin/snapshots/{snap['name']}", headers=ADMIN).content
    from service.collection.snapshots import restore

    (tmp_path / "all.tar").write_bytes(tar)
    done = restore(tmp_path / "all.tar", tmp_path / "restored")
    assert done.bundles == snap["bundles"]
    assert (tmp_path / "restored" / a_id / "items.sqlite").is_file()
