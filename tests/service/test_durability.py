"""Restart, kill -9 and reload: nothing acknowledged is lost, index and metadata agree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import httpx
import pytest

from export.manifest import bundle_id
from service.collection import ItemIndex
from tests.service.conftest import digit_png, png
from tests.service.server import Server


def add(client, item_id: str, blob: bytes) -> httpx.Response:
    return client.post(
        "/v1/items",
        files=[("images", ("x.png", blob, "image/png"))],
        data={"ids": item_id, "metadata": f'{{"id": "{item_id}"}}'},
    )


def open_index(bundle, data_dir) -> ItemIndex:
    bid = bundle_id(bundle)
    return ItemIndex(data_dir / bid, bid, 4, 32)


def test_restart_keeps_items(tiny_bundle, tmp_path) -> None:
    s = Server(tiny_bundle, tmp_path / "data", tmp_path / "log", snapshot_every=3).start()
    with s.client() as c:
        for i in range(5):
            assert add(c, f"r-{i}", digit_png(i)).status_code == 200
        assert c.delete("/v1/items/r-0").status_code == 200
    s.stop()
    s.start()
    with s.client() as c:
        assert c.get("/v1/items/r-0").status_code == 404
        for i in range(1, 5):
            assert c.get(f"/v1/items/r-{i}").json()["metadata"] == {"id": f"r-{i}"}
        hits = c.post("/v1/search", files=[("image", ("x.png", digit_png(3), "image/png"))])
        assert hits.json()["results"][0]["id"] == "r-3"
    s.stop()


def test_kill9_during_a_stream_of_adds(tiny_bundle, tmp_path) -> None:
    s = Server(tiny_bundle, tmp_path / "data", tmp_path / "log", snapshot_every=7).start()
    acked: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        with s.client() as c:
            i = 0
            while not stop.is_set():
                try:
                    r = add(c, f"k-{i}", png(seed=i))
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acked.append(f"k-{i}")
                i += 1

    t = threading.Thread(target=stream)
    t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 25 and time.monotonic() < deadline:
        time.sleep(0.05)
    s.kill9()
    stop.set()
    t.join()
    assert len(acked) >= 25

    idx = open_index(tiny_bundle, tmp_path / "data")
    state = idx.consistency()
    idx.close()
    assert state["consistent"], state
    assert state["items"] >= len(acked)

    s.start()
    with s.client() as c:
        for item_id in acked:
            assert c.get(f"/v1/items/{item_id}").status_code == 200, item_id
        last = acked[-1]
        n = int(last.split("-")[1])
        r = c.post(
            "/v1/search",
            files=[("image", ("x.png", png(seed=n), "image/png"))],
            data={"exit_depth": "4", "k": "1"},
        )  # the gallery depth: finds itself
        assert r.json()["results"][0]["id"] == last
    s.stop()


def test_reload_swaps_without_failed_requests(tiny_bundle, tiny_bundle_sparse, tmp_path) -> None:
    other = tiny_bundle_sparse
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_bundle, corrupt)
    (corrupt / "exit_02.onnx").write_bytes(b"not onnx")

    s = Server(tiny_bundle, tmp_path / "data", tmp_path / "log").start()
    codes: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with s.client() as c:
            while not stop.is_set():
                r = c.post("/v1/embeddings", files=[("images", ("x.png", png(), "image/png"))])
                codes.append(r.status_code)

    workers = [threading.Thread(target=load) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        with s.client() as c:
            time.sleep(0.5)
            r = c.post("/v1/admin/reload", json={"bundle": str(corrupt)})
            assert r.status_code == 409 and "sha256 mismatch" in r.json()["error"]["message"]
            assert c.get("/readyz").json()["model"] == bundle_id(tiny_bundle)
            r = c.post("/v1/admin/reload", json={"bundle": str(other)})
            assert r.status_code == 200, r.text
            assert r.json()["model"] == bundle_id(other) and r.json()["exit_depths"] == [1, 2, 4]
            time.sleep(0.5)
            r = c.post("/v1/admin/reload", json={"bundle": str(tiny_bundle)})
            assert r.status_code == 200
            time.sleep(0.5)
            assert c.get("/v1/model").json()["model"] == bundle_id(tiny_bundle)
    finally:
        stop.set()
        for w in workers:
            w.join()
        s.stop()
    assert len(codes) > 10 and set(codes) == {200}, sorted(set(codes))


def test_index_refuses_another_bundle(tiny_bundle, tmp_path) -> None:
    bid = bundle_id(tiny_bundle)
    ItemIndex(tmp_path / "ix", bid, 4, 32).close()
    from service.collection import IndexMismatch

    with pytest.raises(IndexMismatch, match="belongs to bundle"):
        ItemIndex(tmp_path / "ix", "0" * 64, 4, 32)


def test_import_service_leaves_torch_unloaded(repo_root) -> None:
    code = (
        "import sys, service, service.app, service.__main__\n"
        "from service.api.routes import admin, embeddings, items, model, search\n"
        "bad = [m for m in ('torch', 'timm', 'training.loop', 'torchvision') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True)
    assert res.returncode == 0, res.stderr.decode()
