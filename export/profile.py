"""``python -m export profile BUNDLE``: onnxruntime latency per exit depth and batch size.

Writes nothing into the bundle (bundles are immutable; latency belongs to the machine).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from export.manifest import INPUT_NAME
from export.parity import onnx_session
from export.verify import read_manifest


def time_session(session, images: np.ndarray, warmup: int, repeats: int) -> list[float]:
    """Wall-clock milliseconds of ``repeats`` runs after ``warmup`` runs."""
    feed = {INPUT_NAME: images}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(1000.0 * (time.perf_counter() - start))
    return times


def profile_bundle(
    bundle: Path,
    batch_sizes: list[int],
    warmup: int = 3,
    repeats: int = 20,
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Median and p95 latency (ms) per (exit_depth, batch size)."""
    manifest = read_manifest(bundle)
    s = manifest.model.img_size
    rng = np.random.default_rng(0)
    rows = []
    jobs = [(e, b) for e in manifest.exits for b in batch_sizes]
    sessions = {}
    for entry, b in tqdm(jobs, desc="profile", disable=not progress):
        if entry.exit_depth not in sessions:
            sessions[entry.exit_depth] = onnx_session(bundle / entry.file, threads)
        images = rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)
        t = time_session(sessions[entry.exit_depth], images, warmup, repeats)
        rows.append(
            {
                "exit_depth": entry.exit_depth,
                "batch_size": b,
                "median_ms": statistics.median(t),
                "p95_ms": float(np.percentile(t, 95)),
            }
        )
    return {"bundle": str(bundle), "depth": manifest.model.depth, "rows": rows}


def table(result: dict[str, Any]) -> str:
    """Markdown: latency and latency(d)/latency(L) against d/L per batch size."""
    depth = result["depth"]
    full = {r["batch_size"]: r["median_ms"] for r in result["rows"] if r["exit_depth"] == depth}
    lines = [
        "| exit depth | d/L | batch | median ms | p95 ms | latency(d)/latency(L) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        ratio = r["median_ms"] / full[r["batch_size"]] if r["batch_size"] in full else float("nan")
        lines.append(
            f"| {r['exit_depth']} | {r['exit_depth'] / depth:.2f} | {r['batch_size']} | "
            f"{r['median_ms']:.2f} | {r['p95_ms']:.2f} | {ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Latency against exit depth, one line per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for b in sorted({r["batch_size"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["batch_size"] == b]
        ax.plot(
            [r["exit_depth"] for r in rows],
            [r["median_ms"] for r in rows],
            marker="o",
            label=f"batch {b}",
        )
    ax.set_xlabel("exit depth (blocks run)")
    ax.set_ylabel("median latency (ms, onnxruntime CPU)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
