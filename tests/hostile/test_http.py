"""The "also" items of issue #29 at the HTTP level: every limit a request can hit before its
body is read reaches a client that sends its whole body first (urllib, a raw socket, curl) as a
JSON 4xx naming the real limit — never a reset connection; and every response carries the
security headers."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.service.conftest import png
from tests.service.server import Server

BODY_CAP, MAX_IMAGES, HEADER_CAP = 60_000, 3, 8192


@pytest.fixture(scope="module")
def srv(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-http")
    s = Server(tiny_bundle, root / "data", root / "log", max_body_bytes=BODY_CAP,
               max_images=MAX_IMAGES, max_header_bytes=HEADER_CAP).start()  # fmt: skip
    yield s
    s.stop()


def multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    boundary = "hostile-boundary"
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def image(i: int) -> tuple[str, str, bytes]:
    return ("images", f"{i}.png", png(seed=i))


BIG = 96 * 2**20  # past any amount a server would read "just in case" before answering
CASES = {
    # name: (headers, body, status, code, what the message must name)
    "body-cap": ({"Content-Type": "application/json"}, b"[" + b" " * BIG + b"]", 413,
                 "body_too_large", str(BODY_CAP)),
    "too-many-files": (None, [image(i) for i in range(MAX_IMAGES + 2)], 413, "too_many_images",
                       str(MAX_IMAGES)),
    "too-many-fields": (None, [("f", None, b"v")] * (4 * MAX_IMAGES + 17), 413,
                        "too_many_fields", str(4 * MAX_IMAGES + 16)),
    "field-size": (None, [("ids", None, b"x" * (BODY_CAP + 10))], 413, "body_too_large",
                   str(BODY_CAP)),
    "header-size": ({"Content-Type": "application/json", "X-Pad": "p" * (HEADER_CAP + 10)},
                    b"{}" + b" " * 2**20, 431, "headers_too_large", str(HEADER_CAP)),
}  # fmt: skip


def request_of(case: str) -> tuple[dict[str, str], bytes]:
    headers, body, *_ = CASES[case]
    if headers is None:
        body, ctype = multipart(body)
        headers = {"Content-Type": ctype}
    return headers, body


def via_urllib(url: str, headers: dict, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(f"{url}/v1/embeddings", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def via_socket(url: str, headers: dict, body: bytes) -> tuple[int, bytes]:
    """Writes the request line, headers and the whole body, and only then reads."""
    port = int(url.rsplit(":", 1)[1])
    head = "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in {**headers, "Content-Length": str(len(body))}.items()
    )
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def via_curl(url: str, headers: dict, body: bytes, tmp) -> tuple[int, bytes]:
    if shutil.which("curl") is None:
        pytest.skip("no curl")
    data = tmp / "body"
    data.write_bytes(body)
    flags = [a for k, v in headers.items() for a in ("-H", f"{k}: {v}")]
    res = subprocess.run(["curl", "-sS", "-o", str(tmp / "out"), "-w", "%{http_code}",
                          "--data-binary", f"@{data}", *flags, f"{url}/v1/embeddings"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, f"curl failed: {res.stderr}"
    return int(res.stdout), (tmp / "out").read_bytes()


CLIENTS = {"urllib": via_urllib, "socket": via_socket, "curl": via_curl}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("case", CASES)
def test_a_limit_hit_before_the_body_is_read_reaches_the_client(srv, case, client, tmp_path):
    headers, body = request_of(case)
    extra = (tmp_path,) if client == "curl" else ()
    status, answer = CLIENTS[client](srv.url, headers, body, *extra)
    _, _, want_status, code, names = CASES[case]
    assert status == want_status, answer[:300]
    err = json.loads(answer)["error"]
    assert err["code"] == code and names in err["message"], err
    with srv.client() as c:
        assert c.get("/livez").status_code == 200


def test_every_response_carries_the_security_headers(srv) -> None:
    with srv.client() as c:
        pages = {
            "/demo/": "default-src 'self'",
            "/docs": "cdn.jsdelivr.net",
            "/v1/model": "default-src 'none'",
            "/readyz": "default-src 'none'",
            "/no-such-route": "default-src 'none'",
        }
        for path, csp in pages.items():
            r = c.get(path)
            assert csp in r.headers.get("content-security-policy", ""), (path, r.headers)
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
            assert r.headers.get("x-frame-options") == "DENY", path
            assert r.headers.get("x-content-type-options") == "nosniff", path
        r = c.post("/v1/embeddings", content=b"x" * (BODY_CAP + 1),
                   headers={"content-type": "application/json"})  # fmt: skip
        assert r.status_code == 413 and r.headers.get("x-content-type-options") == "nosniff"
    port = int(srv.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * HEADER_CAP + b"\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431") and b"x-content-type-options: nosniff" in answer


def read_answers(s: socket.socket) -> bytes:
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    return answer


def test_a_kept_alive_connection_gets_the_431_and_is_not_reset(srv) -> None:
    """After an answered request uvicorn arms its keep-alive timer (5 s): an over-cap head next
    on that connection, its body sent slowly, must still be answered and never reset."""
    port = int(srv.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\nX-Pad: "
                  + b"p" * HEADER_CAP + b"\r\n\r\n")  # fmt: skip
        for _ in range(7):  # past the keep-alive timeout
            s.sendall(b"x" * 10_000)
            time.sleep(1)
        s.shutdown(socket.SHUT_WR)
        answer = read_answers(s)
    assert b"HTTP/1.1 431" in answer, answer[-300:]


def test_a_head_whose_end_arrives_in_pieces_is_not_counted_into_the_next(srv) -> None:
    port = int(srv.url.rsplit(":", 1)[1])
    head = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * (HEADER_CAP * 2 // 3)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        for piece in (head + b"\r", b"\n", b"\r", b"\n"):  # the end in one-byte pieces
            s.sendall(piece)
            time.sleep(0.05)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.sendall(head + b"\r\n\r\n")  # as large again: within the cap on its own
        assert s.recv(65536).startswith(b"HTTP/1.1 200")


def test_a_bad_pipelined_request_does_not_take_the_answer_of_the_one_before(srv) -> None:
    port = int(srv.url.rsplit(":", 1)[1])
    body = b'{"vectors": [[1' + b",0" * 31 + b']], "exit_depth": 1}'
    good = (b"POST /v1/search/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
    bad = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * (HEADER_CAP + 10) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(good + bad)  # no half-close: uvicorn takes that for a client gone
        answer = read_answers(s)  # the server shuts its side after the 431
    first, _, rest = answer.partition(b"\r\n")
    assert first.startswith(b"HTTP/1.1 200") and b'"results"' in answer, answer[:300]
    assert b"HTTP/1.1 431" in rest and answer.index(b'"results"') < answer.index(b"431")


@pytest.mark.parametrize("between", [0, 1, 2], ids=["alone", "one-queued-before", "two-queued"])
def test_a_pipelined_request_whose_body_breaks_answers_after_those_before(srv, between) -> None:
    """A malformed chunked body on a request queued behind others: every one before it is
    answered, in order, then the 400 — never in their place, never an app error."""
    port = int(srv.url.rsplit(":", 1)[1])
    get = b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"
    broken = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"ZZZ\r\nxx\r\n")  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(get * (between + 1) + broken)
        answer = read_answers(s)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)  # bodies end without a newline
    assert statuses == [b"200"] * (between + 1) + [b"400"], answer[-400:]
    assert b"internal_error" not in answer
