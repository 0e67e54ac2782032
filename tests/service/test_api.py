"""Every route against a real server, over real HTTP."""

from __future__ import annotations

import base64
import http.client
import socket
import time

import httpx
import numpy as np

from tests.service.conftest import digit_png, png
from tests.service.server import Server


def files(*blobs: bytes, field: str = "images"):
    return [(field, (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]


def test_health_docs_and_model(client) -> None:
    assert client.get("/livez").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and len(ready["model"]) == 64
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/v1/embeddings", "/v1/search", "/v1/items", "/v1/items/{item_id}",
                 "/v1/model", "/v1/admin/reload"):  # fmt: skip
        assert path in spec["paths"]
    schemes = spec["components"]["securitySchemes"]  # /docs' Authorize knows both ways
    assert schemes["APIKey"] == {**schemes["APIKey"], "type": "apiKey", "in": "header",
                                 "name": "X-API-Key"}  # fmt: skip
    assert schemes["Bearer"]["scheme"].lower() == "bearer"
    for path, method in (("/v1/admin/reload", "post"), ("/v1/search", "post")):
        assert {k for r in spec["paths"][path][method]["security"] for k in r} == set(schemes)
    assert "security" not in spec["paths"]["/livez"]["get"]
    model = client.get("/v1/model").json()
    assert model["manifest"]["model"]["depth"] == 4 and model["device"] == "cpu"
    assert [c["exit_depth"] for c in model["curve"]] == [1, 2, 3, 4]
    assert all(c["knn_top1"] is not None for c in model["curve"])
    keys = {(r["exit_depth"], r["batch_size"]) for r in model["latency"]}
    assert {(d, b) for d in (None, 1, 2, 3, 4) for b in (1, 2, 4, 8, 16, 32)} <= keys


def test_embeddings_multipart_and_json_agree(client) -> None:
    a, b = digit_png(0), digit_png(1)
    r = client.post("/v1/embeddings", files=files(a, b), data={"exit_depth": "2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["exit_depth"] == 2 and body["dim"] == 32 and len(body["embeddings"]) == 2
    assert r.headers["x-exit-depth"] == "2" and float(r.headers["x-elapsed-ms"]) > 0
    emb = np.array(body["embeddings"])
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    j = client.post(
        "/v1/embeddings",
        json={"images": [base64.b64encode(a).decode(), base64.b64encode(b).decode()]},
        params={"exit_depth": 2},
    ).json()
    assert np.allclose(np.array(j["embeddings"]), emb, atol=1e-6)
    full = client.post("/v1/embeddings", files=files(a)).json()
    assert full["exit_depth"] == 4 and full["timing"]["budget_met"] is None


def test_budget_extremes_and_honesty(client) -> None:
    img = files(digit_png(3))
    tiny = client.post("/v1/embeddings", files=img, data={"budget_ms": "0.001"}).json()
    assert tiny["exit_depth"] == 1 and tiny["timing"]["budget_met"] is False
    big = client.post("/v1/embeddings", files=img, data={"budget_ms": "60000"}).json()
    assert big["exit_depth"] == 4 and big["timing"]["budget_met"] is True
    for budget in (0.5, 2, 5, 10, 20, 50, 100, 1000):
        t = client.post("/v1/embeddings", files=img, params={"budget_ms": budget}).json()["timing"]
        if t["budget_met"]:
            assert t["predicted_ms"] <= budget and t["elapsed_ms"] <= budget


def test_items_add_search_replace_delete(client) -> None:
    blobs = [digit_png(i) for i in range(4)]
    r = client.post(
        "/v1/items",
        files=files(*blobs),
        data={"ids": [f"t-{i}" for i in range(4)], "metadata": [f'{{"n": {i}}}' for i in range(4)]},
    )
    assert r.status_code == 200, r.text
    assert [i["replaced"] for i in r.json()["items"]] == [False] * 4
    for depth in (1, 4):  # items are embedded at depth 4 (the gallery depth) only
        hits = client.post(
            "/v1/search", files=files(blobs[2], field="image"), data={"exit_depth": depth, "k": 3}
        ).json()["results"]
        assert len(hits) == 3 and "t-2" in {h["id"] for h in hits}  # a bridged query: near
        if depth == 4:  # the same image at the gallery depth: itself
            assert hits[0]["id"] == "t-2" and abs(hits[0]["score"] - 1.0) < 1e-4
            assert hits[0]["metadata"] == {"n": 2}
    # Search by vector at a depth equals search by the image.
    emb = client.post("/v1/embeddings", files=files(blobs[1]), data={"exit_depth": 3}).json()
    by_vec = client.post("/v1/search", json={"vector": emb["embeddings"][0], "exit_depth": 3})
    assert by_vec.json()["results"][0]["id"] == "t-1"
    # Replace t-1 with digit 3's image: searching digit 3 now finds t-3 and t-1 at ~1.0.
    r = client.post("/v1/items", files=files(blobs[3]), data={"ids": "t-1"})
    assert r.json()["items"] == [{"id": "t-1", "replaced": True}]
    assert client.get("/v1/items/t-1").json()["metadata"] is None
    hits = client.post("/v1/search", files=files(blobs[3], field="image"), data={"k": 2}).json()
    assert {h["id"] for h in hits["results"]} == {"t-1", "t-3"}
    assert client.delete("/v1/items/t-1").json() == {"id": "t-1", "deleted": True}
    assert client.get("/v1/items/t-1").status_code == 404
    assert client.delete("/v1/items/t-1").status_code == 404
    ids = {h["id"] for h in client.post(
        "/v1/search", files=files(blobs[3], field="image"), data={"k": 10}
    ).json()["results"]}  # fmt: skip
    assert "t-1" not in ids and {"t-0", "t-2", "t-3"} <= ids


def _raw_post(port: int, path: str, **kwargs) -> bytes:
    """The bytes of an HTTP/1.1 POST as httpx would send them, closing the connection after."""
    req = httpx.Request("POST", f"http://127.0.0.1:{port}{path}", **kwargs)
    head = "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
    return f"POST {path} HTTP/1.1\r\n{head}connection: close\r\n\r\n".encode() + req.read()


def test_concurrent_requests_are_batched(tiny_bundle, tmp_path) -> None:
    """Requests in flight together share a batch. Eight requests are admitted (headers and all
    but the last byte of their bodies sent) before any is complete, then finished together; a
    long ``max_wait_ms`` keeps a loaded machine from splitting them by the clock alone."""
    with Server(tiny_bundle, tmp_path / "data", tmp_path / "log", max_wait_ms=1000) as s:
        raw = _raw_post(s.port, "/v1/embeddings", files=files(png(seed=7)),
                        data={"exit_depth": "3"})  # fmt: skip
        socks = [socket.create_connection(("127.0.0.1", s.port), timeout=60) for _ in range(8)]
        for sock in socks:
            sock.sendall(raw[:-1])
        time.sleep(0.3)
        for sock in socks:
            sock.sendall(raw[-1:])
        codes = []
        for sock in socks:
            with sock:
                resp = http.client.HTTPResponse(sock)
                resp.begin()
                codes.append(resp.status)
                resp.read()
        assert codes == [200] * 8
        with s.client() as c:
            metrics = c.get("/metrics").text
    count = sum_ = 0.0
    for line in metrics.splitlines():
        if line.startswith('sdssl_batch_size_count{exit_depth="3"}'):
            count = float(line.split()[-1])
        if line.startswith('sdssl_batch_size_sum{exit_depth="3"}'):
            sum_ = float(line.split()[-1])
    assert (sum_, count) == (8, 1)  # one batch of eight
    assert "sdssl_request_seconds_bucket" in metrics and "sdssl_index_items" in metrics


def _has_example(node, schemas, seen=frozenset()) -> bool:
    if isinstance(node, dict):
        if "example" in node or "examples" in node:
            return True
        ref = node.get("$ref", "").rsplit("/", 1)[-1]
        if ref and ref not in seen:
            return _has_example(schemas[ref], schemas, seen | {ref})
        return any(_has_example(v, schemas, seen) for v in node.values())
    return isinstance(node, list) and any(_has_example(v, schemas, seen) for v in node)


def test_every_api_route_documents_examples(client) -> None:
    """/docs shows an example of every /v1 request body, parameter and successful answer."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    missing = []
    for path, ops in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            if "requestBody" in op and not _has_example(op["requestBody"], schemas):
                missing.append(f"{where}: request body")
            missing += [f"{where}: parameter {p['name']}" for p in op.get("parameters", [])
                        if not _has_example(p, schemas)]  # fmt: skip
            ok = next(v for k, v in op["responses"].items() if k.startswith("2"))
            binary = any(t.startswith("image/") or t == "application/x-tar"
                         for t in ok.get("content", {}))  # fmt: skip
            if not binary and not _has_example(ok, schemas):
                missing.append(f"{where}: response")
    assert not missing, missing


def test_large_json_bodies_parse_off_the_loop_with_the_same_answers(client) -> None:
    """Bodies over 256 KiB are parsed on a worker thread: same embeddings, same errors."""
    big = png(420, 420, seed=3)  # ~530 KB of PNG, ~700 KB as base64
    assert len(base64.b64encode(big)) > 256 * 1024
    by_json = client.post("/v1/embeddings", json={"images": [base64.b64encode(big).decode()]},
                          params={"exit_depth": 3})  # fmt: skip
    by_form = client.post("/v1/embeddings", files=files(big), data={"exit_depth": "3"})
    assert by_json.status_code == 200, by_json.text
    assert np.allclose(by_json.json()["embeddings"], by_form.json()["embeddings"], atol=1e-6)
    nested = b'{"images": [], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = client.post("/v1/embeddings", content=nested, headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 422) and "error" in r.json()
    r = client.post("/v1/embeddings", json={"images": ["!" * 300_000]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_base64"
