"""``python -m service`` as a child process on a free loopback port: the one harness the tests
and the benchmarks (bench/common.py) start real servers with (no web client needed: readiness
is polled with urllib)."""

from __future__ import annotations

import functools
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "data" / "mnist5k-test.npz"


class Digits:
    """The default model's test split (data/mnist5k-test.npz, see data/README.md): real digits
    for the tests and benchmarks without training/ — ``len``, ``labels``, ``image(i)`` (RGB)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i]).convert("RGB")


@functools.cache
def mnist_test() -> Digits:
    with np.load(DIGITS) as npz:
        return Digits(npz["images"], npz["labels"])


def digit_png(i: int) -> bytes:
    """Test digit ``i`` as PNG bytes."""
    buf = io.BytesIO()
    mnist_test().image(i).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """Start with :meth:`start` (or ``with``); every keyword is an ``SDSSL_*`` setting.

    ``log``: a file for the server's output (else it is inherited). ``honour_modes``: as root,
    drop the capabilities that write through file mode bits, so a chmod'ed folder is read-only
    to the server too. ``env``: more environment variables. ``root``: the checkout whose
    ``service`` runs (another commit's, for a before/after benchmark).
    """

    def __init__(
        self,
        bundle: Path,
        data_dir: Path,
        log: Path | None = None,
        *,
        honour_modes: bool = False,
        env: dict[str, str] | None = None,
        root: Path = ROOT,
        **settings: Any,
    ) -> None:
        self.bundle, self.data_dir, self.log, self.root = bundle, data_dir, log, root
        self.honour_modes = honour_modes and os.geteuid() == 0
        self.env = {**(env or {}), **{f"SDSSL_{k.upper()}": str(v) for k, v in settings.items()}}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 180, until: str = "readyz") -> ServerProcess:
        """Start and wait until ``until`` (/readyz, or /livez for a server that may never be
        ready) answers 200; RuntimeError if the process exits."""
        cmd = [sys.executable, "-m", "service", "--bundle", str(self.bundle),
               "--data-dir", str(self.data_dir), "--port", str(self.port)]  # fmt: skip
        if self.honour_modes:
            cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *cmd]
        out = None
        if self.log is not None:
            self._log = out = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close_log()
                tail = self.log.read_text()[-2000:] if self.log else ""
                raise RuntimeError(f"server exited ({self.proc.returncode}): {tail}")
            if self.ready(until):
                return self
            time.sleep(0.2)
        self.stop()  # not left running behind a failed test
        raise TimeoutError(f"server not ready after {timeout:.0f} s")

    def ready(self, route: str = "readyz") -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/{route}", timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def client(self, **kw: Any):
        """An httpx client for this server (the tests' and benchmarks' HTTP library)."""
        import httpx

        return httpx.Client(base_url=self.url, timeout=60, **kw)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._close_log()

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
