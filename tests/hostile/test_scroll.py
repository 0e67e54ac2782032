"""Case 6 of issue #29: the listing cursor was base64 of an internal row number — any number
was accepted, a rollout skipped a third of the items, and concurrent writes repeated items.
A scroll must give every item that existed throughout and was not replaced exactly once, and a
replaced item at most once, across writes and across a rollout."""

from __future__ import annotations

import base64
import json
import random
import threading
import time

import pytest

from tests.hostile.conftest import assert_error, fill
from tests.service.conftest import png
from tests.service.server import Server

KEY = "scroll-admin"
ADMIN = {"X-API-Key": KEY}
N = 400


def scroll(c, limit: int, filter: dict | None = None, between=None) -> list[str]:
    """Every page's ids in order; ``between(page_number)`` runs after each page."""
    seen, cursor, page = [], None, 0
    while True:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {}),
                  **({"filter": json.dumps(filter)} if filter else {})}  # fmt: skip
        r = c.get("/v1/items", params=params)
        assert r.status_code == 200, r.text
        seen += [it["id"] for it in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return seen
        page += 1
        if between is not None:
            between(page)


@pytest.fixture(scope="module")
def srv(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-scroll")
    fill(tiny_bundle, root / "data", N, lambda i: {"n": i, "odd": i % 2})
    s = Server(tiny_bundle, root / "data", root / "log", api_key=KEY).start()
    yield s
    s.stop()


def test_cursors_not_given_out_by_this_server_are_422(srv, tiny_bundle, tmp_path) -> None:
    with srv.client() as c:
        first = c.get("/v1/items", params={"limit": 5}).json()
        good = first["next_cursor"]
        forged = [
            base64.urlsafe_b64encode(b"n3").decode().rstrip("="),  # main's own format
            base64.urlsafe_b64encode(b"n" + b"9" * 18).decode().rstrip("="),
            good[:-2] + ("AA" if not good.endswith("AA") else "BB"),  # altered
            "%%%not-base64",
            "A" * 40,
        ]
        for cursor in forged:
            err = assert_error(c.get("/v1/items", params={"cursor": cursor}), 422,
                               "invalid_cursor")  # fmt: skip
            assert "cursor" in err["message"]
        # a cursor from a filtered listing does not continue another listing
        filtered = c.get("/v1/items", params={"limit": 5, "filter": '{"odd": 1}'}).json()
        r = c.get("/v1/items", params={"cursor": filtered["next_cursor"]})
        assert_error(r, 422, "invalid_cursor", "filter")
        again = c.get("/v1/items", params={"limit": 5, "filter": '{"odd": 1}',
                                           "cursor": filtered["next_cursor"]})  # fmt: skip
        assert again.status_code == 200
    # a cursor of another data dir (another server) is refused here
    with Server(tiny_bundle, tmp_path / "other", tmp_path / "log") as other, other.client() as o:
        fill_one = o.post("/v1/items", files=[("images", ("x.png", png(seed=1), "image/png")),
                                              ("images", ("y.png", png(seed=2), "image/png"))],
                          data={"ids": ["a", "b"]})  # fmt: skip
        assert fill_one.status_code == 200
        theirs = o.get("/v1/items", params={"limit": 1}).json()["next_cursor"]
    with srv.client() as c:
        assert_error(c.get("/v1/items", params={"cursor": theirs}), 422, "invalid_cursor")


def test_a_scroll_under_writes_gives_each_item_once(srv) -> None:
    """Adds, replaces and deletes run beside a scroll of small pages."""
    rng = random.Random(7)
    replaced, deleted, stop = set(), set(), threading.Event()

    def writer() -> None:
        with srv.client() as w:
            n = 0
            while not stop.is_set():
                n += 1
                victim = f"item-{rng.randrange(N):06d}"
                if n % 5 == 0:
                    if w.delete(f"/v1/items/{victim}", headers=ADMIN).status_code == 200:
                        deleted.add(victim)
                    continue
                new = n % 2 == 0
                item = f"new-{n:05d}" if new else victim
                r = w.post(
                    "/v1/items",
                    files=[("images", ("x.png", png(seed=n), "image/png"))],
                    data={"ids": item, "metadata": json.dumps({"n": n})},
                    headers=ADMIN,
                )
                assert r.status_code == 200, r.text
                if not new:
                    replaced.add(item)

    t = threading.Thread(target=writer)
    t.start()
    try:
        with srv.client() as c:
            seen = scroll(c, 9, between=lambda page: time.sleep(0.01))
    finally:
        stop.set()
        t.join()
    assert len(seen) == len(set(seen)), "an item came twice"
    throughout = {f"item-{i:06d}" for i in range(N)} - replaced - deleted
    assert throughout <= set(seen), f"skipped: {sorted(throughout - set(seen))[:10]}"
    assert len(replaced) > 5 and len(deleted) > 2  # the writes really ran beside the scroll


def test_a_scroll_across_a_rollout_gives_each_item_once(tiny_bundle, tiny_bundle_b, tmp_path):
    with Server(tiny_bundle, tmp_path / "data", tmp_path / "log", api_key=KEY) as s, \
            s.client() as c:  # fmt: skip
        ids = [f"r-{i:04d}" for i in range(120)]
        # items with kept inputs, which a rollout re-embeds; the first half replaced since, so
        # the new bundle's insertion order is not the old one's (main's cursor skipped)
        for start in [*range(0, len(ids), 40), 0, 40]:
            part = ids[start : start + 40]
            files = [("images", (f"{i}.png", png(seed=n), "image/png")) for n, i in enumerate(part)]
            assert (
                c.post("/v1/items", files=files, data={"ids": part}, headers=ADMIN).status_code
                == 200
            )
        models = set()

        def roll(page: int) -> None:
            models.add(c.get("/v1/items", params={"limit": 0}).json()["model"])
            if page == 3:  # mid-scroll: move the collection to the other bundle
                job = c.post("/v1/admin/rollout", json={"bundle": str(tiny_bundle_b)},
                             headers=ADMIN).json()  # fmt: skip
                while (state := c.get(f"/v1/admin/jobs/{job['id']}", headers=ADMIN).json()[
                        "state"]) not in ("swapped", "failed"):  # fmt: skip
                    time.sleep(0.1)
                assert state == "swapped"

        seen = scroll(c, 10, between=roll)
        models.add(c.get("/v1/items", params={"limit": 0}).json()["model"])
    assert len(models) == 2, "the scroll did not cross the rollout"
    assert sorted(seen) == ids and len(seen) == len(ids)
