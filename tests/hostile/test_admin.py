"""The admin "also" items of issue #29: a rollout error names no server path; snapshots honour
SDSSL_MIN_FREE_BYTES, keep the newest SDSSL_SNAPSHOT_KEEP, and two made in the same second get
distinct names."""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import time

from export.manifest import bundle_id
from tests.hostile.conftest import assert_error, fill
from tests.service.server import Server

KEY = "admin-admin"
ADMIN = {"X-API-Key": KEY}


def test_a_failed_rollout_names_no_server_path(tiny_bundle, tiny_bundle_b, tmp_path) -> None:
    data = tmp_path / "data"
    fill(tiny_bundle, data, 3)
    (data / bundle_id(tiny_bundle_b)).write_text("a file where the bundle's folder would be")
    with Server(tiny_bundle, data, tmp_path / "log", api_key=KEY) as s, s.client() as c:
        job = c.post("/v1/admin/rollout", json={"bundle": str(tiny_bundle_b)}, headers=ADMIN)
        assert job.status_code == 202, job.text
        for _ in range(300):
            got = c.get(f"/v1/admin/jobs/{job.json()['id']}", headers=ADMIN).json()
            if got["state"] == "failed":
                break
            time.sleep(0.1)
        assert got["state"] == "failed" and got["error"], got
        for where in (str(data), str(tmp_path), "/tmp/"):
            assert where not in got["error"], got["error"]
        r = c.post("/v1/admin/reload", json={"bundle": str(tiny_bundle_b)}, headers=ADMIN)
        err = assert_error(r, 409, "reload_failed")
        assert str(tmp_path) not in err["message"] and "/tmp/" not in err["message"], err
        assert c.get("/readyz").status_code == 200  # the old bundle serves on


def test_snapshot_names_are_distinct_and_only_the_newest_are_kept(tiny_bundle, tmp_path) -> None:
    fill(tiny_bundle, tmp_path / "data", 4)
    with Server(tiny_bundle, tmp_path / "data", tmp_path / "log", api_key=KEY,
                snapshot_keep=3) as s, s.client() as c:  # fmt: skip

        def snap(_: int) -> str:
            with s.client() as w:
                r = w.post("/v1/admin/snapshot", headers=ADMIN)
                assert r.status_code == 200, r.text
                return r.json()["name"]

        with cf.ThreadPoolExecutor(3) as pool:
            names = list(pool.map(snap, range(3)))  # all within a second
        assert len(set(names)) == 3, names
        for name in names:
            assert c.get(f"/v1/admin/snapshots/{name}", headers=ADMIN).status_code == 200
        newer = [snap(0) for _ in range(2)]
        listed = c.get("/v1/admin/snapshots", headers=ADMIN).json()
        assert listed["keep"] == 3 and len(listed["snapshots"]) == 3
        assert [x["name"] for x in listed["snapshots"]][:2] == newer[::-1]
        kept = {x["name"] for x in listed["snapshots"]}
        assert len(kept & set(names)) == 1  # the two oldest went
        gone = sorted(set(names) - kept)
        assert c.get(f"/v1/admin/snapshots/{gone[0]}", headers=ADMIN).status_code == 404
        r = c.delete(f"/v1/admin/snapshots/{newer[0]}", headers=ADMIN)
        assert r.status_code == 200 and r.json()["deleted"]
        assert c.get(f"/v1/admin/snapshots/{newer[0]}", headers=ADMIN).status_code == 404
        assert c.delete("/v1/admin/snapshots/..%2Fserving.json", headers=ADMIN).status_code == 404
        # a snapshot named before names carried milliseconds is still listed, served, deleted
        older = f"{newer[1][:12]}-20261202T061500Z.tar"
        folder = tmp_path / "data" / "snapshots"
        shutil.copy(folder / newer[1], folder / older)
        listed = c.get("/v1/admin/snapshots", headers=ADMIN).json()["snapshots"]
        assert older in [x["name"] for x in listed]
        assert c.get(f"/v1/admin/snapshots/{older}", headers=ADMIN).status_code == 200
        assert c.delete(f"/v1/admin/snapshots/{older}", headers=ADMIN).status_code == 200


def test_a_snapshot_honours_min_free_bytes(tiny_bundle, tmp_path) -> None:
    fill(tiny_bundle, tmp_path / "data", 4)
    free = shutil.disk_usage(tmp_path).free
    filler = tmp_path / "filler"
    s = Server(tiny_bundle, tmp_path / "data", tmp_path / "log", api_key=KEY,
               min_free_bytes=free - (256 << 20)).start()  # fmt: skip
    try:
        with s.client() as c:
            assert c.post("/v1/admin/snapshot", headers=ADMIN).status_code == 200
            with open(filler, "wb") as fh:
                os.posix_fallocate(fh.fileno(), 0, 1 << 30)
            before = sorted((tmp_path / "data" / "snapshots").iterdir())
            r = c.post("/v1/admin/snapshot", headers=ADMIN)
            assert_error(r, 507, "storage_full", "SDSSL_MIN_FREE_BYTES")
            assert sorted((tmp_path / "data" / "snapshots").iterdir()) == before
            filler.unlink()
            assert c.post("/v1/admin/snapshot", headers=ADMIN).status_code == 200
    finally:
        filler.unlink(missing_ok=True)
        s.stop()
