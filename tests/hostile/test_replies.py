"""Case 3 of issue #29: a batch search of 64 queries × k = 1000 over items with 15 KB of
metadata built a 921 MiB answer (server RSS +1.9 GiB). Hits per request and answer bytes are
capped (a 4xx naming the cap), metadata can be left out, and the server's memory stays bounded."""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path

import pytest

from tests.hostile.conftest import assert_error, fill
from tests.service.server import Server

N = 300
DEFAULT_RESULTS, DEFAULT_REPLY = 10_000, 32 * 2**20  # the documented defaults


def heavy(i: int) -> dict:
    return {"i": i, "blob": "x" * 15_000}  # 15 KB, under the 16 KiB metadata cap


@pytest.fixture(scope="module")
def srv(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-replies")
    fill(tiny_bundle, root / "data", N, heavy)
    s = Server(tiny_bundle, root / "data", root / "log").start()
    yield s
    s.stop()


def batch(c, queries: int, k: int, **extra):
    vectors = [[1.0 if j == q % 32 else 0.0 for j in range(32)] for q in range(queries)]
    return c.post("/v1/search/batch", json={"vectors": vectors, "exit_depth": 1, "k": k, **extra})


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_queries_times_k_past_the_cap_is_422(srv) -> None:
    with srv.client() as c:
        assert_error(batch(c, 64, 1000), 422, "too_many_results", str(DEFAULT_RESULTS))
        assert_error(batch(c, 64, 157), 422, "too_many_results", "10048")
        ok = batch(c, 64, 156, metadata=False)  # 9,984 hits: within the cap
        assert ok.status_code == 200, ok.text


def test_an_answer_past_the_byte_cap_is_422_and_metadata_can_be_left_out(srv) -> None:
    with srv.client() as c:
        # 64 x 150 hits x 15 KB = 144 MB of metadata
        assert_error(batch(c, 64, 150), 422, "reply_too_large", str(DEFAULT_REPLY))
        r = batch(c, 64, 150, metadata=False)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == 64 and all(len(hits) == 150 for hits in results)
        assert all("metadata" not in h for hits in results for h in hits)
        assert len(r.content) < 2 * 2**20
        one = c.post("/v1/search", json={"vector": [1.0] + [0.0] * 31, "exit_depth": 1,
                                         "k": 1000})  # fmt: skip
        assert one.status_code == 200  # every item's metadata: 4.5 MB, within the cap
        hits = one.json()["results"]
        assert len(hits) == N and all(h["metadata"] == heavy(h["metadata"]["i"]) for h in hits)
        fields = {
            "vector": "[1" + ",0" * 31 + "]",
            "exit_depth": "1",
            "k": "5",
            "metadata": "false",
        }
        multipart = c.post("/v1/search", files={k: (None, v) for k, v in fields.items()})
        assert multipart.status_code == 200 and "metadata" not in multipart.json()["results"][0]


def test_server_memory_stays_bounded_whatever_is_asked(srv) -> None:
    before = peak_rss_mib(srv.proc.pid)

    def hostile(_: int) -> int:
        with srv.client() as c:
            return batch(c, 64, 1000).status_code + batch(c, 64, 150).status_code

    with cf.ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(hostile, range(8)))
    assert set(codes) == {422 + 422}
    grown = peak_rss_mib(srv.proc.pid) - before
    assert grown < 200, f"peak RSS grew {grown:.0f} MiB"


@pytest.fixture(scope="module")
def small(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-replies-small")
    fill(tiny_bundle, root / "data", N, heavy)
    s = Server(tiny_bundle, root / "data", root / "log", max_reply_bytes=100_000).start()
    yield s
    s.stop()


def test_listing_pages_stop_short_of_the_byte_cap_and_scroll_everything(small) -> None:
    with small.client() as c:
        seen, cursor, pages = [], None, 0
        while True:
            r = c.get("/v1/items", params={"limit": 1000, **({"cursor": cursor} if cursor else {})})
            assert r.status_code == 200, r.text
            assert len(r.content) < 100_000 + 2000
            seen += [it["id"] for it in r.json()["items"]]
            pages += 1
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == [f"item-{i:06d}" for i in range(N)] and pages >= N // 7
        err = assert_error(c.post("/v1/search", json={"vector": [1.0] + [0.0] * 31,
                                                      "exit_depth": 1, "k": 10}),
                           422, "reply_too_large", "100000")  # fmt: skip
        assert "metadata=false" in err["message"]
