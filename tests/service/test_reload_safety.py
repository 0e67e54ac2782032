"""Reload trusts nothing in the bundle it is given (issue #9): only regular files inside the
bundle are read, hashing never blocks the event loop, and a refusal names no server path."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pytest

from export.manifest import MANIFEST, MANIFEST_DIGEST, bundle_id, file_sha256
from tests.service.conftest import png


def copy_bundle(src, dst):
    shutil.copytree(src, dst)
    return dst


def resign(bundle, edit) -> None:
    """Edit the manifest and write its digest again, as a forger with file access would."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    edit(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    (bundle / MANIFEST_DIGEST).write_text(file_sha256(bundle / MANIFEST))


def symlinked_manifest(b, outside):
    (b / MANIFEST).unlink()
    os.symlink("/dev/zero", b / MANIFEST)


def huge_manifest(b, outside):
    with open(b / MANIFEST, "r+b") as fh:
        fh.truncate(2 << 30)  # sparse: 2 GB to read, nothing on disk


def escaping_graph_name(b, outside):
    resign(b, lambda m: m["exits"][0].update(file="../../outside.onnx"))


def absolute_graph_name(b, outside):
    resign(b, lambda m: m["exits"][0].update(file=str(outside / "exit_01.onnx")))


def symlinked_graph(b, outside):
    shutil.copy(b / "exit_01.onnx", outside / "exit_01.onnx")
    (b / "exit_01.onnx").unlink()
    os.symlink(outside / "exit_01.onnx", b / "exit_01.onnx")


def fifo_graph(b, outside):
    (b / "exit_02.onnx").unlink()
    os.mkfifo(b / "exit_02.onnx")


def unloadable_graph(b, outside):
    (b / "exit_03.onnx").write_bytes(b"\x08\x07 not a graph")
    sha = file_sha256(b / "exit_03.onnx")
    resign(b, lambda m: m["exits"][2].update(sha256=sha))


CASES = [
    (symlinked_manifest, "manifest.json is a symbolic link"),
    (huge_manifest, "manifest.json is larger than"),
    (escaping_graph_name, "exits.0.file"),
    (absolute_graph_name, "exits.0.file"),
    (symlinked_graph, "exit_01.onnx is a symbolic link"),
    (fifo_graph, "exit_02.onnx is not a regular file"),
    (unloadable_graph, "could not be loaded"),
]


@pytest.mark.parametrize(("forge", "reason"), CASES, ids=[f.__name__ for f, _ in CASES])
def test_a_forged_bundle_is_refused_without_blocking_or_leaking(
    server, tiny_bundle, tmp_path, forge, reason
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    b = copy_bundle(tiny_bundle, tmp_path / "forged")
    forge(b, outside)
    slowest_livez: list[float] = []
    stop = threading.Event()

    def probe() -> None:  # the event loop must stay free while the reload is checked
        with server.client() as c:
            while not stop.is_set():
                started = time.perf_counter()
                assert c.get("/livez").status_code == 200
                slowest_livez.append(time.perf_counter() - started)
                time.sleep(0.01)

    t = threading.Thread(target=probe)
    t.start()
    while not slowest_livez and t.is_alive():  # probing before the reload starts
        time.sleep(0.01)
    try:
        with server.client() as c:
            r = c.post("/v1/admin/reload", json={"bundle": str(b)})
    finally:
        stop.set()
        t.join()
    assert r.status_code == 409, r.text
    message = r.json()["error"]["message"]
    assert reason in message, message
    assert str(tmp_path) not in message and "Errno" not in message, message
    assert max(slowest_livez) < 1.0
    with server.client() as c:  # the old bundle keeps serving
        assert c.get("/readyz").json()["model"] == bundle_id(tiny_bundle)
        r = c.post("/v1/embeddings", files=[("images", ("x.png", png(), "image/png"))])
        assert r.status_code == 200
