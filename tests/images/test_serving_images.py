"""The serving images, built and run for real (Podman): the CPU image serves, its scripts run
inside it as its non-root user; the GPU image runs on the CPU with `auto` and refuses `cuda`
on a machine without a GPU, and carries code for sm_80 and sm_90 (issue #10)."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from export.manifest import bundle_id
from tests.images import podman
from tests.images.podman import ROOT, Container
from tests.service.server import free_port

KEY = "images-test-key"
GPU_LIBRARIES = [
    "onnxruntime/capi/libonnxruntime_providers_cuda.so",
    "faiss/libfaiss.so",
    "nvidia/cu13/lib/libcublas.so.13",
    "nvidia/cudnn/lib/libcudnn_ops.so.9",
]


def run_args(shared, port: int, volume: str, bundle: str = "tiny", **env: str) -> list[str]:
    settings = {"SDSSL_PORT": str(port), "SDSSL_THREADS": "1", "SDSSL_WARMUP_RUNS": "1",
                "SDSSL_API_KEY": KEY, "SDSSL_BUNDLE": f"/bundles/{bundle}", **env}  # fmt: skip
    return [
        *(a for k, v in settings.items() for a in ("-e", f"{k}={v}")),
        "-v", f"{shared / 'bundles'}:/bundles:ro",
        "-v", f"{shared / 'images'}:/images:ro",
        "-v", f"{volume}:/data",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def cpu_server(serve_cpu, shared):
    volume, port = f"sdssl-test-{uuid.uuid4().hex[:8]}", free_port()
    podman.podman("volume", "create", volume)
    box = Container(serve_cpu, f"sdssl-cpu-{port}", *run_args(shared, port, volume))
    try:
        assert box.healthy(), box.logs()[-3000:]
        yield box, f"http://127.0.0.1:{port}"
    finally:
        box.remove()
        podman.podman("volume", "rm", "-f", volume, check=False)


def png(shared) -> bytes:
    return next((shared / "images").rglob("*.png")).read_bytes()


def test_cpu_image_embeds_adds_and_searches(cpu_server, shared) -> None:
    _, url = cpu_server
    blob, auth = png(shared), {"X-API-Key": KEY}
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/embeddings", files=[("images", ("x.png", blob, "image/png"))],
                   params={"budget_ms": 50})  # fmt: skip
        assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 32
        r = c.post("/v1/items", files=[("images", ("x.png", blob, "image/png"))],
                   data={"ids": "in-container"}, headers=auth)  # fmt: skip
        assert r.status_code == 200, r.text
        r = c.post("/v1/search", files=[("image", ("q.png", blob, "image/png"))])
        assert r.json()["results"][0]["id"] == "in-container"
        assert c.get("/readyz").json()["device"] == "cpu"


def test_scripts_run_inside_the_container_as_its_user(cpu_server, shared) -> None:
    box, url = cpu_server
    assert box.exec("id", "-u").stdout.strip() == "10001"
    # The served bundle has its writer: reindexing it from a second process is refused.
    res = box.exec("scripts/reindex.sh", "/bundles/tiny", "/images", "--quiet")
    assert res.returncode == 2 and "another writer holds this bundle's index" in res.stderr
    # A bundle that is not served yet: index the images, then swap to it.
    res = box.exec("scripts/reindex.sh", "/bundles/other", "/images", "--quiet")
    assert res.returncode == 0 and "indexed 24" in res.stdout, res.stdout + res.stderr
    res = box.exec("scripts/reload.sh", "/bundles/other", env={"SDSSL_API_KEY": KEY})
    assert res.returncode == 0, res.stdout + res.stderr
    with httpx.Client(base_url=url, timeout=60) as c:
        assert c.get("/readyz").json()["model"] == bundle_id(shared / "bundles" / "other")
        blob = (shared / "images").rglob("digit-005.png").__next__().read_bytes()
        r = c.post("/v1/search", files=[("image", ("q.png", blob, "image/png"))],
                   data={"exit_depth": "4", "k": "1"})  # fmt: skip
        assert r.json()["results"][0]["id"] == "digit-005"
    res = box.exec("scripts/reload.sh", "/bundles/tiny", "--api-key", "wrong")
    assert res.returncode == 1 and "invalid API key" in res.stderr  # the server's reason
    # And back by a rollout: the server re-embeds the 24 kept inputs with the first bundle.
    res = box.exec("scripts/rollout.sh", "--bundle", "/bundles/tiny", env={"SDSSL_API_KEY": KEY})
    tiny = bundle_id(shared / "bundles" / "tiny")
    assert res.returncode == 0 and f"swapped: {tiny} (24 re-embedded" in res.stdout, (
        res.stdout + res.stderr
    )
    with httpx.Client(base_url=url, timeout=60) as c:
        assert c.get("/readyz").json()["model"] == tiny
        assert c.get("/v1/items", params={"limit": 0}).json()["count"] == 24


def test_gpu_image_carries_code_for_sm80_and_sm90(serve_gpu) -> None:
    res = podman.podman(
        "run", "--rm", "-v", f"{ROOT / 'scripts'}:/x:ro", serve_gpu, "python", "/x/cuda_archs.py",
        "/opt/venv/lib/python3.11/site-packages", "--gpus", "8.0,9.0", "--min-mib", "1",
    )  # fmt: skip
    rows = {ln.split(" | ")[0].strip("| "): ln for ln in res.stdout.splitlines()}
    for lib in GPU_LIBRARIES:
        cells = [c.strip() for c in rows[lib].strip("| ").split(" | ")]
        assert cells[-2:] == ["sass", "sass"], rows[lib]
    print(f"sdssl-serve:gpu is {podman.size_gib(serve_gpu):.2f} GiB")


def test_gpu_image_without_a_gpu_serves_on_cpu_with_auto_and_refuses_cuda(serve_gpu, shared):
    volume, port = f"sdssl-test-{uuid.uuid4().hex[:8]}", free_port()
    box = Container(serve_gpu, f"sdssl-gpu-{port}", *run_args(shared, port, volume))
    try:
        assert box.healthy(), box.logs()[-3000:]
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").json()["device"] == "cpu"
        assert re.search(r"WARNING .*could not start its CUDA provider.*serving on the CPU",
                         box.logs())  # fmt: skip
    finally:
        box.remove()
    res = podman.podman("run", "--rm", "--network", "host",
                        *run_args(shared, free_port(), volume, SDSSL_DEVICE="cuda"), serve_gpu,
                        check=False, timeout=300)  # fmt: skip
    podman.podman("volume", "rm", "-f", volume, check=False)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 3 and len(errors) == 1, res.stderr[-3000:]
    assert "SDSSL_DEVICE=cuda" in errors[0] and "could not start its CUDA provider" in errors[0]
