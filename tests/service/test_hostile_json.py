"""Hostile JSON, metadata and ids (issue #9): each is a 4xx with the JSON error shape, and
nothing already acknowledged stops being served."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest

from tests.service.conftest import digit_png, png
from tests.service.server import Server

PNG = png(seed=5)
B64 = base64.b64encode(PNG).decode()
DEEP = "[" * 100_000 + "]" * 100_000
HUGE = "9" * 5000  # past Python's 4,300-digit int conversion limit


@pytest.fixture(scope="module")
def srv(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-json")
    s = Server(tiny_bundle, root / "data", root / "log").start()
    with s.client() as c:
        r = c.post("/v1/items", files=[("images", ("k.png", digit_png(1), "image/png"))],
                   data={"ids": "keeper", "metadata": '{"label": 1}'})  # fmt: skip
        assert r.status_code == 200
    yield s
    s.stop()


def still_serving(c) -> None:
    """Other clients' view: the acknowledged item is there and search still answers with it."""
    assert c.get("/v1/items/keeper").json()["metadata"] == {"label": 1}
    r = c.post("/v1/search", files=[("image", ("q.png", digit_png(1), "image/png"))],
               data={"k": "5"})  # fmt: skip
    assert r.status_code == 200 and r.json()["results"][0]["id"] == "keeper", r.text


def assert_error(r, status: int | tuple[int, ...], code: str | None = None) -> None:
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, r.text
    err = r.json()["error"]
    assert err["message"] and (code is None or err["code"] == code), err


def add_multipart(c, item_id: str, metadata: str | None = None):
    data = {"ids": item_id} | ({"metadata": metadata} if metadata is not None else {})
    return c.post("/v1/items", files=[("images", ("x.png", PNG, "image/png"))], data=data)


def post_json(c, path: str, text: str):
    return c.post(path, content=text.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("metadata", "why"),
    [
        ('{"a": NaN}', "NaN"),
        ('{"a": -Infinity}', "Infinity"),
        ('{"a": 1e999}', "out of range"),
        ("[" * 900 + "]" * 900, "nested deeper than 16"),
        ("[" * 17 + "]" * 17, "nested deeper than 16"),
        ('{"a": "\\ud800"}', "not encodable"),
        ('{"a": "' + "x" * 20_000 + '"}', "the limit is 16384"),
        ('{"a": ' + HUGE + "}", "more than 64 digits"),
        ('{"a": 18446744073709551616}', "beyond 64 bits"),
    ],
    ids=[
        "nan",
        "-inf",
        "1e999",
        "deep-900",
        "deep-17",
        "lone-surrogate",
        "20kB",
        "5000-digits",
        "2**64",
    ],
)
def test_bad_metadata_is_422_and_search_keeps_working(srv, metadata, why) -> None:
    with srv.client() as c:
        r = add_multipart(c, "bad", metadata)
        assert_error(r, 422)
        assert why in r.json()["error"]["message"]
        assert c.get("/v1/items/bad").status_code == 404
        still_serving(c)


def test_metadata_at_the_limits_is_kept_exactly(srv) -> None:
    doc = {"deep": json.loads("[" * 15 + "]" * 15), "text": "é\u2028" + "x" * 16_000}
    with srv.client() as c:
        assert add_multipart(c, "edge", json.dumps(doc)).status_code == 200
        assert c.get("/v1/items/edge").json()["metadata"] == doc
        assert c.delete("/v1/items/edge").status_code == 200


def test_json_body_with_nan_metadata_is_422(srv) -> None:
    body = json.dumps({"images": [B64], "ids": ["nan-json"], "metadata": [{"a": float("nan")}]})
    with srv.client() as c:
        assert_error(post_json(c, "/v1/items", body), 422, "invalid_json_number")
        assert c.get("/v1/items/nan-json").status_code == 404
        still_serving(c)


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/search", "/v1/items", "/v1/admin/reload"])
def test_json_nested_100k_deep_is_4xx(srv, path) -> None:
    with srv.client() as c:
        assert_error(post_json(c, path, '{"images": ' + DEEP + "}"), (400, 422))
        still_serving(c)


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("/v1/search", f'{{"image": "{B64}", "k": {HUGE}}}'),
        ("/v1/search", f'{{"image": "{B64}", "exit_depth": {HUGE}}}'),
        ("/v1/search", f'{{"vector": [{HUGE}{", 0" * 31}], "exit_depth": 2}}'),
        ("/v1/embeddings", f'{{"images": ["{B64}"], "budget_ms": {HUGE}}}'),
        ("/v1/search", f'{{"image": "{B64}", "exit_depth": Infinity}}'),
        ("/v1/search", f'{{"image": "{B64}", "k": -Infinity}}'),
        ("/v1/embeddings", f'{{"images": ["{B64}"], "budget_ms": 1e999}}'),
        ("/v1/search", f'{{"vector": [1e400{", 0" * 31}], "exit_depth": 2}}'),
    ],
    ids=["k-huge", "depth-huge", "vector-huge", "budget-huge", "depth-inf", "k--inf",
         "budget-1e999", "vector-1e400"],
)  # fmt: skip
def test_numbers_json_cannot_hold_are_422(srv, path, text) -> None:
    with srv.client() as c:
        assert_error(post_json(c, path, text), 422)
        still_serving(c)


def test_huge_numbers_in_the_query_string_are_422(srv) -> None:
    with srv.client() as c:
        for param in ("exit_depth", "budget_ms"):
            r = c.post(f"/v1/embeddings?{param}={HUGE}",
                       files=[("images", ("x.png", PNG, "image/png"))])  # fmt: skip
            assert_error(r, 422)
        still_serving(c)


def test_multipart_vector_nested_50k_deep_is_422(srv) -> None:
    with srv.client() as c:
        fields = {"vector": (None, "[" * 50_000 + "]" * 50_000), "exit_depth": (None, "2")}
        r = c.post("/v1/search", files=fields)  # multipart text fields
        assert_error(r, 422, "invalid_vector")
        still_serving(c)


@pytest.mark.parametrize("item_id", ["a/b", "/lead", "..", ".", "back\\slash", "tab\there"])
def test_ids_no_route_could_address_are_422(srv, item_id) -> None:
    with srv.client() as c:
        r = add_multipart(c, item_id)
        assert_error(r, 422, "invalid_ids")
        assert "printable" in r.json()["error"]["message"]
        still_serving(c)


def test_every_accepted_id_can_be_read_and_deleted(srv) -> None:
    item_id = "a b?c#d%e&f=g+h é…"
    with srv.client() as c:
        assert add_multipart(c, item_id, '{"x": 1}').status_code == 200
        url = "/v1/items/" + quote(item_id, safe="")
        assert c.get(url).json()["id"] == item_id
        assert c.delete(url).status_code == 200
        assert c.get(url).status_code == 404
        still_serving(c)


def test_rows_written_before_validation_still_read_and_search(tiny_bundle, tmp_path) -> None:
    """Metadata an older server stored (NaN, a lone surrogate) must not break reads or search."""
    import sqlite3

    from export.manifest import bundle_id

    s = Server(tiny_bundle, tmp_path / "data", tmp_path / "log").start()
    with s.client() as c:
        assert add_multipart(c, "old-nan").status_code == 200
        assert add_multipart(c, "old-surrogate").status_code == 200
    s.stop()
    db = sqlite3.connect(tmp_path / "data" / bundle_id(tiny_bundle) / "items.sqlite")
    with db:  # what json.dumps wrote for these before metadata was validated
        db.execute("""UPDATE items SET metadata = '{"a": NaN}' WHERE id = 'old-nan'""")
        db.execute("""UPDATE items SET metadata = '{"a": "x\\ud800"}' WHERE id = 'old-surrogate'""")
    db.close()
    s.start()
    try:
        with s.client() as c:
            assert c.get("/v1/items/old-nan").json()["metadata"] == {"a": None}
            assert c.get("/v1/items/old-surrogate").json()["metadata"]["a"].startswith("x\ufffd")
            r = c.post("/v1/search", files=[("image", ("q.png", PNG, "image/png"))],
                       data={"k": "2"})  # fmt: skip
            assert r.status_code == 200 and len(r.json()["results"]) == 2, r.text
    finally:
        s.stop()
