"""The experiment that justifies the product: baseline vs SDSSL, same seeds, model and budget.

Each (variant, seed) run is a checkpoint under ``runs/``; a finished run is reused and an
unfinished one resumed, so a comparison can span several sessions. ``jobs`` > 1 trains that many
runs at once, each in its own process (a GPU, or a CPU whose cores one run does not fill), which
scores its run and caches the score as soon as it finishes.
Scores are k-NN and linear top-1 per exit depth under stratified 5-fold cross-validation over
every labelled image.
"""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import shlex
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoint import STATE, load_backbone, load_state, write_json
from training.config import Config, unused_keys
from training.data import load_splits
from training.evaluate import cross_validated, embed_source, plot_metrics, raw_pixels
from training.loop import seed_everything, train
from training.sdssl import SDSSL
from training.stats import paired

log = logging.getLogger(__name__)
VARIANTS = ("baseline", "sdssl")


def _variant_config(cfg: Config, variant: str, seed: int) -> Config:
    c = copy.deepcopy(cfg)
    c.train.seed = seed
    c.train.distill = variant == "sdssl"
    c.data.split = "all"  # self-supervised: labels are only used by the cross-validated scorer
    return c


# Keys that change how a run executes, not what it learns: a cached score stays valid across them.
_EXECUTION_KEYS = {"train": ("threads", "log_every"), "data": ("num_workers",)}


def cache_identity(cfg: Config) -> dict[str, Any]:
    """The config as a cached run stores it (JSON form: tuples are lists), less execution keys."""
    raw = json.loads(json.dumps(cfg.to_dict()))
    for section, keys in _EXECUTION_KEYS.items():
        for key in keys:
            raw[section].pop(key, None)
    for dotted in unused_keys(cfg):  # e.g. the momentum of a method without a teacher
        section, key = dotted.split(".")
        raw[section].pop(key, None)
    return raw


def _cached_score(path: Path, cfg: Config) -> dict[str, Any] | None:
    """The score cached at ``path`` if it was made with ``cfg`` (``cache_identity``), else None."""
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    same = cache_identity(Config.from_dict(result["config"])) == cache_identity(cfg)
    return result if same else None


def _finished(run_dir: Path) -> bool:
    if not (run_dir / STATE).is_file():
        return False
    state = load_state(run_dir)
    return int(state["step"]) >= int(state["total_steps"])


def _train_and_score(
    cfg: Config, run_dir: Path, cached: Path, bar_position: int | None = None
) -> dict[str, Any]:
    """Train (or finish) one run, score it and cache the score at ``cached``; returns the score."""
    if cfg.train.threads:  # a finished run is scored without ``train`` setting them
        torch.set_num_threads(cfg.train.threads)
    if not _finished(run_dir):
        resume = run_dir if (run_dir / STATE).is_file() else None
        train(cfg, run_dir, resume=resume, bar_position=bar_position)
    wall = float(load_state(run_dir).get("wall_s", 0.0))
    backbone, _ = load_backbone(run_dir)
    result = {**_score(backbone, cfg), "train_wall_s": round(wall, 1), "config": cfg.to_dict()}
    write_json(cached, result)
    return result


_worker_slot = 0  # this worker process's progress-bar line (set by _init_worker)


def _init_worker(slots: Any) -> None:
    global _worker_slot
    with slots.get_lock():
        _worker_slot = slots.value
        slots.value += 1
    _exit_with_parent()


def _exit_with_parent() -> None:
    """End this worker process when the process that started it ends.

    A pool's workers outlive a parent killed by a signal (``kill``, a session's end): they would
    go on training for hours, unseen, taking the cores the next run needs. A run killed this way
    loses at most the epoch in progress; it resumes from its last checkpoint."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _train_and_score_in_worker(cfg: Config, run_dir: Path, cached: Path) -> dict[str, Any]:
    return _train_and_score(cfg, run_dir, cached, bar_position=_worker_slot)


def _train_side_by_side(
    todo: list[tuple[Config, Path, Path]], jobs: int
) -> dict[Path, dict[str, Any]]:
    """Train and score ``todo``'s (config, run folder, score cache) ``jobs`` at a time, each in
    its own process with its share of the cores (unless ``train.threads`` is set); each caches its
    score when it finishes, whatever its partners do; returns the scores by cache path. The first
    failure cancels the runs not yet started and is raised once those running have finished
    (their checkpoints resume later)."""
    ctx = multiprocessing.get_context("spawn")  # fork and an initialised torch do not mix
    jobs = min(jobs, len(todo))
    share = max(1, (os.cpu_count() or 1) // jobs)
    slots = ctx.Value("i", 0)
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=(slots,)) as pool:  # fmt: skip
        futures = []
        for c, run_dir, cached in todo:
            c = copy.deepcopy(c)
            c.train.threads = c.train.threads or share  # an execution key: the cache is unmoved
            futures.append(pool.submit(_train_and_score_in_worker, c, run_dir, cached))
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            for f in futures:
                f.cancel()
            raise failed[0].exception()  # type: ignore[misc]
    return {cached: f.result() for (_, _, cached), f in zip(todo, futures, strict=True)}


def _score(backbone: torch.nn.Module, cfg: Config) -> dict[str, Any]:
    splits = load_splits(cfg.data.dataset, cfg.data.test_fraction)
    depths = list(range(1, cfg.model.depth + 1))
    feats, labels = embed_source(backbone, splits.all, cfg, depths, "embed all")
    knn, lin = cross_validated(feats, labels, cfg)
    return {"exit_depths": depths, "knn_top1": knn, "linear_top1": lin}


def _mean_std(runs: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation (n − 1) over seeds (zeros for one seed)."""
    arr = np.array([r[key] for r in runs])
    return arr.mean(0), (arr.std(0, ddof=1) if len(arr) > 1 else np.zeros(arr.shape[1:]))


def paired_knn(scores: dict[str, list[dict[str, Any]]], depths: list[int]) -> dict[str, Any]:
    """SDSSL − baseline k-NN paired by seed: per depth, and over the first half of the depths
    (each seed's mean over them)."""
    sd = np.array([r["knn_top1"] for r in scores["sdssl"]])
    base = np.array([r["knn_top1"] for r in scores["baseline"]])
    half = max(1, len(depths) // 2)
    return {
        "per_depth": [paired(sd[:, i], base[:, i]).to_dict() for i in range(len(depths))],
        "first_half": {"depths": depths[:half],
                       **paired(sd[:, :half].mean(1), base[:, :half].mean(1)).to_dict()},
    }  # fmt: skip


def _fmt(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _signed(mean: float, sd: float | None) -> str:
    """A difference in points: +5.6 ± 0.4 (sample std), or +5.6 for one seed."""
    return f"{100 * mean:+.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def _num(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _p(v: float | None) -> str:
    """A p-value with two significant digits (0.00027, not 0.000)."""
    return "–" if v is None else f"{v:.2g}"


def report_stem(cfg: Config, tag: str | None = None) -> str:
    """``<dataset>-<method>[-<tag>]``: the report's file stem and its cache folder's name."""
    stem = f"{cfg.data.dataset.replace(':', '_').replace('/', '_')}-{cfg.train.method}"
    return f"{stem}-{tag}" if tag else stem


def run_comparison(
    cfg: Config,
    seeds: list[int],
    runs_dir: Path,
    results_dir: Path,
    tag: str | None = None,
    jobs: int = 1,
) -> Path:
    """Train and score every (variant, seed); write the markdown + JSON report; return the md.

    A (variant, seed) whose cached score was made with the same config (``cache_identity``) is
    not trained again. ``jobs`` > 1: the runs still to train go side by side, each scored by
    its own process as it finishes."""
    dataset = cfg.data.dataset
    started = time.time()
    scores: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    train_wall = 0.0
    stem = report_stem(cfg, tag)
    # Per-run scores are kept beside the report (small, committed), so a comparison that spans
    # sessions never retrains a run it has already scored.
    cache_dir = results_dir / "runs" / stem

    # Every (variant, seed): its config, run folder and cached score (None: still to train).
    plan = []
    for seed in seeds:
        for variant in VARIANTS:
            c = _variant_config(cfg, variant, seed)
            cached = cache_dir / f"{variant}-s{seed}.json"
            result = _cached_score(cached, c)
            plan.append((variant, c, runs_dir / f"{stem}-{variant}-s{seed}", cached, result))
    todo = [(c, run_dir, cached) for _, c, run_dir, cached, result in plan if result is None]
    side_by_side = _train_side_by_side(todo, jobs) if jobs > 1 and len(todo) > 1 else {}
    for variant, c, run_dir, cached, result in plan:
        if result is None:
            result = side_by_side.get(cached) or _train_and_score(c, run_dir, cached)
        scores[variant].append(result)
        train_wall += result.get("train_wall_s", 0.0)

    seed_everything(seeds[0])
    random_init = _score(SDSSL(_variant_config(cfg, "baseline", seeds[0])).eval_backbone, cfg)
    splits = load_splits(dataset, cfg.data.test_fraction)
    pixels, labels = raw_pixels(splits.all, cfg)
    raw_knn, _ = cross_validated(pixels[None], labels, cfg, linear=False)

    depths = list(range(1, cfg.model.depth + 1))
    agg = {}
    for variant in VARIANTS:
        knn_m, _ = _mean_std(scores[variant], "knn_top1")
        lin_m, _ = _mean_std(scores[variant], "linear_top1")
        agg[variant] = {
            "dataset": dataset,
            "exit_depths": depths,
            "knn_top1": [round(float(v), 5) for v in knn_m],
            "linear_top1": [round(float(v), 5) for v in lin_m],
        }
    results_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "baseline": agg["baseline"],
        "sdssl": agg["sdssl"],
        "raw_pixel_knn": round(raw_knn[0], 5),
        "random_init": {
            "knn_top1": [round(v, 5) for v in random_init["knn_top1"]],
            "linear_top1": [round(v, 5) for v in random_init["linear_top1"]],
        },
        "seeds": seeds,
        "per_seed": {
            v: [{k: r[k] for k in ("knn_top1", "linear_top1")} for r in runs]
            for v, runs in scores.items()
        },
        "paired_knn": paired_knn(scores, depths),
        "config": cfg.to_dict(),
        "train_wall_s": round(train_wall, 1),
    }
    write_json(results_dir / f"{stem}.json", report)
    plot_metrics(
        {"baseline": agg["baseline"], "SDSSL": agg["sdssl"]},
        results_dir / f"{stem}.png",
        floor=raw_knn[0],
    )
    md = results_dir / f"{stem}.md"
    md.write_text(_markdown(report, scores, depths, time.time() - started))
    return md


def _markdown(
    report: dict[str, Any], scores: dict[str, list], depths: list[int], wall: float
) -> str:
    cfg = report["config"]
    b_knn, b_knn_s = _mean_std(scores["baseline"], "knn_top1")
    s_knn, s_knn_s = _mean_std(scores["sdssl"], "knn_top1")
    b_lin, b_lin_s = _mean_std(scores["baseline"], "linear_top1")
    s_lin, s_lin_s = _mean_std(scores["sdssl"], "linear_top1")
    delta = s_knn - b_knn
    half = max(1, len(depths) // 2)
    wins = int((delta >= 0).sum())
    m, t = cfg["model"], cfg["train"]
    stopped = f" (stopped at {t['max_steps']} steps)" if t["max_steps"] else ""
    n = len(report["seeds"])
    stats = report["paired_knn"]
    first, last = stats["first_half"], stats["per_depth"][-1]
    lines = [
        f"# {cfg['data']['dataset']}: {t['method']} baseline vs SDSSL",
        "",
        f"ViT dim {m['embed_dim']}, depth {m['depth']}, heads {m['num_heads']}, patch "
        f"{m['patch_size']} on {m['img_size']} px; batch {t['batch_size']}, {t['epochs']} epochs"
        f"{stopped}, lr {t['lr']}, "
        f"seeds {report['seeds']}. Scores: top-1 under stratified 5-fold cross-validation over "
        f"all images (k-NN: cosine, k = {cfg['eval']['knn_k']}, T = "
        f"{cfg['eval']['knn_temperature']}), mean ± sample std over seeds. Δ: SDSSL − baseline "
        "paired by seed (same data order and initialisation); t: paired t; p: exact two-sided "
        "sign-flip test (its floor is 2 / 2^n).",
        "",
        f"**{n} seeds: SDSSL − baseline k-NN over exit depths 1–{half} "
        f"{_signed(first['mean'], first['sd'])} points (paired t = {_num(first['t'])}, "
        f"{first['df']} df, p = {_p(first['p_t'])}; sign-flip p = "
        f"{first['p_sign_flip']:.3f}); SDSSL ≥ baseline at {wins} of {len(depths)} depths; at "
        f"depth {depths[-1]} {_signed(last['mean'], last['sd'])}.** Raw-pixel k-NN floor: "
        f"{100 * report['raw_pixel_knn']:.1f} %.",
        "",
        "| exit depth | baseline k-NN | SDSSL k-NN | Δ k-NN | t | sign-flip p | baseline linear "
        "| SDSSL linear | random-init k-NN |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, d in enumerate(depths):
        p = stats["per_depth"][i]
        lines.append(
            f"| {d} | {_fmt(b_knn[i], b_knn_s[i])} | {_fmt(s_knn[i], s_knn_s[i])} | "
            f"{_signed(p['mean'], p['sd'])} | {_num(p['t'])} | {p['p_sign_flip']:.3f} | "
            f"{_fmt(b_lin[i], b_lin_s[i])} | {_fmt(s_lin[i], s_lin_s[i])} "
            f"| {100 * report['random_init']['knn_top1'][i]:.1f} |"
        )
    command = "python -m training " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines += [
        "",
        f"Command: `{command}`  ",
        f"Training wall time (all runs): {report['train_wall_s'] / 60:.1f} min; this report's "
        f"wall time (training not already done + scoring): {wall / 60:.1f} min, on a "
        f"{torch.get_num_threads()}-thread CPU.",
        "",
    ]
    return "\n".join(lines)
