"""How much the server adds on top of the model: requests/s and p50/p99 of a real uvicorn server
under closed-loop load (concurrency 1, 8, 32, one image per request, deepest exit) against
onnxruntime in-process at its best batch size, measured in one run on one machine.

    python -m bench.server_efficiency [--bundle artifacts/bundles/default] [--seconds 10]

Last line: server req/s at concurrency 8 / in-process images/s (target >= 0.85).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.common import DEFAULT_BUNDLE, ServerProcess, closed_loop, digit_pngs, machine
from export.manifest import INPUT_NAME, Manifest
from service.images import prepare


def in_process(bundle: Path, images: np.ndarray, threads: int, seconds: float) -> dict[int, float]:
    """Images/s of the deepest exit graph in this process, per batch size."""
    m = Manifest.read(bundle)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(bundle / m.exits[-1].file), opts, providers=["CPUExecutionProvider"]
    )
    out = {}
    for b in (1, 2, 4, 8, 16, 32):
        batch = images[np.arange(b) % len(images)]
        for _ in range(3):
            session.run(None, {INPUT_NAME: batch})
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 6:
            session.run(None, {INPUT_NAME: batch})
            n += b
        out[b] = n / (time.perf_counter() - start)
    return out


def naive_rps(checkpoint: Path, pngs: list[bytes], seconds: float) -> dict:
    """Closed loop at concurrency 8 against bench/naive_server.py (same weights, torch eager)."""
    import subprocess

    import httpx

    from bench.common import ROOT, free_port

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
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print(f"\nserver req/s at concurrency 8 / in-process images/s at batch {best_b}: {ratio:.2f} "
          "(target >= 0.85)")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
