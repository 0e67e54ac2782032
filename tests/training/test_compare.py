"""The comparison's per-run cache: a second ``compare`` over the same seeds trains nothing."""

from __future__ import annotations

import json
import shutil

from training.compare import run_comparison


def test_second_compare_trains_nothing(tiny_cfg, tmp_path) -> None:
    tiny_cfg.train.max_steps = 2
    tiny_cfg.train.method = "simclr"
    runs, results = tmp_path / "runs", tmp_path / "results"
    first = run_comparison(tiny_cfg, [0], runs, results, tag="t")
    assert first.name == "mnist5k-simclr-t.md"
    assert (results / "runs" / "mnist5k-simclr-t" / "sdssl-s0.json").is_file()
    report = json.loads((results / "mnist5k-simclr-t.json").read_text())
    shutil.rmtree(runs)  # no checkpoints left: a run that trained again would recreate them
    tiny_cfg.train.threads = 2  # how a run executes is not what it learns
    run_comparison(tiny_cfg, [0], runs, results, tag="t")
    assert not runs.exists()
    again = json.loads((results / "mnist5k-simclr-t.json").read_text())
    assert again["per_seed"] == report["per_seed"]
