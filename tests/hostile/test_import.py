"""A hostile pass over POST /v1/admin/import (found by a review of its first version; each test
failed there): odd names and malicious sources get a 4xx, never a 500; files inside a folder
source cannot lead out of the import folder; a FIFO cannot hang the admin API; a source
truncated while it is read cannot kill the server; a bare CR cannot shift metadata to other
ids; cancel does not wait out a pause; a failed record write never leaves the server pinned;
an import cannot start beside a rollout."""

from __future__ import annotations

import json
import os
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.service.server import Server
from tests.service.test_bulk import DIM, run, source, unit
from tests.service.test_import_route import wait_job


def npy_header_only(path: Path, shape: tuple, dtype: str = "<f4") -> None:
    """An .npy whose header declares ``shape`` over 64 bytes of data."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (64 - (10 + len(header) + 1) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 64)


def twice_id(path: Path) -> None:
    columns = [pa.array(["a"]), pa.array(["b"]), pa.array([[0.1] * DIM])]
    pq.write_table(pa.Table.from_arrays(columns, names=["id", "id", "vector"]), path)


def post(s, body: dict) -> httpx.Response:
    with s.client() as c:
        return c.post("/v1/admin/import", json=body)


def test_odd_names_and_malicious_sources_get_a_4xx(tiny_bundle, tmp_path) -> None:
    inbox = tmp_path / "inbox"
    source(inbox / "ok", unit(3), ["a", "b", "c"])
    (inbox / "loop").symlink_to(inbox / "loop")
    (inbox / "private").mkdir()
    source(inbox / "private" / "x", unit(3), ["a", "b", "c"])
    os.chmod(inbox / "private", 0)
    (inbox / "bigids").mkdir()
    np.save(inbox / "bigids" / "vectors.npy", unit(3))
    npy_header_only(inbox / "bigids" / "ids.npy", (10**13,), "<U8")
    npy_header_only(tmp_path / "hdr.npy", (10**9, DIM))
    np.save(tmp_path / "ids.npy", np.array(["a"]))
    with zipfile.ZipFile(inbox / "billion.npz", "w") as z:
        z.write(tmp_path / "hdr.npy", "vectors.npy")
        z.write(tmp_path / "ids.npy", "ids.npy")
    corrupt = inbox / "corrupt.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "vector": [[0.1] * DIM, [0.2] * DIM]}), corrupt)
    raw = bytearray(corrupt.read_bytes())
    raw[8:120] = bytes(b ^ 0x5A for b in raw[8:120])
    corrupt.write_bytes(bytes(raw))
    twice_id(inbox / "dup.parquet")
    try:
        with Server(tiny_bundle, tmp_path / "d", tmp_path / "log", import_dir=str(inbox),
                    honour_modes=True) as s:  # fmt: skip
            for name in ("loop", "a" * 300, "private/x", "bigids", "billion.npz",
                         "corrupt.parquet", "dup.parquet", "x\ny"):  # fmt: skip
                res = post(s, {"source": name})
                assert res.status_code == 422, (name[:20], res.status_code, res.text[:300])
                message = res.json()["error"]["message"]
                assert "\n" not in message and str(tmp_path) not in message, (name[:20], message)
            assert post(s, {"source": "ok"}).status_code == 202  # and it still serves
    finally:
        os.chmod(inbox / "private", 0o755)
    res = run(str(tiny_bundle), str(inbox / "dup.parquet"), "--data-dir", str(tmp_path / "c"))
    assert res.returncode == 2 and "a column name appears twice" in res.stderr, res.stderr[-300:]


def test_files_inside_a_folder_source_cannot_lead_outside(tiny_bundle, tmp_path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("hunter2-password\nroot:x:0:0:root:/root:/bin/bash\n")
    np.save(outside / "v.npy", unit(2))
    (inbox / "leak").mkdir(parents=True)
    (inbox / "leak" / "vectors.npy").symlink_to(outside / "v.npy")
    (inbox / "leak" / "ids.txt").symlink_to(outside / "secret.txt")
    (inbox / "half").mkdir()
    np.save(inbox / "half" / "vectors.npy", unit(2))
    (inbox / "half" / "ids.txt").symlink_to(outside / "secret.txt")
    with Server(tiny_bundle, tmp_path / "d", tmp_path / "log", import_dir=str(inbox)) as s:
        for name in ("leak", "half"):
            res = post(s, {"source": name})
            assert res.status_code == 422 and "a link" in res.json()["error"]["message"], res.text
            assert "hunter2" not in res.text
        with s.client() as c:
            assert c.get("/v1/items", params={"limit": 0}).json()["count"] == 0


def test_a_fifo_in_a_folder_source_cannot_hang_the_admin_api(tiny_bundle, tmp_path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "f").mkdir(parents=True)
    os.mkfifo(inbox / "f" / "vectors.npy")
    (inbox / "f" / "ids.txt").write_text("a\n")
    os.mkfifo(inbox / "pipe.npz")
    with (
        Server(tiny_bundle, tmp_path / "d", tmp_path / "log", import_dir=str(inbox)) as s,
        httpx.Client(base_url=s.url, timeout=10) as c,
    ):
        for name in ("f", "pipe.npz"):
            res = c.post("/v1/admin/import", json={"source": name})
            assert res.status_code == 422 and "not a regular file" in res.text, res.text
        assert c.post("/v1/admin/reload", json={"bundle": str(tiny_bundle)}).status_code == 200


def test_a_source_truncated_while_it_is_read_fails_the_job_not_the_server(tiny_bundle, tmp_path):
    inbox = tmp_path / "inbox"
    src = source(inbox / "big", unit(20000), [f"t-{i}" for i in range(20000)])
    with (
        Server(tiny_bundle, tmp_path / "d", tmp_path / "log", import_dir=str(inbox)) as s,
        s.client() as c,
    ):
        job = c.post("/v1/admin/import", json={"source": "big", "batch": 100,
                                               "pause_ms": 200}).json()  # fmt: skip
        while c.get(f"/v1/admin/jobs/{job['id']}").json()["imported"] == 0:
            time.sleep(0.05)
        os.truncate(src / "vectors.npy", 128)  # rewritten in place, say
        done = wait_job(c, job["id"])
        assert done["state"] == "failed" and "changed while being read" in done["error"]
        assert s.proc.poll() is None and c.get("/readyz").status_code == 200
        count = c.get("/v1/items", params={"limit": 0}).json()["count"]
        assert count == done["imported"]  # what it reported is what is stored


def test_a_bare_cr_in_metadata_lines_cannot_shift_metadata(tiny_bundle, tmp_path) -> None:
    inbox = tmp_path / "inbox"
    src = source(inbox / "cr", unit(3), ["x", "y", "z"])
    (src / "metadata.jsonl").write_bytes(b'{"n":\r1}\n{"n":2}\n')  # 2 lines ('\r' is JSON space)
    crlf = source(inbox / "crlf", unit(2), ["x", "y"])
    (crlf / "metadata.jsonl").write_bytes(b'{"n":1}\r\n{"n":2}\r\n')
    with Server(tiny_bundle, tmp_path / "d", tmp_path / "log", import_dir=str(inbox)) as s:
        res = post(s, {"source": "cr"})
        assert res.status_code == 422 and "2 lines for 3 ids" in res.text, res.text
        with s.client() as c:
            done = wait_job(c, post(s, {"source": "crlf"}).json()["id"])
            assert done["imported"] == 2 and c.get("/v1/items/y").json()["metadata"] == {"n": 2}


def test_cancel_does_not_wait_out_a_pause(tiny_bundle, tmp_path) -> None:
    inbox = tmp_path / "inbox"
    source(inbox / "slow", unit(200), [f"s-{i}" for i in range(200)])
    with Server(tiny_bundle, tmp_path / "d", tmp_path / "log", import_dir=str(inbox)) as s:
        with s.client() as c:
            job = c.post("/v1/admin/import", json={"source": "slow", "batch": 10,
                                                   "pause_ms": 20000}).json()  # fmt: skip
            while c.get(f"/v1/admin/jobs/{job['id']}").json()["imported"] == 0:
                time.sleep(0.05)
            started = time.monotonic()
            res = c.post(f"/v1/admin/jobs/{job['id']}/cancel")
            assert res.status_code == 200 and res.json()["state"] == "cancelled"
            assert time.monotonic() - started < 5
        started = time.monotonic()
        s.stop()  # no import running: a prompt stop
        assert time.monotonic() - started < 10


def test_a_failed_record_write_never_leaves_the_server_pinned(tiny_bundle, tmp_path) -> None:
    inbox, data = tmp_path / "inbox", tmp_path / "d"
    source(inbox / "slow", unit(2000), [f"s-{i}" for i in range(2000)])
    with Server(tiny_bundle, data, tmp_path / "log", import_dir=str(inbox),
                honour_modes=True) as s, s.client() as c:  # fmt: skip
        job = c.post("/v1/admin/import", json={"source": "slow", "batch": 10,
                                               "pause_ms": 300}).json()  # fmt: skip
        while c.get(f"/v1/admin/jobs/{job['id']}").json()["imported"] == 0:
            time.sleep(0.05)
        os.chmod(data / "jobs", 0o555)  # a record write fails (disk full, EIO…) for a moment
        try:
            time.sleep(1.5)
        finally:
            os.chmod(data / "jobs", 0o755)
        assert wait_job(c, job["id"])["state"] == "failed"
        assert c.post(f"/v1/admin/jobs/{job['id']}/cancel").status_code == 409
        time.sleep(1.5)  # the record is written again once it can be
        assert json.loads((data / "jobs" / f"{job['id']}.json").read_text())["state"] == "failed"
        assert c.post("/v1/admin/reload", json={"bundle": str(tiny_bundle)}).status_code == 200


def test_an_import_cannot_start_beside_a_rollout(tiny_bundle, tiny_bundle_b, tmp_path) -> None:
    """A reload holds the reload lock while a rollout and then an import wait for it."""
    inbox = tmp_path / "inbox"
    source(inbox / "slow", unit(40), [f"s-{i}" for i in range(40)])
    with Server(tiny_bundle, tmp_path / "d", tmp_path / "log", import_dir=str(inbox)) as s:
        out: dict[str, httpx.Response] = {}

        def call(name: str, path: str, body: dict, delay: float) -> None:
            time.sleep(delay)
            with s.client() as c:
                out[name] = c.post(path, json=body)

        calls = (("reload", "/v1/admin/reload", {"bundle": str(tiny_bundle)}, 0),
                 ("rollout", "/v1/admin/rollout", {"bundle": str(tiny_bundle_b)}, 0.05),
                 ("import", "/v1/admin/import", {"source": "slow", "batch": 10,
                                                 "pause_ms": 15000}, 0.12))  # fmt: skip
        threads = [threading.Thread(target=call, args=a) for a in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = (out["rollout"].status_code, out["import"].status_code)
        assert codes != (202, 202), "an import and a rollout both started"
        with s.client() as c:
            for name in ("rollout", "import"):
                if out[name].status_code == 202:
                    job = out[name].json()
                    c.post(f"/v1/admin/jobs/{job['id']}/cancel")


def npy_raw_header(path: Path, header: bytes, data: bytes = b"") -> None:
    header += b" " * (64 - (10 + len(header) + 1) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data)


def test_a_second_review_of_the_reader(tiny_bundle, tmp_path) -> None:
    """Corrupt or bomb-shaped sources (found by a second review; each failed before its fix):
    refused with one line — or, a row at a time, only the rows that cannot be used."""
    inbox = tmp_path / "inbox"
    # numpy's header parser raises tokenize.TokenError on an unclosed bracket
    (inbox / "tok").mkdir(parents=True)
    npy_raw_header(inbox / "tok" / "vectors.npy",
                   b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 32, }")  # fmt: skip
    (inbox / "tok" / "ids.txt").write_text("a\nb\nc\n")
    # bzip2 members decompress without bound: refused before reading
    np.save(tmp_path / "v.npy", unit(3))
    np.save(tmp_path / "i.npy", np.array(["a", "b", "c"]))
    with zipfile.ZipFile(inbox / "bz.npz", "w", zipfile.ZIP_BZIP2) as z:
        z.write(tmp_path / "v.npy", "vectors.npy")
        z.write(tmp_path / "i.npy", "ids.npy")
    # a corrupt deflate stream (zlib.error)
    np.savez_compressed(inbox / "zl.npz", vectors=unit(300), ids=np.array([f"x{i}" for i in
                                                                          range(300)]))  # fmt: skip
    raw = bytearray((inbox / "zl.npz").read_bytes())
    raw[200:400] = bytes(b ^ 0xA5 for b in raw[200:400])
    (inbox / "zl.npz").write_bytes(bytes(raw))
    # a sparse ids.txt of a gigabyte for one vector: refused by its size, not read
    (inbox / "sparse").mkdir()
    np.save(inbox / "sparse" / "vectors.npy", unit(1))
    with open(inbox / "sparse" / "ids.txt", "wb") as fh:
        fh.truncate(2**30)
    # ids.npy items of 50 M characters (a sparse file): refused by their width
    (inbox / "wide").mkdir()
    np.save(inbox / "wide" / "vectors.npy", unit(3))
    npy_raw_header(inbox / "wide" / "ids.npy",
                   b"{'descr': '<U50000000', 'fortran_order': False, 'shape': (3,), }")  # fmt: skip
    with open(inbox / "wide" / "ids.npy", "r+b") as fh:
        fh.truncate(4096 + 3 * 4 * 50_000_000)
    # Parquet: row groups whose vectors hold far more values than rows of the bundle's length
    pq.write_table(pa.table({"id": [f"b{i}" for i in range(200)],
                             "vector": [np.zeros(20_000, np.float32)] * 200}),
                   inbox / "bomb.parquet")  # fmt: skip
    with Server(tiny_bundle, tmp_path / "d", tmp_path / "log", import_dir=str(inbox)) as s:
        for name, why in (("tok", "not an .npy file"), ("bz.npz", "only stored or deflated"),
                          ("zl.npz", "while decompressing"), ("sparse", "bytes for 1 lines"),
                          ("wide", "longer than ids may be"),
                          ("bomb.parquet", "vector values for 200 rows of 32")):  # fmt: skip
            started = time.monotonic()
            res = post(s, {"source": name})
            assert res.status_code == 422 and why in res.text, (name, res.text[:300])
            assert time.monotonic() - started < 10, name
    # rows a Parquet file cannot give (not UTF-8, a short vector first) are refused alone
    bad_id = pa.array([b"\xff\xfe", b"ok", b"fine"], pa.binary()).view(pa.string())
    vectors = [[0.5] * 5, [0.1] * DIM, [0.2] * DIM]
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": bad_id, "vector": vectors}), path)
    res = run(str(tiny_bundle), str(path), "--data-dir", str(tmp_path / "c"), "--quiet")
    assert res.returncode == 0 and "imported 2, already present 0, refused 1" in res.stdout, (
        res.stdout + res.stderr[-300:])  # fmt: skip
    assert "not UTF-8" in res.stderr


def test_a_folder_swapped_for_a_link_after_the_check_is_not_followed(tmp_path) -> None:
    """The check (resolve_source) and the open (pin_source) are two steps: a folder on the way
    replaced by a link between them must not lead the open outside the import folder."""
    import pytest

    from service.lifecycle.imports import ImportRefused, pin_source, resolve_source
    from service.settings import Settings

    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    source(inbox / "team" / "rows", unit(2), ["a", "b"])
    source(outside / "rows", unit(2), ["secret-1", "secret-2"])
    settings = Settings(import_dir=inbox)
    path = resolve_source(settings, "team/rows")
    fd = pin_source(settings, path, "team/rows")  # unchanged: opened
    os.close(fd)
    (inbox / "team").rename(tmp_path / "team-moved")
    (inbox / "team").symlink_to(outside)  # the swap
    with pytest.raises(ImportRefused, match="changed while it was checked"):
        pin_source(settings, path, "team/rows")
