"""What an operator reads: a request id on every answer and log line (the client's, when it
sends a plain one), JSON logs on request, and the process's own metrics."""

from __future__ import annotations

import json
import re

from tests.service.conftest import digit_png
from tests.service.server import Server


def test_request_ids_json_logs_and_process_metrics(tiny_bundle, tmp_path) -> None:
    log = tmp_path / "log"
    with Server(tiny_bundle, tmp_path / "data", log, log_level="info",
                log_format="json") as s, s.client() as c:  # fmt: skip
        mine = c.get("/v1/items/missing", headers={"X-Request-ID": "trace-42.a:b"})
        assert mine.status_code == 404 and mine.headers["x-request-id"] == "trace-42.a:b"
        fresh = c.post("/v1/embeddings", files=[("images", ("a.png", digit_png(1), "image/png"))])
        assert re.fullmatch(r"[0-9a-f]{16}", fresh.headers["x-request-id"])
        odd = c.get("/livez", headers={"X-Request-ID": "x" * 200})  # too long: replaced
        assert re.fullmatch(r"[0-9a-f]{16}", odd.headers["x-request-id"])
        big = c.post("/v1/embeddings", content=b"x" * (21 * 2**20),
                     headers={"X-Request-ID": "big-1"})  # fmt: skip
        assert big.status_code == 413 and big.headers["x-request-id"] == "big-1"
        metrics = c.get("/metrics").text
        assert "process_resident_memory_bytes" in metrics and "process_open_fds" in metrics
        assert "python_info" in metrics
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message", "request_id"} <= set(x)
                         for x in lines)  # fmt: skip
    access = [x for x in lines if x["logger"] == "uvicorn.access"]
    assert any(x["request_id"] == "trace-42.a:b" and "/v1/items/missing" in x["message"]
               for x in access), access[-5:]  # fmt: skip
    assert any(x["request_id"] == fresh.headers["x-request-id"] for x in access)


def test_a_data_dir_holding_another_bundles_items_is_named_at_start(tiny_bundle, tmp_path) -> None:
    """A default bundle that changed under a data dir (no rollout recorded it) leaves the old
    bundle's items unserved: the log says so and how to move them."""
    data, log = tmp_path / "data", tmp_path / "log"
    other = data / ("ab" * 32)
    other.mkdir(parents=True)
    (other / "items.sqlite").write_bytes(b"")  # only its presence is read
    with Server(tiny_bundle, data, log):
        pass
    text = log.read_text()
    assert "also holds the indexes of 1 other bundle(s) (abababababab)" in text, text[-2000:]
    assert "sdssl-reindex BUNDLE" in text
