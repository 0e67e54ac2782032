"""Podman as the tests drive it: a local Debian base image, image builds, and containers.

No registry serves base images on the test machines, so the images are built ``FROM`` a base
made here from Debian packages (debootstrap; the same Python 3.11 as ``python:3.11-slim``) with
the host's CA bundle, through which pip in the builds reaches the package index.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE = "localhost/sdssl-base:bookworm"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"


def podman(
    *args: str, check: bool = True, timeout: float = 1800, **kw
) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check,
                          timeout=timeout, **kw)  # fmt: skip


def exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def ensure_base() -> str:
    """The local base image, made once per machine (Podman's store keeps it)."""
    if exists(BASE):
        return BASE
    with tempfile.TemporaryDirectory(prefix="sdssl-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm",
                        str(rootfs)], check=True, capture_output=True, timeout=1200)  # fmt: skip
        if CA_BUNDLE.is_file():  # a host behind a TLS-inspecting proxy trusts more than Debian
            shutil.copy(CA_BUNDLE, rootfs / CA_BUNDLE.relative_to("/"))
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["podman", "import", "--change", f"ENV PIP_CERT={CA_BUNDLE}",
             "--change", 'CMD ["python3"]', "-", BASE],
            stdin=tar.stdout, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        tar.wait()
    return BASE


def build(dockerfile: str, tag: str, target: str | None = None) -> str:
    """Build an image of this checkout on the local base (layers cached between runs)."""
    args = ["build", "--format", "docker", "--network", "host", "--build-arg", f"BASE={BASE}",
            "-f", dockerfile, "-t", tag]  # fmt: skip
    if target:
        args += ["--target", target]
    started = time.monotonic()
    res = podman(*args, str(ROOT), check=False, timeout=3600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    print(f"built {tag} in {time.monotonic() - started:.0f} s")
    return tag


def size_gib(image: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout) / 2**30


class Container:
    """A detached container on the host network; removed by :meth:`remove`."""

    def __init__(self, image: str, name: str, *run_args: str) -> None:
        podman("rm", "-f", name, check=False)
        podman("run", "-d", "--name", name, "--network", "host", *run_args, image)
        self.name = name

    def exec(self, *cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        flags = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
        return podman("exec", *flags, self.name, *cmd, check=False, timeout=600)

    def logs(self) -> str:
        res = podman("logs", self.name, check=False)
        return res.stdout + res.stderr

    def healthy(self, timeout: float = 180) -> bool:
        """Run the image's own HEALTHCHECK until it passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if podman("healthcheck", "run", self.name, check=False).returncode == 0:
                return True
            if "running" not in podman("inspect", "--format", "{{.State.Status}}", self.name,
                                       check=False).stdout:  # fmt: skip
                return False
            time.sleep(1)
        return False

    def remove(self) -> None:
        podman("rm", "-f", "-t", "5", self.name, check=False)
