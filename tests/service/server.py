"""A real ``python -m service`` process (real uvicorn) on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(
        self, bundle: Path, data_dir: Path, log: Path, honour_modes: bool = False, **settings: str
    ) -> None:
        self.bundle, self.data_dir, self.log = bundle, data_dir, log
        # As root, drop the capabilities that write through file mode bits (so that a chmod'ed
        # read-only folder is read-only to the server too).
        self.honour_modes = honour_modes and os.geteuid() == 0
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> Server:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "SDSSL_THREADS": "1",
            "SDSSL_WARMUP_RUNS": "1",
            "SDSSL_LOG_LEVEL": "warning",
            **{f"SDSSL_{k.upper()}": str(v) for k, v in self.settings.items()},
        }
        cmd = [sys.executable, "-m", "service", "--bundle", str(self.bundle),
               "--data-dir", str(self.data_dir), "--port", str(self.port)]  # fmt: skip
        self._log = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        if self.honour_modes:
            cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *cmd]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready: {self.log.read_text()[-2000:]}")

    def client(self, **kw) -> httpx.Client:
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
        self._log.close()  # closing twice is harmless

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)
