"""Cases 4 and 5 of issue #29: a read key that left writes open, and keys that leaked into the
writer lock file and the "another writer" error."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hostile.conftest import fill
from tests.service.conftest import digit_png
from tests.service.server import Server, free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY, READ_KEY = "adm-Zq81-secret-xyz", "rd-Pq55-secret-abc"
ADMIN, READER = {"X-API-Key": ADMIN_KEY}, {"Authorization": f"Bearer {READ_KEY}"}


def serve(bundle: Path, data: Path, *flags: str, env: dict | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess:  # fmt: skip
    """``python -m service`` that must exit by itself (a refusal)."""
    cmd = [sys.executable, "-m", "service", "--bundle", str(bundle), "--data-dir", str(data),
           "--port", str(free_port()), "--threads", "1", *flags]  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SDSSL_")}
    return subprocess.run(cmd, cwd=ROOT, env={**clean, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_a_read_key_without_an_admin_key_refuses_to_start(tiny_bundle, tmp_path) -> None:
    res = serve(tiny_bundle, tmp_path / "data", env={"SDSSL_READ_KEY": READ_KEY})
    assert res.returncode == 2, res.stderr[-2000:]
    assert "SDSSL_API_KEY" in res.stderr and "writes" in res.stderr
    assert READ_KEY not in res.stdout + res.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was written


@pytest.mark.parametrize("flag", ["--api-key", "--read-key"])
def test_a_key_given_as_a_flag_is_refused_without_echoing_it(tiny_bundle, tmp_path, flag) -> None:
    for argv in ([flag, ADMIN_KEY], [f"{flag}={ADMIN_KEY}"], [f"{flag[:-1]}={ADMIN_KEY}"]):
        res = serve(tiny_bundle, tmp_path / "data", *argv, timeout=30)
        assert res.returncode == 2, res.stderr[-2000:]
        assert ADMIN_KEY not in res.stdout + res.stderr, res.stderr
        assert "-file" in res.stderr or "unrecognized" in res.stderr, res.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--api-kye", "-S3cr3t-Key"],
        ["-xS3cr3t-Key"],
        ["--help=S3cr3t-Key"],
        ["--port=S3cr3t-Key"],
        ["--port", "S3cr3t-Key"],
    ],
    ids=["dash-value", "short-glued", "explicit-to-a-switch", "bad-int-glued", "bad-int"],
)
def test_no_argument_error_echoes_a_value(tiny_bundle, tmp_path, argv) -> None:
    """argparse quotes what it could not take; a mistyped flag's value may be a key."""
    res = serve(tiny_bundle, tmp_path / "data", *argv, timeout=30)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "S3cr3t" not in res.stdout + res.stderr, res.stderr


@pytest.fixture(scope="module")
def keyed(tiny_bundle, tmp_path_factory):
    """Both keys: the admin key from a file (as a Docker secret would give it), the read key
    from the environment; logs at info level, so that every line a key could reach is there."""
    root = tmp_path_factory.mktemp("hostile-keys")
    key_file = root / "admin.key"
    key_file.write_text(ADMIN_KEY + "\n")
    fill(tiny_bundle, root / "data", 5)
    s = Server(tiny_bundle, root / "data", root / "log", api_key_file=key_file, read_key=READ_KEY,
               log_level="info").start()  # fmt: skip
    yield s, root
    s.stop()


WRITES = {
    "add": lambda c, h: c.post(
        "/v1/items",
        files=[("images", ("x.png", digit_png(0), "image/png"))],
        data={"ids": "new"},
        headers=h,
    ),
    "delete": lambda c, h: c.delete("/v1/items/item-000001", headers=h),
    "reload": lambda c, h: c.post("/v1/admin/reload", json={"bundle": "/nowhere"}, headers=h),
    "rollout": lambda c, h: c.post("/v1/admin/rollout", json={"bundle": "/nowhere"}, headers=h),
    "jobs": lambda c, h: c.get("/v1/admin/jobs", headers=h),
    "job": lambda c, h: c.get("/v1/admin/jobs/0123456789abcdef", headers=h),
    "swap": lambda c, h: c.post("/v1/admin/jobs/0123456789abcdef/swap", headers=h),
    "cancel": lambda c, h: c.post("/v1/admin/jobs/0123456789abcdef/cancel", headers=h),
    "snapshot": lambda c, h: c.post("/v1/admin/snapshot", headers=h),
    "snapshots": lambda c, h: c.get("/v1/admin/snapshots", headers=h),
    "download": lambda c, h: c.get("/v1/admin/snapshots/all-20260101T000000000Z.tar", headers=h),
    "delete-snapshot": lambda c, h: c.delete(
        "/v1/admin/snapshots/all-20260101T000000000Z.tar", headers=h
    ),
}


@pytest.mark.parametrize("route", WRITES)
def test_writes_and_admin_routes_refuse_readers_and_strangers(keyed, route) -> None:
    server, _ = keyed
    with server.client() as c:
        for headers in ({}, READER, {"X-API-Key": "wrong"}):
            r = WRITES[route](c, headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
        assert WRITES[route](c, ADMIN).status_code != 401


def test_model_and_metrics_are_for_readers_when_a_read_key_is_set(keyed) -> None:
    server, _ = keyed
    with server.client() as c:
        for route in ("/v1/model", "/metrics"):
            assert c.get(route).status_code == 401
            assert c.get(route, headers=READER).status_code == 200
            assert c.get(route, headers=ADMIN).status_code == 200
        for route in ("/livez", "/readyz"):  # for orchestrators: no key, nothing held
            assert c.get(route).status_code == 200


def test_no_key_beyond_loopback_is_a_warned_choice(tiny_bundle, tmp_path) -> None:
    with Server(tiny_bundle, tmp_path / "open", tmp_path / "open.log", host="0.0.0.0",
                log_level="info") as s, s.client() as c:  # fmt: skip
        r = c.post("/v1/items", files=[("images", ("x.png", digit_png(0), "image/png"))],
                   data={"ids": "anyone"})  # fmt: skip
        assert r.status_code == 200  # open writes work: compose's network reaches them
    log = (tmp_path / "open.log").read_text()
    assert "no admin key (SDSSL_API_KEY)" in log and "0.0.0.0" in log
    with Server(tiny_bundle, tmp_path / "local", tmp_path / "local.log", log_level="info"):
        pass
    with Server(tiny_bundle, tmp_path / "keyed", tmp_path / "keyed.log", host="0.0.0.0",
                api_key=ADMIN_KEY, log_level="info"):  # fmt: skip
        pass
    assert "no admin key" not in (tmp_path / "local.log").read_text()
    assert "no admin key" not in (tmp_path / "keyed.log").read_text()


def test_keys_never_reach_a_file_a_log_or_an_error(keyed, tiny_bundle) -> None:
    server, root = keyed
    data = root / "data"
    with server.client() as c:
        r = c.post(
            "/v1/items",
            files=[("images", ("x.png", digit_png(3), "image/png"))],
            data={"ids": "k-1", "metadata": json.dumps({"n": 1})},
            headers=ADMIN,
        )
        assert r.status_code == 200, r.text
        assert c.get("/v1/items", headers=READER).status_code == 200
        assert c.get("/v1/items", headers={"X-API-Key": ADMIN_KEY + "x"}).status_code == 401
        assert c.post("/v1/admin/snapshot", headers=ADMIN).status_code == 200
        r = c.post("/v1/admin/rollout", json={"bundle": str(root)}, headers=ADMIN)
        assert r.status_code == 409
    # A second server on the same folder, keys in its environment: refused, naming the holder.
    second = serve(tiny_bundle, data, env={"SDSSL_API_KEY": ADMIN_KEY, "SDSSL_READ_KEY": READ_KEY})
    assert second.returncode == 3 and "another writer" in second.stderr, second.stderr[-2000:]
    assert f"pid {server.proc.pid}" in second.stderr
    lock = next(data.glob("*/writer.lock"))
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert set(json.loads(lock.read_text())) == {"pid", "since"}
    places = {str(p): p.read_bytes() for p in data.rglob("*") if p.is_file()}
    places["server log"] = (root / "log").read_bytes()
    places["second server"] = (second.stdout + second.stderr).encode()
    for key in (ADMIN_KEY, READ_KEY):
        leaked = [where for where, content in places.items() if key.encode() in content]
        assert not leaked, f"{key} found in {leaked}"
