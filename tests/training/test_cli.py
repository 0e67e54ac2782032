"""The CLI as a user meets it: help texts, and one-line reasons for every bad request."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize("sub", [[], ["train"], ["evaluate"], ["compare"], ["slim"]])
def test_help(sub: list[str]) -> None:
    res = cli(*sub, "--help")
    assert res.returncode == 0
    assert "usage: python -m training" in res.stdout


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ("train.method=dino", "unknown method 'dino'"),
        ("data.dataset=imagenet", "unknown dataset 'imagenet'"),
        ("data.dataset=folder:/no/such/folder", "image folder not found"),
        ("train.nonsense=1", "unknown config key 'train.nonsense'"),
        ("model.depth=zero", "model.depth: expected int"),
        ("model.patch_size=5", "not a multiple of model.patch_size"),
    ],
)
def test_bad_train_requests_exit_with_one_line(tmp_path, override: str, reason: str) -> None:
    res = cli("train", "--config", str(TINY), "--set", override, "--out", str(tmp_path / "o"))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0], lines


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "ckpt"
    res = cli(
        "train", "--config", str(TINY), "--set", "train.max_steps=1", "--out", str(out), "--no-eval"
    )
    assert res.returncode == 0, res.stderr
    return out


def test_exit_depth_out_of_range(tiny_ckpt: Path) -> None:
    res = cli("evaluate", str(tiny_ckpt), "--exit-depths", "1,9")
    assert res.returncode == 2
    assert res.stderr.strip() == "error: exit depth 9 out of range 1..4"


def test_evaluate_cross_validated(tiny_ckpt: Path, tmp_path) -> None:
    """--cv scores as compare does (over all images) and says so in metrics.json."""
    from training.checkpoint import load_backbone
    from training.compare import _score

    res = cli("evaluate", str(tiny_ckpt), "--cv", "--output", str(tmp_path), "--no-plot")
    assert res.returncode == 0, res.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "cross-validation" in metrics["protocol"]
    backbone, cfg = load_backbone(tiny_ckpt)
    want = _score(backbone, cfg)["knn_top1"]
    assert metrics["knn_top1"] == pytest.approx(want, abs=1e-4)


def test_teacher_of_a_method_without_one(tiny_ckpt: Path) -> None:
    res = cli("evaluate", str(tiny_ckpt), "--backbone", "teacher")
    assert res.returncode == 2
    assert res.stderr.strip().endswith("has no teacher (simclr trains none)")


def test_missing_checkpoint_and_bad_config_file(tmp_path) -> None:
    res = cli("evaluate", str(tmp_path / "missing"))
    assert res.returncode == 2 and "checkpoint directory not found" in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    res = cli("train", "--config", str(bad), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "cannot parse config" in res.stderr


def test_resume_may_not_change_the_model(tiny_ckpt: Path) -> None:
    res = cli("train", "--resume", "--out", str(tiny_ckpt), "--set", "model.depth=2")
    assert res.returncode == 2
    assert "--resume cannot change model.depth" in res.stderr


def test_evaluate_subset_of_depths(tiny_ckpt: Path, tmp_path) -> None:
    res = cli(
        "evaluate", str(tiny_ckpt), "--exit-depths", "2,4", "--output", str(tmp_path), "--no-plot"
    )
    assert res.returncode == 0, res.stderr
    assert "| 2 |" in res.stdout and "| 4 |" in res.stdout and "| 1 |" not in res.stdout
