"""One gallery: items are embedded once, at the bundle's gallery depth — also when the bundle
was exported without that depth's exit graph (the all-exits graph's row then embeds them) —
and queries of every exit depth search that one index."""

from __future__ import annotations

import numpy as np
import pytest

from export.manifest import ALL_EXITS_OUTPUT, INPUT_NAME, Manifest
from export.parity import onnx_session
from service.inference.images import prepare
from tests.service.conftest import digit_png
from tests.service.server import Server


@pytest.fixture(scope="module")
def shallow(tiny_bundle_shallow):
    """A bundle with exits 1 and 2 only; its gallery depth is still 4 (the model's depth)."""
    return tiny_bundle_shallow


def test_items_of_a_bundle_without_its_gallery_exit_are_embedded_by_the_all_exits_graph(
    shallow, tmp_path
) -> None:
    m = Manifest.read(shallow)
    assert m.exit_depths == [1, 2] and m.bridge is not None and m.bridge.gallery_depth == 4
    blobs = [digit_png(i) for i in range(5)]
    p = m.preprocess
    rows = np.stack([prepare(b, p.resize, p.crop, p.interpolation, 10**8) for b in blobs])
    (want,) = onnx_session(shallow / m.all_exits.file).run([ALL_EXITS_OUTPUT], {INPUT_NAME: rows})
    with Server(shallow, tmp_path / "data", tmp_path / "log") as s, s.client() as c:
        files = [("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
        r = c.post("/v1/items", files=files, data={"ids": [f"g-{i}" for i in range(5)]})
        assert r.status_code == 200, r.text
        for i in range(5):
            got = c.get(f"/v1/items/g-{i}", params={"vector": "true"}).json()
            assert got["exit_depth"] == 4
            assert np.abs(np.array(got["vector"]) - want[3, i]).max() < 1e-3  # stored as float16
        hit = c.post("/v1/search", json={"vector": want[3, 2].tolist(), "k": 1}).json()
        assert hit["results"][0]["id"] == "g-2" and hit["gallery_depth"] == 4
        by_image = c.post("/v1/search", files=[("image", ("q.png", blobs[2], "image/png"))],
                          data={"exit_depth": "1", "k": "5"}).json()  # fmt: skip
        assert by_image["exit_depth"] == 1 and by_image["gallery_depth"] == 4
        assert "g-2" in {h["id"] for h in by_image["results"]}
        # A vector may name the gallery depth it is in, even when no exit graph has it.
        r = c.post("/v1/search", json={"vector": want[3, 2].tolist(), "exit_depth": 4})
        assert r.status_code == 200, r.text


def test_old_ways_of_asking_are_refused_with_the_new_one(server) -> None:
    with server.client() as c:
        r = c.get("/v1/items/anything", params={"exit_depth": 3})
        assert r.status_code == 422 and "vector=true" in r.json()["error"]["message"]
        r = c.post("/v1/search", json={"vector": [1.0] + [0.0] * 31, "budget_ms": 5})
        assert r.status_code == 422 and "budget_ms" in r.json()["error"]["message"]


def test_embeddings_answer_the_gallery_space_or_the_raw_exit_on_request(tiny_bundle, tmp_path):
    """Each exit graph's two outputs, through HTTP: the bridged rows by default, the exit's own
    with space=raw — by exit depth, and by budget (block by block when anytime is on)."""
    from export.manifest import EXIT_OUTPUT, RAW_EXIT_OUTPUT

    m = Manifest.read(tiny_bundle)
    blob = digit_png(3)
    p = m.preprocess
    x = prepare(blob, p.resize, p.crop, p.interpolation, 10**8)[None]
    want = {
        e.exit_depth: onnx_session(tiny_bundle / e.file).run(
            [EXIT_OUTPUT, RAW_EXIT_OUTPUT], {INPUT_NAME: x}
        )
        for e in m.exits
    }
    files = [("images", ("q.png", blob, "image/png"))]
    with (
        Server(tiny_bundle, tmp_path / "data", tmp_path / "log", anytime="on") as s,
        s.client() as c,
    ):
        for depth, (bridged, raw) in want.items():
            if depth < m.bridge.gallery_depth:  # there the bridge is the identity
                assert np.abs(bridged - raw).max() > 1e-3
            for space, rows in (("gallery", bridged), ("raw", raw)):
                r = c.post("/v1/embeddings", files=files,
                           data={"exit_depth": str(depth), "space": space})  # fmt: skip
                body = r.json()
                assert body["space"] == space and body["exit_depth"] == depth, body
                assert np.abs(np.array(body["embeddings"]) - rows).max() < 1e-4
        r = c.post("/v1/embeddings", files=files, data={"budget_ms": "1000", "space": "raw"})
        body = r.json()
        got = np.array(body["embeddings"])
        assert np.abs(got - want[body["exit_depth"]][1]).max() < 1e-4
        assert abs(np.linalg.norm(got) - 1) < 1e-4
        r = c.post("/v1/embeddings", files=files, data={"space": "neither"})
        assert r.status_code == 422 and "space" in r.text
        npy = c.post("/v1/embeddings", files=files, headers={"Accept": "application/x-npy"},
                     data={"exit_depth": "2", "space": "raw"})  # fmt: skip
        import io

        assert np.abs(np.load(io.BytesIO(npy.content)) - want[2][1]).max() < 1e-4
