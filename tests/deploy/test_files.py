"""Deploy files checked by real tools: compose config, hadolint, shellcheck, pinned images."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))


def compose_cmd() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


@pytest.fixture(scope="module")
def compose_dir(tmp_path_factory) -> Path:
    """The compose file with its .env (from .env.example), as a user would have it."""
    d = tmp_path_factory.mktemp("compose")
    shutil.copy(ROOT / "docker-compose.yml", d)
    shutil.copy(ROOT / ".env.example", d / ".env")
    return d


def compose_config(compose_dir: Path, *profiles: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "SDSSL_"))}
    flags = [f for p in profiles for f in ("--profile", p)]
    res = subprocess.run(
        [*compose_cmd(), *flags, "config"],
        cwd=compose_dir, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)


def test_compose_gpu_variant(compose_dir) -> None:
    cfg = compose_config(compose_dir, "gpu", "train")
    api = cfg["services"]["api"]
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert api["build"]["target"] == "gpu" and api["environment"]["SDSSL_DEVICE"] == "cuda"
    assert "readyz" in " ".join(api["healthcheck"]["test"])
    targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in api["volumes"]]
    assert {"/bundles", "/data", "/images"} <= set(targets)
    trainer = cfg["services"]["trainer"]
    assert trainer["build"]["dockerfile"].endswith("train.Dockerfile")
    assert trainer["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_compose_cpu_variant(compose_dir) -> None:
    cfg = compose_config(compose_dir, "cpu", "train-cpu")
    api = cfg["services"]["api-cpu"]
    assert api["build"]["target"] == "cpu" and "deploy" not in api
    assert api["environment"]["SDSSL_BUNDLE"] == "/bundles/default"
    read_only = {
        v["target"] if isinstance(v, dict) else v.split(":")[1]
        for v in api["volumes"]
        if (v.get("read_only") if isinstance(v, dict) else v.endswith(":ro"))
    }
    assert read_only == {"/bundles", "/images"}
    trainer = cfg["services"]["trainer-cpu"]
    assert "deploy" not in trainer and trainer["user"] == "10001:10001"  # .env's SDSSL_UID/GID


def test_env_example_documents_every_compose_variable() -> None:
    used = set(re.findall(r"\$\{([A-Z_]+)", (ROOT / "docker-compose.yml").read_text()))
    documented = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert used <= documented, used - documented
    assert "COMPOSE_PROFILES" in documented


def test_dockerfiles_pass_hadolint() -> None:
    files = sorted(str(p) for p in (ROOT / "docker").glob("*.Dockerfile"))
    res = subprocess.run([str(BIN / "hadolint"), *files], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_scripts_pass_shellcheck() -> None:
    files = [str(p) for p in [*SCRIPTS, *(ROOT / "bench").glob("*.sh")]]
    files.append(str(ROOT / "scripts" / "common.bash"))
    res = subprocess.run([str(BIN / "shellcheck"), "-x", *files], capture_output=True, text=True,
                         cwd=ROOT)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_scripts_help(script: Path) -> None:
    res = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith(f"usage: scripts/{script.name}")
    assert "set -euo pipefail" in script.read_text()
    bad = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert bad.returncode != 0 and "error:" in bad.stderr


def test_image_requirements_are_pinned_to_the_tested_versions() -> None:
    res = subprocess.run([sys.executable, "scripts/lock_requirements.py", "--check"], cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stdout
    for name in ("requirements-serve.txt", "requirements-train.txt"):
        text = (ROOT / "docker" / name).read_text()
        pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)
        blocks = [b for b in re.split(r"^(?=[A-Za-z0-9])", text, flags=re.M) if "==" in b]
        assert len(blocks) == len(pins) > 10 and all("--hash=sha256:" in b for b in blocks), name
        for pkg, version in pins:
            assert metadata.version(pkg) == version, f"{name}: {pkg}=={version}"
    gpu = (ROOT / "docker" / "requirements-serve-gpu.txt").read_text()
    assert "onnxruntime-gpu" in gpu and "faiss-gpu" in gpu and "\nfaiss-cpu" not in gpu
    assert re.search(r"^nvidia-cudnn-cu13==\S+ \\\n    --hash=sha256:[0-9a-f]{64}", gpu, re.M)


def test_build_context_leaves_out_the_heavy_folders() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "artifacts", "runs", ".git", ".env"} <= set(ignored)
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY") and "--from" not in line:
                for src in line.split()[1:-1]:
                    if src.startswith("--"):
                        continue
                    top = src.split("/")[0]
                    assert top not in ignored, f"{dockerfile.name} copies ignored {src}"


def test_serving_image_carries_no_torch() -> None:
    reqs = (ROOT / "docker" / "requirements-serve.txt").read_text()
    assert not re.search(r"^(torch|timm|torchvision)==", reqs, re.M)
    text = (ROOT / "docker" / "serve.Dockerfile").read_text()
    assert "COPY training" not in text and "USER 10001" in text and "HEALTHCHECK" in text
