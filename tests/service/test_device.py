"""The device never lies (issue #10): what is asked for is what runs, or the server refuses."""

from __future__ import annotations

import time

import pytest

from tests.service.conftest import digit_png
from tests.service.server import Server


def test_cuda_without_a_cuda_provider_refuses_to_start(tiny_bundle, tmp_path) -> None:
    s = Server(tiny_bundle, tmp_path / "data", tmp_path / "log", device="cuda")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="server exited"):
        s.start()
    assert s.proc.returncode == 3 and time.monotonic() - started < 60
    errors = [ln for ln in (tmp_path / "log").read_text().splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and "SDSSL_DEVICE=cuda" in errors[0], errors
    assert "no CUDA provider" in errors[0]


def test_auto_reports_the_device_each_graph_really_runs_on(server) -> None:
    with server.client() as c:
        assert c.get("/readyz").json()["device"] == "cpu"
        model = c.get("/v1/model").json()
        assert model["device"] == "cpu" and model["index_device"] == "cpu"
        graphs = {e["file"] for e in model["manifest"]["exits"]} | {"all_exits.onnx"}
        graphs |= {s["file"] for s in model["manifest"]["segments"]}
        assert set(model["providers"]) == graphs
        assert all(p == ["CPUExecutionProvider"] for p in model["providers"].values())
        metrics = c.get("/metrics").text
        line = 'sdssl_engine_sessions{device="cpu",provider="CPUExecutionProvider"}'
        assert f"{line} {float(len(graphs))}" in metrics


def test_hnsw_with_a_gpu_requested_searches_on_the_cpu(tiny_bundle, tmp_path) -> None:
    s = Server(tiny_bundle, tmp_path / "data", tmp_path / "log", device="auto",
               index_factory="HNSW16", log_level="info").start()  # fmt: skip
    try:
        with s.client() as c:
            for i in range(5):
                r = c.post("/v1/items", files=[("images", ("x.png", digit_png(i), "image/png"))],
                           data={"ids": f"h-{i}"})  # fmt: skip
                assert r.status_code == 200
            r = c.post("/v1/search", files=[("image", ("q.png", digit_png(3), "image/png"))],
                       data={"k": "1"})  # fmt: skip
            assert r.json()["results"][0]["id"] == "h-3"
            assert c.get("/v1/model").json()["index_device"] == "cpu"
        assert "FAISS has no GPU version of HNSW16" in (tmp_path / "log").read_text()
    finally:
        s.stop()
