"""The serving engine on a GPU: CUDA vs CPU provider parity for every graph of a bundle, latency
per exit depth at batch 1 and 32 as a ratio to depth L, the warm-up latency table the planner
starts from, and FAISS GPU search against the CPU index. Markdown on stdout.

    python -m bench.gpu_serve BUNDLE [BUNDLE_FP16]      # bench/gpu_serve.sh runs it
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from export.manifest import load_verified
from service.inference.engine import ALL_EXITS, CUDA, Engine
from service.inference.latency import LatencyModel
from service.lifecycle.runtime import warm_up
from service.settings import Settings


def images(size: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest row-wise cosine similarity between two [..., D] arrays."""
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return float((num / den).min())


def median_ms(engine: Engine, key: int, x: np.ndarray, repeats: int = 20) -> float:
    engine.run(key, x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.run(key, x)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def parity_and_latency(bundle: Path, bound: float, device: str) -> list[str]:
    manifest = load_verified(bundle)
    gpu, cpu = Engine(bundle, manifest, device), Engine(bundle, manifest, "cpu")
    if device == "cuda":  # Engine refuses otherwise; say it here too
        assert all(CUDA in p for p in gpu.session_providers().values())
    s, depth = manifest.model.img_size, manifest.model.depth
    x = images(s, 32)
    lines = [
        f"### {bundle.name} ({manifest.precision}, {len(manifest.exits)} exits, {s} px)",
        "",
        f"| exit depth | min cosine CUDA vs CPU (bound {bound}) | ms, batch 1 | ms, batch 32 "
        "| latency / latency(L), batch 1 | batch 32 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    rows, worst = [], 1.0
    for key in [*manifest.exit_depths, ALL_EXITS]:
        g, c_, d = gpu.run(key, x), cpu.run(key, x), gpu.dim  # rows: bridged, then raw
        c = min(cosine(g[..., :d], c_[..., :d]), cosine(g[..., d:], c_[..., d:]))
        worst = min(worst, c)
        rows.append((key, c, median_ms(gpu, key, x[:1]), median_ms(gpu, key, x)))
    last = next(r for r in rows if r[0] == depth)
    for key, c, b1, b32 in rows:
        name = "all exits" if key == ALL_EXITS else str(key)
        ratios = f"{b1 / last[2]:.2f} | {b32 / last[3]:.2f}"
        lines.append(f"| {name} | {c:.6f} | {b1:.3f} | {b32:.3f} | {ratios} |")
    verdict = "holds" if worst >= bound else "**fails**"
    lines += ["", f"Parity {verdict}: worst cosine {worst:.6f} (bound {bound}).", ""]
    settings = Settings.model_construct(warmup_runs=3)  # the defaults, without FAISS's check
    latency = LatencyModel([*manifest.exit_depths, ALL_EXITS], settings.warmup_batch_sizes())
    warm_up(gpu, latency, settings, s)
    lines += [f"Warm-up table the planner starts from (ms, {device}):", "",
              "| exit depth | batch | ms |"]  # fmt: skip
    lines.append("|---:|---:|---:|")
    for row in latency.table():
        if row["batch_size"] in (1, 8, 32):
            name = "all" if row["exit_depth"] == ALL_EXITS else row["exit_depth"]
            lines.append(f"| {name} | {row['batch_size']} | {row['mean_ms']:.3f} |")
    return [*lines, ""]


def faiss_parity(n: int = 100_000, dim: int = 128, k: int = 10) -> list[str]:
    try:
        import faiss
    except ImportError:
        return ["FAISS: not installed here; nothing to compare.", ""]

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return ["FAISS: no GPU build or no GPU visible; its search stays on the CPU.", ""]
    from service.collection.vectors import GalleryVectors

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    q = x[:100] + 0.1 * rng.standard_normal((100, dim)).astype(np.float32)
    lines = ["| index | recall@10 of GPU vs CPU results | CPU ms / query batch | GPU ms |"]
    lines.append("|---|---:|---:|---:|")
    for factory in ("Flat", "IVF1024,Flat"):
        found = {}
        for use_gpu in (False, True):
            v = GalleryVectors(Path("/nonexistent"), dim, factory, use_gpu)
            v.active = factory
            v.rebuild(x, [(ids, x)])
            v.search(q, k)  # copy to the GPU (or warm the CPU)
            v.add(ids[:1] + n, x[:1])  # a write goes into the GPU copy in place
            start = time.perf_counter()
            _, nums = v.search(q, k)
            found[use_gpu] = (nums[:, :k], 1000 * (time.perf_counter() - start), v.device)
        cpu, gpu = found[False], found[True]
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(cpu[0], gpu[0], strict=True)])
        lines.append(f"| {factory} ({gpu[2]}) | {recall:.4f} | {cpu[1]:.2f} | {gpu[1]:.2f} |")
    return ["FAISS search parity (100 queries, 100k vectors, D 128):", "", *lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_serve", description=__doc__)
    parser.add_argument("bundles", type=Path, nargs="+", help="an fp32 bundle, then fp16 ones")
    parser.add_argument(
        "--device", default="cuda", help="cuda; cpu only checks that this script runs"
    )
    args = parser.parse_args(argv)
    out = [f"## The serving engine on {args.device} (bench/gpu_serve.sh)", ""]
    for bundle in args.bundles:
        fp16 = load_verified(bundle).precision == "fp16"
        out += parity_and_latency(bundle, 0.999 if fp16 else 0.9999, args.device)
    out += faiss_parity()
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
