"""A real 2-process torchrun (gloo on CPU) training run, and the gather's gradient rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.training.conftest import TINY
from training.checkpoint import load_state

ROOT = Path(__file__).resolve().parents[2]


def test_torchrun_two_processes(tmp_path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "training", "train", "--config", str(TINY),
            "--set", "train.method=simclr", "--set", "train.max_steps=2",
            "--out", str(out), "--no-eval",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert load_state(out)["step"] == 2


def test_gather_keeps_local_gradient_only_single_process() -> None:
    from training.distributed import gather, gather_with_local_grad

    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_local_grad(x) is x
    assert not gather(x).requires_grad
