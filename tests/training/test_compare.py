"""The comparison's per-run cache (a second ``compare`` over the same seeds trains nothing) and
its runs side by side (``--jobs``)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from training.compare import report_stem, run_comparison
from training.errors import ConfigError


def test_second_compare_trains_nothing(tiny_cfg, digit_folder, tmp_path) -> None:
    tiny_cfg.data.dataset = f"folder:{digit_folder}"  # scored in seconds
    tiny_cfg.train.max_steps = 2
    tiny_cfg.train.method = "simclr"
    runs, results = tmp_path / "runs", tmp_path / "results"
    stem = report_stem(tiny_cfg, "t")
    assert stem.endswith("-simclr-t")
    first = run_comparison(tiny_cfg, [0, 1], runs, results, tag="t")
    assert first.name == f"{stem}.md"
    assert (results / "runs" / stem / "sdssl-s0.json").is_file()
    report = json.loads((results / f"{stem}.json").read_text())
    shutil.rmtree(runs)  # no checkpoints left: a run that trained again would recreate them
    tiny_cfg.train.threads = 2  # how a run executes is not what it learns
    run_comparison(tiny_cfg, [0, 1], runs, results, tag="t")
    assert not runs.exists()
    again = json.loads((results / f"{stem}.json").read_text())
    assert again["per_seed"] == report["per_seed"]
    # Paired by seed: the reported differences are the per-seed SDSSL − baseline ones.
    sd, base = report["per_seed"]["sdssl"], report["per_seed"]["baseline"]
    first_depth = report["paired_knn"]["per_depth"][0]
    want = [s["knn_top1"][0] - b["knn_top1"][0] for s, b in zip(sd, base, strict=True)]
    assert first_depth["diffs"] == want
    assert first_depth["df"] == 1 and 0 < first_depth["p_sign_flip"] <= 1
    assert "2 seeds: SDSSL − baseline k-NN over exit depths 1–2" in first.read_text()


def test_runs_side_by_side_learn_what_runs_in_turn_learn(tiny_cfg, digit_folder, tmp_path) -> None:
    """--jobs 2 trains each run in a process of its own on its share of the cores; the scores
    are those of the same runs trained one at a time."""
    share = max(1, (os.cpu_count() or 1) // 2)
    tiny_cfg.data.dataset = f"folder:{digit_folder}"
    tiny_cfg.train.max_steps = 2
    tiny_cfg.train.method = "simclr"
    tiny_cfg.train.threads = None  # side by side: each worker takes cores / jobs
    run_comparison(tiny_cfg, [0], tmp_path / "side", tmp_path / "b", tag="t", jobs=2)
    tiny_cfg.train.threads = share  # in turn, on as many threads as each worker had
    try:
        run_comparison(tiny_cfg, [0], tmp_path / "in_turn", tmp_path / "a", tag="t")
    finally:
        torch.set_num_threads(1)
    runs = sorted((tmp_path / "side").iterdir())
    stem = report_stem(tiny_cfg, "t")
    assert [p.name for p in runs] == [f"{stem}-baseline-s0", f"{stem}-sdssl-s0"]
    for run in runs:  # trained by a worker: it set the threads the config left open
        assert json.loads((run / "config.json").read_text())["train"]["threads"] == share
    in_turn = json.loads((tmp_path / "a" / f"{stem}.json").read_text())
    side = json.loads((tmp_path / "b" / f"{stem}.json").read_text())
    assert side["per_seed"] == in_turn["per_seed"]


def test_a_run_that_fails_side_by_side_fails_the_comparison(tiny_cfg, tmp_path) -> None:
    tiny_cfg.train.batch_size = 100_000  # more than the dataset holds: each run refuses
    with pytest.raises(ConfigError, match=r"fewer than train\.batch_size") as raised:
        run_comparison(tiny_cfg, [0], tmp_path / "runs", tmp_path / "results", jobs=2)
    # Raised in a worker process and carried back (with the worker's traceback as its cause).
    assert type(raised.value.__cause__).__name__ == "_RemoteTraceback"
    assert not (tmp_path / "results" / "runs").exists()  # nothing scored, nothing cached


def test_a_side_by_side_run_is_scored_when_it_finishes_whatever_its_partner_does(
    tiny_cfg, digit_folder, tmp_path
) -> None:
    """Each worker caches its own run's score: the SDSSL run's corrupt checkpoint fails the
    comparison, yet the baseline it trained beside is scored and never trained again."""
    from training.checkpoint import STATE
    from training.errors import CheckpointError

    tiny_cfg.data.dataset = f"folder:{digit_folder}"
    tiny_cfg.train.max_steps = 2
    tiny_cfg.train.method = "simclr"
    runs, results = tmp_path / "runs", tmp_path / "results"
    stem = report_stem(tiny_cfg, "t")
    corrupt = runs / f"{stem}-sdssl-s0"
    corrupt.mkdir(parents=True)
    (corrupt / STATE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        run_comparison(tiny_cfg, [0], runs, results, tag="t", jobs=2)
    cache = results / "runs" / stem
    assert sorted(p.name for p in cache.iterdir()) == ["baseline-s0.json"]
    shutil.rmtree(runs)  # the baseline's checkpoint gone: training it again would recreate it
    run_comparison(tiny_cfg, [0], runs, results, tag="t", jobs=2)
    assert sorted(p.name for p in runs.iterdir()) == [f"{stem}-sdssl-s0"]
    assert sorted(p.name for p in cache.iterdir()) == ["baseline-s0.json", "sdssl-s0.json"]


def test_cached_scores_survive_settings_a_method_does_not_use(tiny_cfg) -> None:
    """SimCLR has no teacher: runs cached when train.momentum defaulted to 0.996 still hit."""
    import copy

    from training.compare import cache_identity

    tiny_cfg.train.method = "simclr"
    old = copy.deepcopy(tiny_cfg)
    old.train.momentum = 0.996
    assert cache_identity(old) == cache_identity(tiny_cfg)
    old.train.method = tiny_cfg.train.method = "byol"
    assert cache_identity(old) != cache_identity(tiny_cfg)


_PARENT = """
import multiprocessing, os, time
from concurrent.futures import ProcessPoolExecutor
from training.compare import _init_worker

if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        1, mp_context=ctx, initializer=_init_worker, initargs=(ctx.Value("i", 0),)
    )
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 600)  # a long run in progress
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads process states from /proc")
def test_side_by_side_workers_end_with_a_killed_compare(tmp_path) -> None:
    """A compare killed by a signal takes its training processes with it."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, env=env)
    worker = None
    try:
        worker = int(parent.stdout.readline())
        assert _alive(worker)
        parent.terminate()
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its killed parent"
    finally:
        parent.kill()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)
