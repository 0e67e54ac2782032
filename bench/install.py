"""What a new user waits for: a fresh clone, then `make run` until /readyz answers — the seconds
it takes and the size of the .venv it installs (targets: ≤ 90 s, ≤ 1 GB).

    python -m bench.install [--cache]      # --cache: let pip use its download cache

It clones this checkout's HEAD (committed files only) into a temporary folder, runs `make run`
there on a free port with pip's cache off (a new machine has none), and stops the server once it
is ready. The machine still needs Python 3.11 and the registries; the time includes downloads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.common import ROOT, free_port, machine

TARGET_S, TARGET_BYTES = 90.0, 1 << 30


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            p = Path(root) / name
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.install", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--cache", action="store_true", help="let pip use its download cache")
    parser.add_argument(
        "--timeout", type=float, default=900, help="give up after this many seconds"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sdssl-install-"))
    clone = work / "sdssl"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SDSSL_", "VIRTUAL_ENV"))}
    if not args.cache:
        env["PIP_NO_CACHE_DIR"] = "1"
    log = open(work / "make-run.log", "wb")  # noqa: SIM115 - closed below
    start = time.perf_counter()
    proc = subprocess.Popen(["make", "run", f"PORT={port}"], cwd=clone, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url, seconds = f"http://127.0.0.1:{port}", None
    try:
        while time.perf_counter() - start < args.timeout:
            if proc.poll() is not None:
                break
            if ready(url):
                seconds = time.perf_counter() - start
                break
            time.sleep(0.25)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()
    if seconds is None:
        print((work / "make-run.log").read_text()[-3000:], file=sys.stderr)
        print(f"error: not ready after {time.perf_counter() - start:.0f} s (log above)")
        return 1
    venv = tree_bytes(clone / ".venv")
    print(f"machine: {machine()}; pip cache {'on' if args.cache else 'off'}")
    print(f"fresh clone → make run → /readyz 200: {seconds:.1f} s (target ≤ {TARGET_S:.0f} s: "
          f"{seconds / TARGET_S:.2f} of it)")  # fmt: skip
    print(f".venv: {venv / 1e6:.0f} MB (target ≤ {TARGET_BYTES / 1e6:.0f} MB: "
          f"{venv / TARGET_BYTES:.2f} of it)")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    return 0 if seconds <= TARGET_S and venv <= TARGET_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
