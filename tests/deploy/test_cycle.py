"""The host-side operations cycle on a tiny model, with the scripts a user runs:
retrain.sh → export.sh → reindex.sh → (server running the old bundle) → reload.sh,
queries answered throughout, the new bundle served afterwards."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

from tests.service.conftest import digit_png
from tests.service.server import Server

ROOT = Path(__file__).resolve().parents[2]
KEY = "cycle-key"


def script(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / name), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )  # fmt: skip
    assert res.returncode == 0, f"{name}: {res.stderr[-3000:]}"
    return res


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_retrain_export_reindex_reload(tiny_bundle, tmp_path) -> None:
    ckpt, bundle, data = tmp_path / "ckpt", tmp_path / "bundles" / "new", tmp_path / "data"
    script("retrain.sh", "--config", "configs/tiny.yaml", "--set", "train.max_steps=3",
           "--set", "train.seed=7", "--out", str(ckpt))  # fmt: skip
    assert (ckpt / "metrics.json").is_file()
    new_id = script("export.sh", str(ckpt), str(bundle)).stdout.strip().splitlines()[-1]
    assert len(new_id) == 64

    from tests.harness import mnist_test

    test = mnist_test()
    gallery = tmp_path / "gallery"
    for i in range(30):
        folder = gallery / str(int(test.labels[i * 33]))
        folder.mkdir(parents=True, exist_ok=True)
        test.image(i * 33).save(folder / f"g-{i:03d}.png")
    out = script("reindex.sh", str(bundle), str(gallery), "--data-dir", str(data), "--quiet")
    assert "indexed 30" in out.stdout

    server = Server(tiny_bundle, data, tmp_path / "server.log", api_key=KEY).start()
    codes: list[int] = []
    stop = threading.Event()
    img = digit_png(5)

    def queries() -> None:
        with server.client() as c:
            while not stop.is_set():
                r = c.post("/v1/search", files=[("image", ("q.png", img, "image/png"))],
                           data={"budget_ms": "200", "k": "3"})  # fmt: skip
                codes.append(r.status_code)

    workers = [threading.Thread(target=queries) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: len(codes) >= 3)  # queries flow before the swap, ...
        res = script("reload.sh", str(bundle), "--url", server.url, env={"SDSSL_API_KEY": KEY})
        assert f"now serving {new_id}" in res.stdout and "30 items" in res.stdout
        bad = subprocess.run(
            ["bash", str(ROOT / "scripts" / "reload.sh"), str(tmp_path / "missing"),
             "--url", server.url, "--api-key", KEY],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert bad.returncode == 1 and "reload failed (409)" in bad.stderr
        n = len(codes)
        wait_for(lambda: len(codes) >= n + 3)  # ... and after it
    finally:
        stop.set()
        for w in workers:
            w.join()
    with server.client() as c:
        assert c.get("/readyz").json()["model"] == new_id
        hits = c.post("/v1/search", files=[("image", ("q.png", digit_png(33), "image/png"))])
        assert hits.json()["results"][0]["id"] == "g-001"
    server.stop()
    assert len(codes) > 5 and set(codes) == {200}, sorted(set(codes))


def test_rollout_sh_from_config_to_serving(tiny_bundle, tmp_path) -> None:
    """rollout.sh: retrain → export → verify → rollout → wait, against a running server."""
    server = Server(tiny_bundle, tmp_path / "data", tmp_path / "server.log", api_key=KEY).start()
    try:
        with server.client() as c:
            files = [("images", (f"{i}.png", digit_png(i), "image/png")) for i in range(12)]
            r = c.post("/v1/items", files=files, data={"ids": [f"d-{i}" for i in range(12)]},
                       headers={"X-API-Key": KEY})  # fmt: skip
            assert r.status_code == 200, r.text
        res = script("rollout.sh", "--config", "configs/tiny.yaml", "--set", "train.max_steps=3",
                     "--set", "train.seed=11", "--checkpoint", str(tmp_path / "ckpt"),
                     "--bundle", str(tmp_path / "new"), "--batch", "5", "--url", server.url,
                     env={"SDSSL_API_KEY": KEY})  # fmt: skip
        from export.manifest import bundle_id

        new_id = bundle_id(tmp_path / "new")
        assert f"swapped: {new_id} (12 re-embedded" in res.stdout, res.stdout
        with server.client() as c:
            assert c.get("/readyz").json()["model"] == new_id
            assert c.get("/v1/items", params={"limit": 0}).json()["count"] == 12
        bad = subprocess.run(
            ["bash", str(ROOT / "scripts" / "rollout.sh"), "--bundle", str(tmp_path / "new"),
             "--url", server.url, "--api-key", KEY],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert bad.returncode == 1 and "(409)" in bad.stderr  # already serving it
    finally:
        server.stop()
