"""Slow and careless clients (issue #9): header and body read timeouts, and a 413 that reaches a
client writing its whole body before reading."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import httpx
import pytest

from tests.service.conftest import png
from tests.service.server import Server


@pytest.fixture(scope="module")
def impatient(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("impatient")
    s = Server(tiny_bundle, root / "data", root / "log", header_timeout_s=1, body_timeout_s=2,
               max_body_bytes=60_000).start()  # fmt: skip
    yield s
    s.stop()


def trickle(port: int, head: bytes, drip: bytes, until: float, answers: list) -> None:
    """Send ``head``, then one byte of ``drip`` every 0.2 s; record what the server says."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        sock.settimeout(0.2)
        for i in range(len(drip)):
            if time.monotonic() > until:
                answers.append(("still open", None))
                return
            try:
                got = sock.recv(4096)
            except TimeoutError:
                got = None
            except ConnectionError:
                got = b""
            if got is not None:
                answers.append(("closed", got))
                return
            try:
                sock.sendall(drip[i : i + 1])
            except OSError:
                answers.append(("closed", b""))
                return
        answers.append(("still open", None))


def run_trickles(port: int, n: int, head: bytes, drip: bytes, seconds: float) -> list:
    answers: list = []
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=trickle, args=(port, head, drip, until, answers))
               for _ in range(n)]  # fmt: skip
    for t in threads:
        t.start()
    return threads, answers


def test_slowloris_headers_are_dropped(impatient) -> None:
    head = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"
    threads, answers = run_trickles(impatient.port, 30, head, b"X-Slow: " + b"a" * 200, 8)
    assert httpx.get(f"{impatient.url}/livez", timeout=5).status_code == 200  # others answered
    for t in threads:
        t.join()
    assert len(answers) == 30 and all(state == "closed" for state, _ in answers), answers[:3]
    said = [body for _, body in answers if body]
    assert all(b"408" in body and b"request_timeout" in body for body in said)


def test_slow_bodies_get_408(impatient) -> None:
    head = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    threads, answers = run_trickles(impatient.port, 10, head, b"{" + b" " * 999, 8)
    with impatient.client() as c:  # meanwhile the server answers everyone else
        r = c.post("/v1/embeddings", files=[("images", ("x.png", png(), "image/png"))])
        assert r.status_code == 200
    for t in threads:
        t.join()
    assert len(answers) == 10 and all(state == "closed" for state, _ in answers), answers[:3]
    for _, body in answers:
        status, _, rest = body.partition(b"\r\n")
        assert b" 408 " in status and json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]
    assert httpx.get(f"{impatient.url}/readyz", timeout=5).status_code == 200


def test_a_client_that_sends_its_whole_body_first_gets_the_413(impatient) -> None:
    body = b"\0" * 300_000  # urllib writes all of it before reading the answer
    req = urllib.request.Request(f"{impatient.url}/v1/embeddings", data=body,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=30)
    assert caught.value.code == 413
    assert json.loads(caught.value.read())["error"]["code"] == "body_too_large"
    # The same without a Content-Length (chunked): the cap applies while streaming.
    conn = http.client.HTTPConnection("127.0.0.1", impatient.port, timeout=30)
    chunks = (body[i : i + 10_000] for i in range(0, len(body), 10_000))
    conn.request("POST", "/v1/embeddings", body=chunks, encode_chunked=True,
                 headers={"Content-Type": "application/json"})  # fmt: skip
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "body_too_large"
    conn.close()
