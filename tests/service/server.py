"""Real servers for the tests: :class:`tests.harness.ServerProcess` with the tests' defaults
(one onnxruntime thread, warnings only — the suite shares a small machine). Warm-up keeps its
default of 3 timed runs per graph: with one, a single noisy sample could keep a depth unchosen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harness import ServerProcess, free_port

__all__ = ["Server", "free_port"]
TEST_SETTINGS = {"threads": 1, "log_level": "warning"}


def Server(bundle: Path, data_dir: Path, log: Path, **settings: Any) -> ServerProcess:
    honour_modes = settings.pop("honour_modes", False)
    return ServerProcess(bundle, data_dir, log, honour_modes=honour_modes,
                         env={"OMP_NUM_THREADS": "1"}, **{**TEST_SETTINGS, **settings})  # fmt: skip
