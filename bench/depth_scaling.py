"""Does cost fall with exit depth? onnxruntime latency per exit depth at batch 1 and 32,
as latency(d)/latency(L) against d/L, for the default bundle and a ViT-S/16 at 224 px
(random weights; exported here unless --vit-s16-bundle is given).

    python -m bench.depth_scaling [--bundle bundles/default] [--skip-vit-s16]

Last line: the worst excess of latency(d)/latency(L) over d/L (target <= 0.1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import DEFAULT_BUNDLE, ROOT, machine
from export.profile import plot, profile_bundle


def ensure_vit_s16(work: Path) -> tuple[Path, float]:
    """A random-init ViT-S/16 bundle (and how long its export took, in seconds)."""
    bundle = work / "bundles" / "vit_s16"
    manifest = bundle / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("segments"):
        return bundle, float("nan")  # (one exported before segments existed is redone)
    ckpt = work / "vit_s16"
    py = sys.executable
    subprocess.run([py, "-m", "training", "init", "--config", "configs/vit_s16.yaml", "--out",
                    str(ckpt)], cwd=ROOT, check=True)  # fmt: skip
    start = time.perf_counter()
    subprocess.run([py, "-m", "export", str(ckpt), str(bundle), "--force"], cwd=ROOT, check=True)
    return bundle, time.perf_counter() - start


def ratios(result: dict) -> list[dict]:
    depth = result["depth"]
    rows = result["rows"]
    full = {r["batch_size"]: r["median_ms"] for r in rows if r["exit_depth"] == depth}
    return [
        {**r, "d_over_L": r["exit_depth"] / depth, "ratio": r["median_ms"] / full[r["batch_size"]]}
        for r in rows
    ]


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "bench")
    parser.add_argument("--skip-vit-s16", action="store_true")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, help="PNG of latency against exit depth")
    args = parser.parse_args()
    models = {"default": (args.bundle, float("nan"))}
    if not args.skip_vit_s16:
        models["ViT-S/16 224px"] = ensure_vit_s16(args.work)
    print(f"machine: {machine()}; onnxruntime CPU, median of {args.repeats} runs after warm-up")
    out, worst = {}, -1.0
    for name, (bundle, export_s) in models.items():
        result = profile_bundle(bundle, [1, 32], repeats=args.repeats, progress=False)
        if args.plot and name == "default":
            plot(result, args.plot)
        rows = ratios(result)
        out[name] = {"rows": rows, "export_s": export_s}
        print(
            f"\n{name} ({bundle})" + (f", export {export_s:.0f} s" if export_s == export_s else "")
        )
        print("| exit depth | d/L | batch 1 ms | ratio | batch 32 ms | ratio | excess over d/L |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        by = {(r["exit_depth"], r["batch_size"]): r for r in rows}
        for d in sorted({r["exit_depth"] for r in rows}):
            a, b = by[(d, 1)], by[(d, 32)]
            excess = max(a["ratio"], b["ratio"]) - a["d_over_L"]
            worst = max(worst, excess)
            print(f"| {d} | {a['d_over_L']:.2f} | {a['median_ms']:.2f} | {a['ratio']:.2f} | "
                  f"{b['median_ms']:.2f} | {b['ratio']:.2f} | {excess:+.2f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print(f"\nworst latency(d)/latency(L) - d/L over depths, batch 1 and 32: {worst:+.2f} "
          "(target <= 0.1)")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
