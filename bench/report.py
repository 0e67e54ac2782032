"""``make bench``: run every benchmark on the default model and write
``bench/results/<date>-<machine>.md`` (each script's tables and headline, with the command that
made them) and PNG plots beside it.

    python -m bench.report [--quick]      # --quick: shorter runs, 100k-vector retrieval only
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import re
import subprocess
import sys
import time

from bench.common import ROOT, machine


def run(cmd: list[str]) -> tuple[str, float, int]:
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True)
    out = res.stdout if res.returncode == 0 else res.stdout + "\n" + res.stderr[-3000:]
    return out.strip(), time.perf_counter() - start, res.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    day = dt.date.today().isoformat()
    host = re.sub(r"[^a-z0-9]+", "-", f"{platform.machine()}-{machine()}".lower()).strip("-")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    stem = f"{day}-{host[:48]}"
    seconds = "4" if args.quick else "10"
    jobs = [
        ("Training step cost of SDSSL", ["bench.train_step"]),
        ("Depth scaling (onnxruntime)",
         ["bench.depth_scaling", "--plot", f"bench/results/{stem}-depth.png"]),
        ("Server efficiency", ["bench.server_efficiency", "--seconds", seconds]),
        ("Budget adherence", ["bench.budget_adherence", "--seconds", seconds]),
        ("Retrieval at scale",
         ["bench.retrieval", "--sizes", "100000" if args.quick else "100000,1000000"]),
        ("Server memory with 100k items", ["bench.memory"]),
        ("Index lifecycle: rollout and snapshots",
         ["bench.collection", "--snapshot-items", "20000" if args.quick else "100000"]),
        ("Bridged queries against one gallery", ["bench.bridges"]),
        ("One gallery at scale through HTTP",
         ["bench.scale", "--items", "100000" if args.quick else "1000000"]),
    ]  # fmt: skip
    lines = [f"# Benchmarks, {day}", "", f"Machine: {machine()} (no GPU); `make bench`", ""]
    for title, cmd in jobs:
        print(f"== {title}: python -m {' '.join(cmd)}", flush=True)
        out, took, code = run(cmd)
        print(out.splitlines()[-1] if out else "(no output)", flush=True)
        lines += [f"## {title}", "", f"Command: `python -m {' '.join(cmd)}` ({took:.0f} s"
                  + ("" if code == 0 else f", exit {code}") + ")", "", out, ""]  # fmt: skip
    path = results / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
