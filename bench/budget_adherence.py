"""Are budgets kept, how deep does the scheduler go, and does it degrade before it sheds? The
previous planner (SDSSL_CALIBRATION=global), the current one with whole-graph batches
(SDSSL_ANYTIME=off) and block by block (anytime) side by side, in one run, on the same budgets.

Per bundle: cost(d) is the median server-side elapsed time of fixed-depth-d requests at the
benchmark's concurrency (8); budgets are uniform in [cost(1), F x cost(L)] (F = 2 for the
default bundle, 1.2 for ViT-S/16); a budget is *feasible* when it is at least the p99 of
depth-1 requests at that load. For every request the oracle depth is the deepest whose compute,
swapped in for the served depth's at the batch size the request ran in (the server's own latency
table), fits the budget given the request's measured elapsed time. Then a load step: concurrency
8, then up to 32 (the extra clients joining over a few seconds) against a queue bound of 16
images, with depth and 503s per second.

    python -m bench.budget_adherence [--vit-s16] [--seconds 15]

Last line: per bundle, feasible budgets met and depth/oracle for both planners.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.common import DEFAULT_BUNDLE, ROOT, ServerProcess, closed_loop, digit_pngs, machine
from bench.depth_scaling import ensure_vit_s16

# The previous planner; the current one with whole-graph batches; block by block (anytime).
MODES = {
    "previous": {"calibration": "global", "anytime": "off"},
    "whole graphs": {"calibration": "components", "anytime": "off"},
    "anytime": {"calibration": "components", "anytime": "on"},
}
QUEUE_BOUND = 16


def cost_table(url: str) -> dict[tuple[int, int], float]:
    """(exit depth, batch size) -> mean ms of that depth's whole graph (not its segment)."""
    rows = httpx.get(f"{url}/v1/model").json()["latency"]
    return {(r["exit_depth"], r["batch_size"]): r["mean_ms"] for r in rows
            if r["graph"] == f"exit_{r['exit_depth'] or 0:02d}"}  # fmt: skip


def bucket(sizes: list[int], n: int) -> int:
    return next((b for b in sizes if b >= n), sizes[-1])


def oracle_depth(body: dict, costs: dict, depths: list[int], sizes: list[int]) -> int:
    """The deepest depth whose compute, swapped in for the served one's, fits the budget."""
    t = body["timing"]
    b = bucket(sizes, t.get("batch_size") or 1)
    rest = t["elapsed_ms"] - costs[(body["exit_depth"], b)]
    fitting = [d for d in depths if rest + costs[(d, b)] <= t["budget_ms"]]
    return max(fitting) if fitting else depths[0]


def score(bodies: list[dict], costs: dict, depths: list[int], feasible_ms: float) -> dict:
    sizes = sorted({b for _, b in costs})
    t = [b["timing"] for b in bodies]
    inside = np.array([x["elapsed_ms"] <= x["budget_ms"] for x in t])
    feasible = np.array([x["budget_ms"] >= feasible_ms for x in t])
    predicted_fit = np.array([x["predicted_ms"] <= x["budget_ms"] for x in t])
    served = np.array([b["exit_depth"] for b in bodies])
    oracle = np.array([oracle_depth(b, costs, depths, sizes) for b in bodies])
    return {
        "requests": len(bodies),
        "inside_all": float(inside.mean()),
        "inside_feasible": float(inside[feasible].mean()) if feasible.any() else float("nan"),
        "planner_misses": float((predicted_fit & ~inside).mean()),
        "mean_depth": float(served.mean()),
        "oracle_depth": float(oracle.mean()),
        "depth_vs_oracle": float(served.mean() / oracle.mean()),
        "mean_batch": float(np.mean([x.get("batch_size") or 1 for x in t])),
    }


async def _step(url, pngs, budgets, seconds, low, high) -> list[tuple[float, int, int | None]]:
    """``low`` clients for ``seconds``, then ``high``: (t, status, exit depth) per request."""
    out: list[tuple[float, int, int | None]] = []
    limits = httpx.Limits(max_connections=high, max_keepalive_connections=high)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        t0 = time.perf_counter()

        async def worker(w: int, start: float) -> None:
            await asyncio.sleep(start)
            i = w
            while time.perf_counter() - t0 < 2 * seconds:
                r = await client.post("/v1/embeddings", params={"budget_ms": budgets[i % 9973]},
                                      files={"images": ("d.png", pngs[i % len(pngs)])})  # fmt: skip
                depth = r.json().get("exit_depth") if r.status_code == 200 else None
                out.append((time.perf_counter() - t0, r.status_code, depth))
                i += high

        def start(w: int) -> float:  # the extra clients join over the first half of phase two
            return 0.0 if w < low else seconds + (w - low) * (seconds / 2) / (high - low)

        await asyncio.gather(*(worker(w, start(w)) for w in range(high)))
    return out


def load_step(url, pngs, budgets, seconds, low=8, high=32, bin_s=0.5) -> list[dict]:
    events = asyncio.run(_step(url, pngs, [float(b) for b in budgets], seconds, low, high))
    rows = []
    for k in range(int(2 * seconds / bin_s)):
        t = k * bin_s
        window = [e for e in events if t <= e[0] < t + bin_s]
        ok = [d for _, code, d in window if code == 200]
        rows.append({"second": t, "answered": len(ok),
                     "rejected_503": sum(c == 503 for _, c, _ in window),
                     "mean_depth": float(np.mean(ok)) if ok else float("nan"),
                     "phase": "8 clients" if t < seconds else "ramp to 32"})  # fmt: skip
    return rows


def run_bundle(bundle: Path, factor: float, seconds: float, concurrency: int, pngs, extra):
    """Both planners on one bundle, with the same budgets."""
    results, budgets, costs_at = {}, None, None
    for mode, settings in MODES.items():
        with (
            tempfile.TemporaryDirectory() as data,
            ServerProcess(bundle, Path(data), queue_bound=QUEUE_BOUND, log_level="warning",
                          **settings, **extra) as server,
        ):  # fmt: skip
            closed_loop(server.url, concurrency, 3.0, pngs)  # warm the tables under load
            if budgets is None:  # measured once, on the first server: the same budgets for both
                elapsed = {}
                for d in (1, None):
                    r = closed_loop(server.url, concurrency, max(3.0, seconds / 3), pngs,
                                    lambda i, d=d: {"exit_depth": d} if d else {},
                                    keep_bodies=True)  # fmt: skip
                    elapsed[d] = np.array([b["timing"]["elapsed_ms"] for b in r.bodies])
                costs_at = {"cost_1": float(np.median(elapsed[1])),
                            "p99_1": float(np.percentile(elapsed[1], 99)),
                            "cost_L": float(np.median(elapsed[None]))}  # fmt: skip
                lo, hi = costs_at["cost_1"], factor * costs_at["cost_L"]
                budgets = np.random.default_rng(0).uniform(lo, hi, 100_000)
            r = closed_loop(server.url, concurrency, seconds, pngs,
                            lambda i, b=budgets: {"budget_ms": float(b[i])},
                            keep_bodies=True)  # fmt: skip
            costs = cost_table(server.url)
            depths = sorted({d for d, _ in costs})
            results[mode] = score(r.bodies, costs, depths, costs_at["p99_1"])
            results[mode]["errors"] = r.errors
            results[mode]["step"] = load_step(server.url, pngs, budgets, seconds / 2)
    return {"costs": costs_at, "factor": factor, "modes": results}


def report(name: str, out: dict) -> None:
    c = out["costs"]
    print(f"\n### {name}\n\nbudgets uniform in [{c['cost_1']:.1f}, {out['factor']} x "
          f"{c['cost_L']:.1f}] ms; feasible: >= {c['p99_1']:.1f} ms "
          "(depth-1 p99 at that load)\n")  # fmt: skip
    print("| planner | requests | inside budget, feasible | inside, all | missed though "
          "predicted to fit | mean depth | oracle depth | depth/oracle | mean batch |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, m in out["modes"].items():
        print(f"| {mode} | {m['requests']} | {100 * m['inside_feasible']:.1f} % | "
              f"{100 * m['inside_all']:.1f} % | {100 * m['planner_misses']:.2f} % | "
              f"{m['mean_depth']:.2f} | {m['oracle_depth']:.2f} | {m['depth_vs_oracle']:.2f} | "
              f"{m['mean_batch']:.1f} |")  # fmt: skip
    for mode, m in out["modes"].items():
        step = m["step"]
        print(f"\nload step, {mode} (per {step[1]['second']:g} s: answered / 503 / mean depth):")
        print("| s | " + " | ".join(f"{r['second']:g}" for r in step) + " |")
        print("|---|" + "---:|" * len(step))
        for key, label in (("answered", "ok"), ("rejected_503", "503")):
            print(f"| {label} | " + " | ".join(str(r[key]) for r in step) + " |")
        print("| depth | " + " | ".join(f"{r['mean_depth']:.1f}" for r in step) + " |")
        first_503 = next((r["second"] for r in step if r["rejected_503"]), None)
        base = np.nanmean([r["mean_depth"] for r in step if r["phase"] == "8 clients"])
        ramp = [r for r in step if r["phase"] != "8 clients"]
        lower = next((r["second"] for r in ramp if r["mean_depth"] < 0.8 * base), None)
        print(f"\nmean depth with 8 clients {base:.2f}; in the ramp it first fell below 80 % of "
              f"that at {lower} s; first 503 at {first_503} s")  # fmt: skip


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--vit-s16", action="store_true", help="also the compute-bound ViT-S/16")
    parser.add_argument("--skip-default", action="store_true", help="only the ViT-S/16")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    pngs = digit_pngs(64)
    print(f"machine: {machine()}; concurrency {args.concurrency}; queue bound {QUEUE_BOUND}")
    out = {}
    if not args.skip_default:
        out["default"] = run_bundle(args.bundle, 2.0, args.seconds, args.concurrency, pngs, {})
        report("default bundle", out["default"])
    if args.vit_s16:
        bundle, _ = ensure_vit_s16(ROOT / "artifacts" / "bench")
        extra = {"max_batch": 8, "warmup_runs": 2}
        out["vit_s16"] = run_bundle(bundle, 1.2, 2 * args.seconds, args.concurrency, pngs, extra)
        report("ViT-S/16, 224 px, random weights", out["vit_s16"])
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print()
    for name, o in out.items():
        m = o["modes"]
        met = ", ".join(f"{k} {100 * v['inside_feasible']:.1f} %" for k, v in m.items())
        depth = ", ".join(f"{k} {v['depth_vs_oracle']:.2f}" for k, v in m.items())
        print(f"{name}: feasible budgets met {met}; depth/oracle {depth}")
    return out


if __name__ == "__main__":
    main()
