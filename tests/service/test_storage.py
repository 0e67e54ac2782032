"""Storage truth (issue #9): a write that cannot be made durable is never acknowledged, /readyz
says when storage is unusable and recovers with it, and nothing acknowledged is lost."""

from __future__ import annotations

import os
import shutil

from export.manifest import bundle_id
from tests.service.conftest import digit_png
from tests.service.server import Server


def add(c, item_id: str, i: int):
    return c.post("/v1/items", files=[("images", ("x.png", digit_png(i), "image/png"))],
                  data={"ids": item_id})  # fmt: skip


def seed(c, prefix: str, n: int) -> list[str]:
    """Add ``n`` items, each acknowledged; their ids."""
    for i in range(n):
        assert add(c, f"{prefix}-{i}", i).status_code == 200
    return [f"{prefix}-{i}" for i in range(n)]


def assert_all_present(s: Server, acked: list[str]) -> None:
    """After a restart every acknowledged item is there and searchable, and nothing else."""
    s.stop()
    s.start()
    with s.client() as c:
        assert c.get("/v1/model").json()["items"] == len(acked)
        for item_id in acked:
            assert c.get(f"/v1/items/{item_id}").status_code == 200, item_id
        r = c.post("/v1/search", files=[("image", ("q.png", digit_png(7), "image/png"))],
                   data={"k": str(len(acked)), "exit_depth": "4"})  # fmt: skip
        assert {h["id"] for h in r.json()["results"]} == set(acked)


def test_data_dir_deleted_while_serving_loses_nothing_acknowledged(tiny_bundle, tmp_path):
    data = tmp_path / "data"
    s = Server(tiny_bundle, data, tmp_path / "log").start()
    try:
        with s.client() as c:
            acked = seed(c, "d", 10)
            shutil.rmtree(data)
            for i in range(10, 50):
                r = add(c, f"d-{i}", i)
                assert r.status_code in (200, 503, 507), r.text
                if r.status_code == 200:
                    acked.append(f"d-{i}")
                else:
                    assert r.json()["error"]["code"].startswith("storage_")
            assert c.get("/readyz").status_code == 200
        assert (data / bundle_id(tiny_bundle) / "items.sqlite").is_file()
        assert "restored" in (tmp_path / "log").read_text()
        assert_all_present(s, acked)
    finally:
        s.stop()


def test_read_only_data_dir_refuses_writes_and_recovers(tiny_bundle, tmp_path):
    s = Server(tiny_bundle, tmp_path / "data", tmp_path / "log", honour_modes=True).start()
    folder = tmp_path / "data" / bundle_id(tiny_bundle)
    try:
        with s.client() as c:
            acked = seed(c, "ro", 5)
            os.chmod(folder, 0o555)
            r = add(c, "ro-refused", 9)
            assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable"
            assert "not writable" in r.json()["error"]["message"]
            ready = c.get("/readyz")
            assert ready.status_code == 503 and "not writable" in ready.json()["error"]["message"]
            assert c.get("/v1/items/ro-1").status_code == 200  # reads carry on
            r = c.post("/v1/search", files=[("image", ("q.png", digit_png(1), "image/png"))])
            assert r.json()["results"][0]["id"] == "ro-1"
            os.chmod(folder, 0o755)
            assert c.get("/readyz").status_code == 200
            assert add(c, "ro-after", 8).status_code == 200
            acked.append("ro-after")
        assert_all_present(s, acked)
    finally:
        os.chmod(folder, 0o755)
        s.stop()


def test_full_disk_refuses_writes_with_507_and_recovers(tiny_bundle, tmp_path):
    free = shutil.disk_usage(tmp_path).free
    # Writes need all but 256 MiB of what is free now; a 1 GiB file then takes it below that.
    s = Server(tiny_bundle, tmp_path / "data", tmp_path / "log",
               min_free_bytes=free - (256 << 20)).start()  # fmt: skip
    filler = tmp_path / "filler"
    try:
        with s.client() as c:
            acked = seed(c, "f", 3)
            with open(filler, "wb") as fh:
                os.posix_fallocate(fh.fileno(), 0, 1 << 30)
            r = add(c, "f-refused", 5)
            assert r.status_code == 507 and r.json()["error"]["code"] == "storage_full"
            assert c.get("/readyz").status_code == 503
            assert c.get("/v1/items/f-1").status_code == 200
            filler.unlink()
            assert c.get("/readyz").status_code == 200
            assert add(c, "f-after", 6).status_code == 200
            acked.append("f-after")
        assert_all_present(s, acked)
    finally:
        filler.unlink(missing_ok=True)
        s.stop()
