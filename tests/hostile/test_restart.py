"""Case 8 of issue #29: after the active bundle's folder was moved away, a restart served the
previous bundle with /readyz 200. The server serves what the data dir records as active, or it
is not ready and says why."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from export.manifest import bundle_id
from tests.service.conftest import digit_png
from tests.service.server import Server

KEY = "restart-admin"
ADMIN = {"X-API-Key": KEY}


def add(c, item_id: str, seed: int) -> None:
    r = c.post("/v1/items", files=[("images", ("x.png", digit_png(seed), "image/png"))],
               data={"ids": item_id}, headers=ADMIN)  # fmt: skip
    assert r.status_code == 200, r.text


@pytest.fixture
def bundles(tiny_bundle, tiny_bundle_b, tmp_path):
    """Copies of the two bundles that a test may move away."""
    a, b = tmp_path / "bundles" / "a", tmp_path / "bundles" / "b"
    shutil.copytree(tiny_bundle, a)
    shutil.copytree(tiny_bundle_b, b)
    return a, b


def not_ready(s: Server) -> dict:
    """/readyz's 503 once loading is over (its reason), and what a search gets meanwhile."""
    with s.client() as c:
        for _ in range(300):
            r = c.get("/readyz")
            assert r.status_code == 503, f"ready: {r.text}"
            if r.json()["error"]["message"] != "loading":
                break
            time.sleep(0.1)
        search = c.post("/v1/search", json={"vector": [1.0] + [0.0] * 31, "exit_depth": 1})
        assert search.status_code == 503 and search.json()["error"]["code"] == "not_ready"
        return r.json()["error"]


def test_a_moved_away_rollout_target_is_not_ready_never_the_old_bundle(bundles, tmp_path):
    a, b = bundles
    data, log = tmp_path / "data", tmp_path / "log"
    with Server(a, data, log, api_key=KEY) as s, s.client() as c:
        for i in range(6):
            add(c, f"i-{i}", i)
        job = c.post("/v1/admin/rollout", json={"bundle": str(b)}, headers=ADMIN).json()
        while c.get(f"/v1/admin/jobs/{job['id']}", headers=ADMIN).json()["state"] != "swapped":
            time.sleep(0.1)
        add(c, "after-rollout", 9)  # only b's index holds it
    b.rename(tmp_path / "b-moved")
    s = Server(a, data, log, api_key=KEY).start(until="livez")
    try:
        err = not_ready(s)
        assert bundle_id(tmp_path / "b-moved")[:12] in err["message"], err
        assert "missing" in err["message"] and str(tmp_path) not in err["message"], err
    finally:
        s.stop()
    assert str(b) in log.read_text()  # the log line names the folder for the operator
    (tmp_path / "b-moved").rename(b)
    with Server(a, data, log, api_key=KEY) as s, s.client() as c:
        assert c.get("/v1/model").json()["model"] == bundle_id(b)
        assert c.get("/v1/items/after-rollout").status_code == 200


def test_a_reload_is_remembered_across_a_restart(bundles, tmp_path) -> None:
    a, b = bundles
    data, log = tmp_path / "data", tmp_path / "log"
    with Server(a, data, log, api_key=KEY) as s, s.client() as c:
        add(c, "on-a", 1)
        r = c.post("/v1/admin/reload", json={"bundle": str(b)}, headers=ADMIN)
        assert r.status_code == 200, r.text
        add(c, "after-reload", 2)  # acknowledged into b's index
    with Server(a, data, log, api_key=KEY) as s, s.client() as c:
        assert c.get("/v1/model").json()["model"] == bundle_id(b)
        assert c.get("/v1/items/after-reload").status_code == 200
        r = c.post("/v1/admin/reload", json={"bundle": str(a)}, headers=ADMIN)  # and back
        assert r.status_code == 200
    with Server(b, data, log, api_key=KEY) as s, s.client() as c:
        assert c.get("/v1/model").json()["model"] == bundle_id(a)


def test_an_unreadable_serving_record_is_not_ready(bundles, tmp_path) -> None:
    a, b = bundles
    data, log = tmp_path / "data", tmp_path / "log"
    data.mkdir()
    (data / "serving.json").write_text('{"bundle": 3')
    s = Server(a, data, log).start(until="livez")
    try:
        err = not_ready(s)
        assert "serving.json" in err["message"] and "cannot be read" in err["message"], err
    finally:
        s.stop()
    (data / "serving.json").write_text(json.dumps({"bundle": str(b), "bundle_id": "f" * 64,
                                                   "replaces": [bundle_id(a)]}))  # fmt: skip
    s = Server(a, data, log, api_key=KEY).start(until="livez")
    try:
        err = not_ready(s)
        assert "another bundle" in err["message"], err
        with s.client() as c:  # the operator reloads the bundle that should serve
            r = c.post("/v1/admin/reload", json={"bundle": str(b)}, headers=ADMIN)
            assert r.status_code == 200, r.text
            assert c.get("/readyz").status_code == 200
    finally:
        s.stop()
    with Server(a, data, log) as s, s.client() as c:  # and a restart remembers it
        assert c.get("/v1/model").json()["model"] == bundle_id(b)


def test_a_reload_when_the_configured_bundle_is_unreadable_serves_and_can_repeat(bundles, tmp_path):
    """Nothing serves and SDSSL_BUNDLE's manifest is gone: a reload still serves the bundle it
    names (not a 500 that leaves its index locked), and another reload after it works."""
    a, b = bundles
    data, log = tmp_path / "data", tmp_path / "log"
    data.mkdir()
    (data / "serving.json").write_text("{")
    s = Server(a, data, log, api_key=KEY).start(until="livez")
    try:
        not_ready(s)
        (a / "manifest.json").unlink()
        with s.client() as c:
            for target in (b, b):
                r = c.post("/v1/admin/reload", json={"bundle": str(target)}, headers=ADMIN)
                assert r.status_code == 200, r.text
            assert c.get("/readyz").status_code == 200
    finally:
        s.stop()
