"""README's compose commands, run as written on the CPU profile with Podman (issue #10):
`docker compose` is `podman-compose` here, with the profiles that docker compose takes from
COMPOSE_PROFILES or from the service named on the command line."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.images.podman import BASE, ROOT
from tests.service.server import free_port

COMPOSE = [str(Path(sys.executable).parent / "podman-compose")]
SERVICE_PROFILES = {"trainer-cpu": "train-cpu", "trainer": "train"}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- compose-from-zero", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [re.sub(r"\s+#.*$", "", ln).strip() for ln in block.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def checkout_copy(dest: Path) -> None:
    """What `git clone` gives: the tracked (and not ignored) files of this working tree."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def as_podman(line: str, project: str, profiles: list[str]) -> list[str]:
    args = shlex.split(line)[2:]  # after "docker compose"
    wanted = [*profiles, *(SERVICE_PROFILES[a] for a in args if a in SERVICE_PROFILES)]
    flags = [f for p in wanted for f in ("--profile", p)]
    return [*COMPOSE, "-p", project, *flags,
            "--podman-build-args=--format docker --network host", *args]  # fmt: skip


@pytest.fixture
def project(shared, serve_cpu, train_image):
    """An empty folder to clone into, world-enterable like a home directory."""
    root = Path(tempfile.mkdtemp(prefix="sdssl-compose-"))
    os.chmod(root, 0o755)
    name = f"sdssltest{uuid.uuid4().hex[:6]}"
    yield root / "sdssl", name
    subprocess.run([*COMPOSE, "-p", name, "--profile", "cpu", "down", "-v"], cwd=root / "sdssl",
                   capture_output=True, timeout=300)  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)


def test_readme_compose_from_zero_on_the_cpu_profile(project, shared) -> None:
    where, name = project
    port, env = free_port(), {k: v for k, v in os.environ.items() if not k.startswith("SDSSL_")}
    profiles: list[str] = []
    for line in readme_commands():
        if line.startswith("git clone"):
            where.mkdir()
            checkout_copy(where)
            os.chmod(where, 0o755)
            continue
        if line.startswith("docker compose"):
            cmd = as_podman(line, name, profiles)
            res = subprocess.run(cmd, cwd=where, env=env, capture_output=True, text=True,
                                 timeout=1800)  # fmt: skip
        else:
            res = subprocess.run(["bash", "-c", line], cwd=where, env=env, capture_output=True,
                                 text=True, timeout=300)  # fmt: skip
        assert res.returncode == 0, f"{line}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        if line.startswith("cp .env.example"):  # what the user edits, and the test's own
            edits = {"COMPOSE_PROFILES": "cpu", "SDSSL_PUBLISH": f"127.0.0.1:{port}",
                     "SDSSL_BASE_IMAGE": BASE, "SDSSL_THREADS": "1"}  # fmt: skip
            with open(where / ".env", "a") as fh:
                fh.write("".join(f"{k}={v}\n" for k, v in edits.items()))
            profiles = ["cpu"]
        if line.startswith("mkdir"):  # the user's images
            shutil.copytree(shared / "images", where / "images", dirs_exist_ok=True)
        if "export.sh" in line:
            bundle = where / "bundles" / "mine"
            assert (bundle / "manifest.json").stat().st_uid == os.getuid()  # written as the user
        if "reindex.sh" in line:
            assert "indexed 24" in res.stdout, res.stdout + res.stderr
    # The other trainer script, as the README's rolling update runs it (a tiny, short run).
    line = ("docker compose run --rm trainer-cpu scripts/retrain.sh --config configs/tiny.yaml "
            "--out runs/tiny --set train.max_steps=2")  # fmt: skip
    res = subprocess.run(as_podman(line, name, profiles), cwd=where, env=env, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (where / "runs" / "tiny" / "metrics.json").stat().st_uid == os.getuid()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    blob = next((shared / "images").rglob("digit-007.png")).read_bytes()
    r = httpx.post(f"http://127.0.0.1:{port}/v1/search", timeout=60,
                   files=[("image", ("q.png", blob, "image/png"))], data={"k": "1"})  # fmt: skip
    assert r.status_code == 200 and r.json()["results"][0]["id"] == "digit-007", r.text
