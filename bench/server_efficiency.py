"""How much the server adds on top of the model, measured in one run on one machine:

- requests/s and p50/p99 of a real server under closed-loop load (concurrency 1, 8, 32, one
  image per request, deepest exit) against onnxruntime in-process at its best batch size;
- the per-request overhead (framework + intake + response) of the default bundle: wrk (C) at
  one connection, its mean latency minus the graph's own compute time at batch 1;
- with ``--vit-s16``, where compute dominates: server images/s at concurrency 8 against
  in-process onnxruntime at the batch size the server actually formed, same threads.

    python -m bench.server_efficiency [--seconds 10] [--vit-s16]

Last lines: the ratios (targets: >= 0.85 at ViT-S/16; overhead <= 0.5 ms with wrk).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from bench.common import DEFAULT_BUNDLE, ROOT, ServerProcess, closed_loop, digit_pngs, machine
from export.manifest import INPUT_NAME, Manifest
from service.inference.engine import default_threads
from service.inference.images import prepare


def in_process(
    bundle: Path,
    images: np.ndarray,
    threads: int,
    seconds: float,
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
) -> dict[int, float]:
    """Images/s of the deepest exit graph in this process, per batch size."""
    m = Manifest.read(bundle)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(bundle / m.exits[-1].file), opts, providers=["CPUExecutionProvider"]
    )
    out = {}
    for b in batch_sizes:
        batch = images[np.arange(b) % len(images)]
        for _ in range(3):
            session.run(None, {INPUT_NAME: batch})
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / len(batch_sizes):
            session.run(None, {INPUT_NAME: batch})
            n += b
        out[b] = n / (time.perf_counter() - start)
    return out


def wrk_overhead(url: str, png: bytes, depth: int, compute_ms: float, seconds: float) -> dict:
    """wrk, one thread, one connection: mean latency per request minus the compute."""
    if shutil.which("wrk") is None:
        return {"error": "wrk is not installed (apt-get install wrk)"}
    boundary = "sdsslbench"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; "
            f"filename=\"d.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + png + (
            f"\r\n--{boundary}--\r\n").encode()  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "body").write_bytes(body)
        script = Path(tmp) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f'wrk.headers["Content-Type"] = "multipart/form-data; boundary={boundary}"\n'
            f'local f = io.open("{Path(tmp) / "body"}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
        )
        cmd = ["wrk", "-t1", "-c1", f"-d{max(2, int(seconds))}s", "-s", str(script),
               f"{url}/v1/embeddings?exit_depth={depth}"]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    per_request = 1000 / rps
    return {"rps": rps, "ms_per_request": per_request, "compute_ms": compute_ms,
            "overhead_ms": per_request - compute_ms}  # fmt: skip


def compute_bound(bundle: Path, pngs: list[bytes], seconds: float, threads: int) -> dict:
    """Server images/s at concurrency 8 vs in-process at the server's mean batch size."""
    m = Manifest.read(bundle)
    depth = m.exits[-1].exit_depth
    with (
        tempfile.TemporaryDirectory() as data,
        ServerProcess(bundle, Path(data), threads=threads, max_batch=8, warmup_runs=1,
                      log_level="warning") as server,
    ):  # fmt: skip
        closed_loop(server.url, 8, 5.0, pngs, lambda i: {"exit_depth": depth})  # warm
        before = batch_counts(server.url, depth)
        r = closed_loop(server.url, 8, seconds, pngs, lambda i: {"exit_depth": depth})
        after = batch_counts(server.url, depth)
    batches, images = after[0] - before[0], after[1] - before[1]
    mean_batch = images / max(1, batches)
    p = m.preprocess
    arrays = np.stack([prepare(b, p.resize, p.crop, p.interpolation, 10**8) for b in pngs[:8]])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(bundle / m.exits[-1].file), opts,
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    b = max(1, round(mean_batch))
    batch = arrays[np.arange(b) % len(arrays)]
    session.run(None, {INPUT_NAME: batch})
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds / 2:
        session.run(None, {INPUT_NAME: batch})
        n += b
    in_proc = n / (time.perf_counter() - start)
    return {"server_images_per_s": r.rps, "mean_batch": mean_batch, "batch_used": b,
            "in_process_images_per_s": in_proc, "ratio": r.rps / in_proc, "threads": threads,
            "errors": r.errors}  # fmt: skip


def batch_counts(url: str, depth: int) -> tuple[float, float]:
    """(batches, images) the server ran at ``depth`` so far, from /metrics."""
    text = httpx.get(f"{url}/metrics").text
    label = f'exit_depth="{depth}"'
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith("sdssl_batch_size_count{") and label in line:
            count = float(line.split()[-1])
        if line.startswith("sdssl_batch_size_sum{") and label in line:
            total = float(line.split()[-1])
    return count, total


def naive_rps(checkpoint: Path, pngs: list[bytes], seconds: float) -> dict:
    """Closed loop at concurrency 8 against bench/naive_server.py (same weights, torch eager)."""
    from bench.common import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.naive_server", "--checkpoint",
                             str(checkpoint), "--port", str(port)], cwd=ROOT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{url}/docs", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("naive server did not start") from None
                time.sleep(0.3)
        closed_loop(url, 8, 2.0, pngs)
        r = closed_loop(url, 8, seconds, pngs)
        return {"rps": r.rps, "p50_ms": r.pct(50), "p99_ms": r.pct(99), "errors": r.errors}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--seconds", type=float, default=10.0, help="per load level")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all)")
    parser.add_argument("--json", type=Path, help="write the numbers here too")
    parser.add_argument("--vit-s16", action="store_true", help="also the compute-bound ViT-S/16")
    parser.add_argument(
        "--checkpoint", type=Path, default=Path("models/default"),
        help="the bundle's checkpoint, for the naive torch server (skipped if missing)",
    )  # fmt: skip
    args = parser.parse_args()
    m = Manifest.read(args.bundle)
    depth = m.exits[-1].exit_depth
    pngs = digit_pngs(64)
    p = m.preprocess
    arrays = np.stack([prepare(b, p.resize, p.crop, p.interpolation, 10**8) for b in pngs])

    base = in_process(args.bundle, arrays, args.threads, args.seconds)
    best_b = max(base, key=base.get)
    results = {}
    with (
        tempfile.TemporaryDirectory() as data,
        ServerProcess(args.bundle, Path(data), threads=args.threads) as server,
    ):
        closed_loop(server.url, 8, 2.0, pngs, lambda i: {"exit_depth": depth})  # warm
        for c in (1, 8, 32):
            r = closed_loop(server.url, c, args.seconds, pngs, lambda i: {"exit_depth": depth})
            results[c] = {
                "rps": r.rps,
                "p50_ms": r.pct(50),
                "p99_ms": r.pct(99),
                "errors": r.errors,
            }
        # The graph's own time for one image, in this process, on the server's threads.
        single = in_process(args.bundle, arrays, args.threads or default_threads(), 6.0, (1,))
        compute = 1000 / single[1]
        overhead = wrk_overhead(server.url, pngs[0], depth, compute, args.seconds)
        python_c1 = 1000 / results[1]["rps"] - compute

    naive = None
    if (args.checkpoint / "config.json").is_file():
        naive = naive_rps(args.checkpoint, pngs, args.seconds)
    print(f"machine: {machine()}; bundle {args.bundle} (exit depth {depth}, dim {m.model.dim})")
    print("\n| in-process batch | images/s |\n|---:|---:|")
    for b, v in base.items():
        print(f"| {b} | {v:.0f} |")
    print("\n| concurrency | server req/s | p50 ms | p99 ms | errors | vs in-process best |")
    print("|---:|---:|---:|---:|---:|---:|")
    for c, r in results.items():
        print(
            f"| {c} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | "
            f"{r['rps'] / base[best_b]:.2f} |"
        )
    ratio = results[8]["rps"] / base[best_b]
    out = {"in_process": base, "best_batch": best_b, "server": results, "ratio_c8": ratio}
    if naive is not None:
        out["naive_c8"] = naive
        print(f"\nnaive FastAPI + timm eager server (bench/naive_server.py), concurrency 8: "
              f"{naive['rps']:.0f} req/s, p50 {naive['p50_ms']:.2f} ms, "
              f"p99 {naive['p99_ms']:.2f} ms; "
              f"ours / naive: {results[8]['rps'] / naive['rps']:.2f} (target >= 2)")  # fmt: skip
    out["overhead"] = {**overhead, "python_client_overhead_ms": python_c1}
    print(f"\nper-request overhead at concurrency 1 (mean time per request minus the graph's "
          f"compute, {compute:.3f} ms): Python client {python_c1:.3f} ms; "
          + (f"wrk {overhead['overhead_ms']:.3f} ms ({overhead['rps']:.0f} req/s)"
             if "overhead_ms" in overhead else overhead["error"]))  # fmt: skip
    if args.vit_s16:
        from bench.depth_scaling import ensure_vit_s16

        bundle, _ = ensure_vit_s16(ROOT / "artifacts" / "bench")
        cb = compute_bound(bundle, pngs, 2 * args.seconds, default_threads())
        out["vit_s16"] = cb
        print(f"\nViT-S/16 224 px, deepest exit, concurrency 8, {cb['threads']} onnxruntime "
              f"thread(s): server {cb['server_images_per_s']:.2f} images/s in batches of "
              f"{cb['mean_batch']:.2f} on average; in-process at batch {cb['batch_used']}: "
              f"{cb['in_process_images_per_s']:.2f} images/s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print(f"\nserver req/s at concurrency 8 / in-process images/s at batch {best_b} (default "
          f"bundle): {ratio:.2f}")  # fmt: skip
    if "overhead_ms" in overhead:
        print(f"default bundle per-request overhead (wrk): {overhead['overhead_ms']:.3f} ms "
              "(target <= 0.5)")  # fmt: skip
    if args.vit_s16:
        print(f"ViT-S/16 server images/s / in-process at the server's batch size: "
              f"{out['vit_s16']['ratio']:.2f} (target >= 0.85)")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
