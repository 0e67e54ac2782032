"""The Python client against a real server: every method, the retry on 503, typed errors."""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest
from PIL import Image
from sdssl_client import (
    AsyncClient,
    Client,
    Conflict,
    InvalidRequest,
    NotFound,
    Unauthorized,
    Unavailable,
)

from tests.harness import digit_png, mnist_test
from tests.service.server import Server

KEY, READ = "client-admin", "client-read"


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("client")
    s = Server(tiny_bundle, root / "data", root / "log", api_key=KEY, read_key=READ).start()
    yield s
    s.stop()


@pytest.fixture
def client(server):
    with Client(server.url, api_key=KEY) as c:
        yield c


def test_embed_takes_every_image_kind_and_matches(client) -> None:
    png = digit_png(3)
    pil = Image.open(io.BytesIO(png)).convert("RGB")
    arr = np.asarray(pil)
    e = client.embed([png, pil, arr], exit_depth=2)
    assert e.vectors.shape == (3, 32) and e.vectors.dtype == np.float32 and e.exit_depth == 2
    assert np.allclose(e.vectors[0], e.vectors[1], atol=1e-6)  # PNG of the same pixels
    assert np.allclose(e.vectors[1], e.vectors[2], atol=1e-6)
    assert np.allclose(np.linalg.norm(e.vectors, axis=1), 1, atol=1e-5)
    budgeted = client.embed(png, budget_ms=200)
    assert budgeted.timing["budget_ms"] == 200 and len(budgeted.model) == 64
    raw = client.embed(png, exit_depth=2, space="raw")
    assert raw.space == "raw" and e.space == "gallery" and raw.vectors.shape == (1, 32)
    assert not np.allclose(raw.vectors[0], e.vectors[0], atol=1e-3)  # before the bridge


def test_items_search_and_scroll(client, tmp_path) -> None:
    test = mnist_test()
    label = {i: str(int(test.labels[i * 30])) for i in range(30)}  # spread over the labels
    for i in range(30):
        (tmp_path / label[i]).mkdir(exist_ok=True)
        test.image(i * 30).save(tmp_path / label[i] / f"c-{i:03d}.png")
    assert client.add_folder(tmp_path, batch_size=7, concurrency=3, progress=False) == {"added": 30}
    client.add(digit_png(500), "solo", {"label": "x", "n": 1})
    assert client.count() == 31
    ids = [i.id for i in client.items(page_size=4)]  # in id order
    assert ids == [*(f"c-{i:03d}" for i in range(30)), "solo"]
    sevens = client.count(filter={"label": "7"})
    assert sevens == sum(v == "7" for v in label.values()) > 0
    item = client.get("c-005", vector=True)
    assert item.metadata["label"] == label[5] and item.vector.shape == (32,)
    assert item.exit_depth == 4 and client.get("c-005").vector is None  # the gallery depth
    found = client.search(vector=item.vector, k=3)
    assert found.hits[0].id == "c-005" and found.hits[0].score > 0.999
    assert found.gallery_depth == 4
    by_image = client.search(digit_png(500), exit_depth=4, k=1, filter={"label": "x"})
    assert [h.id for h in by_image.hits] == ["solo"] and by_image.hits[0].metadata["n"] == 1
    bare = client.search(digit_png(500), exit_depth=4, k=1, filter={"label": "x"}, metadata=False)
    assert [h.id for h in bare.hits] == ["solo"] and bare.hits[0].metadata is None
    bare = client.search_batch(vectors=[item.vector], k=2, metadata=False)
    assert bare.results[0][0].id == "c-005" and bare.results[0][0].metadata is None
    batch = client.search_batch([digit_png(500), held_out_png(150)], exit_depth=4, k=1)
    assert [r[0].id for r in batch.results] == ["solo", "c-005"]
    vectors = client.search_batch(vectors=[item.vector], k=1)
    assert vectors.results[0][0].id == "c-005"
    assert client.delete("solo") is True and client.delete("solo") is False
    assert [c["exit_depth"] for c in client.model()["curve"]] == [1, 2, 3, 4]
    assert client.snapshot()["items"] == 30


def held_out_png(i: int) -> bytes:
    buf = io.BytesIO()
    mnist_test().image(i).save(buf, "PNG")
    return buf.getvalue()


def test_typed_errors(server, client) -> None:
    with pytest.raises(NotFound) as e:
        client.get("missing")
    assert e.value.status == 404 and e.value.code == "not_found"
    with pytest.raises(InvalidRequest) as e:
        client.embed(digit_png(1), exit_depth=9)
    assert e.value.code == "unknown_exit_depth"
    with pytest.raises(InvalidRequest) as e:
        client.embed(b"not an image")
    assert e.value.status == 400 and e.value.code == "not_an_image"
    with Client(server.url, read_key="wrong") as bad, pytest.raises(Unauthorized):
        bad.count()
    with Client(server.url, read_key=READ) as reader:
        assert reader.count() >= 0  # reads with the read key ...
        with pytest.raises(Unauthorized):
            reader.add(digit_png(1), "x")  # ... writes need the admin key
    with pytest.raises(Conflict):
        client.reload("/no/such/bundle")


def test_retries_honour_retry_after(tiny_bundle, tmp_path) -> None:
    """Concurrent big images against a decode queue of one image's pixels: the server answers
    503 + Retry-After; with retries every request succeeds, without them Unavailable is raised."""
    s = Server(tiny_bundle, tmp_path / "data", tmp_path / "log", max_request_pixels=3_000_000,
               decode_queue_pixels=3_000_000).start()  # fmt: skip
    # Blank: a small body that decodes as slowly as any image of its pixels, so the six
    # requests arrive together and overlap in decoding.
    big = Image.fromarray(np.zeros((1700, 1700, 3), np.uint8))
    buf = io.BytesIO()
    big.save(buf, "PNG")
    image = buf.getvalue()
    try:

        def burst(retries: int) -> list:
            outcomes: list = []
            gate = threading.Barrier(6)

            def one() -> None:
                with Client(s.url, retries=retries) as c:
                    gate.wait()
                    try:
                        outcomes.append(c.embed(image, exit_depth=1).exit_depth)
                    except Unavailable as exc:
                        outcomes.append(exc)

            threads = [threading.Thread(target=one) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return outcomes

        refused = [o for o in burst(0) if isinstance(o, Unavailable)]
        assert refused and refused[0].retry_after >= 1 and refused[0].code == "overloaded"
        assert burst(8) == [1] * 6
    finally:
        s.stop()


def test_async_client(server) -> None:
    async def main() -> None:
        async with AsyncClient(server.url, api_key=KEY) as c:
            await c.add([digit_png(7), digit_png(8)], ["a-1", "a-2"], [{"n": 1}, {"n": 2}])
            got = await asyncio.gather(*(c.embed(digit_png(i), exit_depth=3) for i in range(4)))
            assert [g.vectors.shape for g in got] == [(1, 32)] * 4
            hits = (await c.search(digit_png(7), exit_depth=4, k=1)).hits
            assert hits[0].id == "a-1"
            ids = [i.id async for i in c.items(filter={"n": {"gte": 1}})]
            assert ids == ["a-1", "a-2"] and await c.count(filter={"n": 2}) == 1
            assert await c.delete("a-1") and not await c.delete("a-1")
            with pytest.raises(NotFound):
                await c.get("a-1")

    asyncio.run(main())


def test_rollout_wait_and_ready(tiny_bundle, tiny_bundle_b, tmp_path) -> None:
    from export.manifest import bundle_id

    s = Server(tiny_bundle, tmp_path / "data", tmp_path / "log", api_key=KEY).start()
    try:
        with Client(s.url, api_key=KEY) as c:
            assert c.ready()
            c.add([digit_png(i) for i in range(5)], [f"r-{i}" for i in range(5)])
            job = c.rollout(str(tiny_bundle_b), batch=2)
            done = c.wait(job["id"], progress=False, poll_s=0.1)
            assert done["state"] == "swapped" and done["copied"] == 5
            assert c.job(job["id"])["state"] == "swapped"
            assert c.model()["model"] == bundle_id(tiny_bundle_b)
            with pytest.raises(Conflict):
                c.rollout(str(tiny_bundle_b))  # already serving it

            async def back() -> tuple[bool, dict, dict]:
                async with AsyncClient(s.url, api_key=KEY) as ac:
                    ready = await ac.ready()
                    job = await ac.rollout(str(tiny_bundle), batch=2)
                    done = await ac.wait(job["id"], progress=False, poll_s=0.1)
                    reload = await ac.reload(str(tiny_bundle_b))
                    return ready, done, reload

            ready, done, reload = asyncio.run(back())
            assert ready and done["state"] == "swapped" and done["copied"] == 5
            assert reload["previous"] == bundle_id(tiny_bundle)
            assert reload["model"] == bundle_id(tiny_bundle_b)
        with Client("http://127.0.0.1:9", retries=0) as gone:
            assert not gone.ready()
    finally:
        s.stop()


def test_import_vectors_and_the_import_command(tiny_bundle, tmp_path) -> None:
    import subprocess
    import sys

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    v = np.random.default_rng(0).standard_normal((25, 32)).astype(np.float32)
    np.savez(inbox / "rows.npz", vectors=v, ids=np.array([f"i-{i}" for i in range(25)]))
    s = Server(tiny_bundle, tmp_path / "data", tmp_path / "log", api_key=KEY,
               import_dir=str(inbox)).start()  # fmt: skip
    try:
        with Client(s.url, api_key=KEY) as c:
            job = c.import_vectors("rows.npz", batch=10)
            done = c.wait(job["id"], until="done", progress=False, poll_s=0.1)
            assert done["state"] == "done" and done["imported"] == 25
            with pytest.raises(InvalidRequest):
                c.import_vectors("../elsewhere")
        res = subprocess.run([sys.executable, "-m", "sdssl_client", "--url", s.url, "--api-key",
                              KEY, "import", "rows.npz", "--resume"],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert "done: 0 stored, 25 already present, 0 refused" in res.stdout
    finally:
        s.stop()


def test_both_clients_have_the_same_calls() -> None:
    def calls(cls) -> set[str]:
        return {n for n in dir(cls) if not n.startswith("_")} - {"close", "aclose"}

    assert calls(Client) == calls(AsyncClient)


def test_large_inputs_are_split_under_the_servers_limits(tiny_bundle, tmp_path) -> None:
    from sdssl_client._calls import split

    assert split([10] * 5, {"max_images": 2, "max_body_bytes": 10**6}) == [
        slice(0, 2), slice(2, 4), slice(4, 5)]  # fmt: skip
    assert split([600, 600, 5000, 10], {"max_images": 64, "max_body_bytes": 2400}) == [
        slice(0, 2),
        slice(2, 3),
        slice(3, 4),
    ]  # fmt: skip  (the too-large one goes alone)
    assert split([], {"max_images": 1, "max_body_bytes": 1}) == []
    blobs = [digit_png(i) for i in range(11)]
    s = Server(tiny_bundle, tmp_path / "data", tmp_path / "log", max_images=4,
               max_body_bytes=4096).start()  # fmt: skip
    try:
        with Client(s.url) as c:
            assert c.limits()["max_images"] == 4
            e = c.embed(blobs, exit_depth=3)
            assert e.vectors.shape == (11, 32) and e.exit_depths == [3] * 11
            alone = c.embed(blobs[9], exit_depth=3)
            assert np.allclose(e.vectors[9], alone.vectors[0], atol=1e-5)
            added = c.add(blobs, [f"s-{i}" for i in range(11)], [{"i": i} for i in range(11)])
            assert [i["id"] for i in added["items"]] == [f"s-{i}" for i in range(11)]
            assert c.get("s-10").metadata == {"i": 10} and c.count() == 11
            folder = tmp_path / "folder" / "7"
            folder.mkdir(parents=True)
            for i, b in enumerate(blobs):
                (folder / f"f-{i}.png").write_bytes(b)
            assert c.add_folder(tmp_path / "folder", batch_size=32, progress=False) == {
                "added": 11}  # fmt: skip

        async def both() -> tuple:
            async with AsyncClient(s.url) as ac:
                return await ac.embed(blobs, exit_depth=2), await ac.add(blobs, [
                    f"a-{i}" for i in range(11)])  # fmt: skip

        e2, added2 = asyncio.run(both())
        assert e2.vectors.shape == (11, 32) and len(added2["items"]) == 11
    finally:
        s.stop()
