"""POST /v1/admin/import: bulk import inside a running server, as a job — sources only from the
import folder, rows checked as the API checks them, reads and writes going on, one job at a
time, and a kill -9 that loses no reported batch (resume finishes it)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from export.manifest import bundle_id
from service.collection import ItemIndex
from tests.service.server import Server
from tests.service.test_bulk import DIM, run, source, unit

KEY = {"Authorization": "Bearer admin-key"}


def wait_job(c, job_id: str, states=("done", "failed", "cancelled"), timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/v1/admin/jobs/{job_id}", headers=KEY).json()
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['state']}")


def parquet(path: Path, vectors: np.ndarray, ids: list, metadata: list | None = None) -> Path:
    values = pa.array(vectors.reshape(-1), type=pa.from_numpy_dtype(vectors.dtype))
    columns = {"id": pa.array(ids, pa.string()),
               "vector": pa.FixedSizeListArray.from_arrays(values, vectors.shape[1])}  # fmt: skip
    if metadata is not None:
        columns["metadata"] = pa.array(
            [None if m is None else json.dumps(m) for m in metadata], pa.string()
        )
    pq.write_table(pa.table(columns), path, row_group_size=7)
    return path


def test_imports_are_off_unless_a_folder_is_set_and_stay_inside_it(tiny_bundle, tmp_path) -> None:
    inbox = tmp_path / "inbox"
    source(inbox / "ok", unit(3), ["a", "b", "c"])
    source(tmp_path / "outside", unit(3), ["a", "b", "c"])
    (inbox / "link").symlink_to(tmp_path / "outside")
    source(inbox / "narrow", unit(3)[:, :16], ["a", "b", "c"])
    (inbox / "junk.npz").write_bytes(b"not a zip")
    with (
        Server(tiny_bundle, tmp_path / "d0", tmp_path / "log0", api_key="admin-key") as s,
        s.client() as c,
    ):
        res = c.post("/v1/admin/import", json={"source": "ok"}, headers=KEY)
        assert res.status_code == 409 and res.json()["error"]["code"] == "imports_off"
    with Server(tiny_bundle, tmp_path / "d1", tmp_path / "log1", api_key="admin-key",
                import_dir=str(inbox)) as s, s.client() as c:  # fmt: skip
        assert c.post("/v1/admin/import", json={"source": "ok"}).status_code == 401
        for bad, why in (
            ("../outside", "without '..'"),
            (str(tmp_path / "outside"), "relative path"),
            ("link", "outside the import folder"),
            ("nothing-here", "no 'nothing-here'"),
            ("narrow", "have 16 values; the served bundle's have 32"),
            ("junk.npz", "not an .npz"),
            ("", "relative path"),
        ):
            res = c.post("/v1/admin/import", json={"source": bad}, headers=KEY)
            assert res.status_code == 422, (bad, res.text)
            msg = res.json()["error"]["message"]
            assert why in msg and str(tmp_path) not in msg, (bad, msg)
        assert c.get("/v1/admin/jobs", headers=KEY).json()["jobs"] == []
        assert c.get("/v1/items", params={"limit": 0}).json()["count"] == 0


def test_an_import_checks_rows_while_clients_write_and_read(tiny_bundle, tmp_path) -> None:
    inbox = tmp_path / "inbox"
    v = unit(300, seed=3)
    v[10] = np.nan  # refused
    ids = [f"v-{i}" for i in range(300)]
    ids[11] = "no/slash"  # refused
    source(inbox / "rows", v, ids, [{"n": i} for i in range(300)])
    w = unit(40, seed=4).astype(np.float16)
    parquet(inbox / "more.parquet", w, [f"p-{i}" for i in range(40)],
            [{"p": i} if i % 2 else None for i in range(40)])  # fmt: skip
    with Server(tiny_bundle, tmp_path / "data", tmp_path / "log", api_key="admin-key",
                import_dir=str(inbox)) as s, s.client() as c:  # fmt: skip
        res = c.post("/v1/admin/import", json={"source": "rows", "batch": 16, "pause_ms": 20},
                     headers=KEY)  # fmt: skip
        assert res.status_code == 202, res.text
        job = res.json()
        assert job["kind"] == "import" and job["total"] == 300 and job["source"] == "rows"
        # a second job, a reload and a rollout wait for this one
        again = c.post("/v1/admin/import", json={"source": "more.parquet"}, headers=KEY)
        assert again.status_code == 409 and again.json()["error"]["code"] == "job_running"
        reload = c.post("/v1/admin/reload", json={"bundle": str(tiny_bundle)}, headers=KEY)
        assert reload.status_code == 409 and reload.json()["error"]["code"] == "job_running"
        # the API keeps writing and reading meanwhile
        hit = c.post("/v1/search", json={"vector": v[0].tolist(), "k": 1})
        assert hit.status_code == 200
        done = wait_job(c, job["id"])
        assert done["state"] == "done", done
        assert (done["imported"], done["refused"], done["done"]) == (298, 2, 300), done
        assert any("no/slash" in r for r in done["reasons"])
        assert c.get("/v1/items/v-7").json()["metadata"] == {"n": 7}
        assert c.post("/v1/search", json={"vector": v[5].tolist(), "k": 1}).json()["results"][0][
            "id"] == "v-5"  # fmt: skip
        res = c.post("/v1/admin/import", json={"source": "more.parquet"}, headers=KEY)
        assert res.status_code == 202, res.text
        done = wait_job(c, res.json()["id"])
        assert done["state"] == "done" and done["imported"] == 40, done
        assert c.get("/v1/items/p-3").json()["metadata"] == {"p": 3}
        assert c.get("/v1/items/p-2").json()["metadata"] is None
        assert c.get("/v1/items", params={"limit": 0}).json()["count"] == 338
        listed = c.get("/v1/admin/jobs", headers=KEY).json()["jobs"]
        assert [j["source"] for j in listed] == ["more.parquet", "rows"]
        metrics = c.get("/metrics").text
        assert 'sdssl_import_rows_total{outcome="stored"} 338.0' in metrics
        assert 'sdssl_import_rows_total{outcome="refused"} 2.0' in metrics


def test_a_cancelled_import_keeps_its_batches_and_frees_the_server(tiny_bundle, tmp_path) -> None:
    inbox = tmp_path / "inbox"
    source(inbox / "slow", unit(2000, seed=5), [f"s-{i}" for i in range(2000)])
    with Server(tiny_bundle, tmp_path / "data", tmp_path / "log",
                import_dir=str(inbox)) as s, s.client() as c:  # fmt: skip
        job = c.post("/v1/admin/import", json={"source": "slow", "batch": 10,
                                               "pause_ms": 50}).json()  # fmt: skip
        time.sleep(0.5)
        res = c.post(f"/v1/admin/jobs/{job['id']}/cancel")
        assert res.status_code == 200 and res.json()["state"] == "cancelled", res.text
        stopped = res.json()
        assert 0 < stopped["imported"] < 2000
        assert c.get("/v1/items", params={"limit": 0}).json()["count"] == stopped["imported"]
        again = c.post(f"/v1/admin/jobs/{job['id']}/cancel")
        assert again.status_code == 409
        res = c.post("/v1/admin/reload", json={"bundle": str(tiny_bundle)})
        assert res.status_code == 200, res.text


def test_kill9_during_an_import_loses_no_reported_batch_and_resume_finishes(
    tiny_bundle, tmp_path
) -> None:
    n = 60_000
    inbox = tmp_path / "inbox"
    source(inbox / "big", unit(n, seed=6), [f"k-{i:06d}" for i in range(n)])
    data = tmp_path / "data"
    s = Server(tiny_bundle, data, tmp_path / "log", import_dir=str(inbox)).start()
    try:
        with s.client() as c:
            job = c.post("/v1/admin/import", json={"source": "big", "batch": 1000,
                                                   "pause_ms": 30}).json()  # fmt: skip
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                seen = c.get(f"/v1/admin/jobs/{job['id']}").json()
                if seen["imported"] >= 5000:
                    break
                time.sleep(0.05)
        s.kill9()
    finally:
        s.stop()
    reported = seen["imported"]
    assert 5000 <= reported < n, seen
    bid = bundle_id(tiny_bundle)
    idx = ItemIndex(data / bid, bid, 4, DIM)
    try:
        present = idx.versions([f"k-{i:06d}" for i in range(reported)])
        assert len(present) == reported  # every row the job reported is stored
    finally:
        idx.close()
    with Server(tiny_bundle, data, tmp_path / "log2", import_dir=str(inbox)) as s, s.client() as c:
        stale = c.get(f"/v1/admin/jobs/{job['id']}").json()
        assert stale["state"] == "failed" and "resume: true" in stale["error"], stale
        res = c.post("/v1/admin/import", json={"source": "big", "resume": True})
        done = wait_job(c, res.json()["id"])
        assert done["state"] == "done" and done["imported"] + done["skipped"] == n, done
        assert done["skipped"] >= reported
        assert c.get("/v1/items", params={"limit": 0}).json()["count"] == n


def test_the_cli_reads_parquet_and_says_what_it_cannot(tiny_bundle, tmp_path) -> None:
    v = unit(30, seed=7)
    path = parquet(tmp_path / "rows.parquet", v, [f"q-{i}" for i in range(30)])
    res = run(str(tiny_bundle), str(path), "--data-dir", str(tmp_path / "data"), "--quiet")
    assert res.returncode == 0 and "imported 30," in res.stdout, res.stderr
    ragged = tmp_path / "ragged.parquet"  # a row of another length is refused alone
    pq.write_table(pa.table({"id": ["a", "b", "c"], "vector": [[0.1] * DIM, [0.2] * 3, None]}),
                   ragged)  # fmt: skip
    res = run(str(tiny_bundle), str(ragged), "--data-dir", str(tmp_path / "data"), "--quiet")
    assert res.returncode == 0 and "imported 1, already present 0, refused 2" in res.stdout
    assert "row 1 ('b'): its vector is missing, of another length" in res.stderr
    nameless = tmp_path / "nameless.parquet"
    pq.write_table(pa.table({"key": ["a"], "vector": [[0.1] * DIM]}), nameless)
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"id": ["a"], "vector": [[1] * DIM]}), ints)
    for bad, why in ((nameless, "no column 'id'"), (ints, "must be a list of floats")):
        res = run(str(tiny_bundle), str(bad), "--data-dir", str(tmp_path / "data"), "--quiet")
        assert res.returncode == 2 and why in res.stderr, (bad, res.stderr)
        assert "Traceback" not in res.stderr
    assert os.path.exists(tmp_path / "data")
