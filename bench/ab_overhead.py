"""Server overhead before and after a change, in one run: wrk at one connection against this
checkout's server and another commit's, interleaved, on the same machine and model.

    python -m bench.ab_overhead --base e3bf741 --base-bundle artifacts/bundles/default

The per-request overhead is wrk's mean time per request minus the deepest graph's own compute at
batch 1 in this process (`bench.server_efficiency`'s measure), each side's on its own bundle.
Rounds alternate the order (A B, B A, …) so that drift in the machine's speed falls on both;
the medians are compared. The base commit runs from a temporary git worktree;
``--base-bundle`` is the bundle it serves (a format it can read), ``--bundle`` this checkout's.
Last line: head / base (issue #31's target: ≤ 0.70).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import DEFAULT_BUNDLE, ROOT, ServerProcess, closed_loop, digit_pngs, machine
from bench.server_efficiency import in_process, wrk_overhead
from export.manifest import Manifest
from service.inference.engine import default_threads
from service.inference.images import prepare


def compute_ms(bundle: Path, png: bytes) -> float:
    """The deepest graph's time for one image in this process, on the server's threads."""
    p = Manifest.read(bundle).preprocess
    arrays = np.stack([prepare(png, p.resize, p.crop, p.interpolation, 10**8)])
    return 1000 / in_process(bundle, arrays, default_threads(), 6.0, (1,))[1]


def overhead(root: Path, bundle: Path, png: bytes, depth: int, compute: float, seconds: float):
    """One server of ``root``'s code on ``bundle``: warmed, then wrk; the overhead in ms."""
    with (
        tempfile.TemporaryDirectory() as data,
        ServerProcess(bundle, Path(data), root=root, log_level="warning") as server,
    ):
        warm = closed_loop(server.url, 1, 2.0, [png], lambda i: {"exit_depth": depth})
        if warm.errors or not warm.requests:
            raise SystemExit(f"error: the server of {root} refused the warm-up requests")
        found = wrk_overhead(server.url, png, depth, compute, seconds)
    if "error" in found:
        raise SystemExit(f"error: {found['error']}")
    return found["overhead_ms"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab_overhead",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--base-bundle", type=Path, required=True, help="the bundle it serves")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="this checkout's")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="wrk's run per round")
    args = parser.parse_args()
    depth = Manifest.read(args.bundle).exits[-1].exit_depth
    png = digit_pngs(1)[0]
    compute = {"base": compute_ms(args.base_bundle, png), "head": compute_ms(args.bundle, png)}
    found: dict[str, list[float]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "base"
        try:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet",
                            str(tree), args.base], check=True)  # fmt: skip
            sides = [("base", tree, args.base_bundle.resolve()),
                     ("head", ROOT, args.bundle.resolve())]  # fmt: skip
            for n in range(args.rounds):
                for side, root, bundle in sides if n % 2 == 0 else sides[::-1]:  # A B B A …
                    found[side].append(
                        overhead(root, bundle, png, depth, compute[side], args.seconds)
                    )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False)  # fmt: skip
            subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)
    base, head = (statistics.median(found[s]) for s in ("base", "head"))
    print(f"machine: {machine()}; exit depth {depth}; compute per image: base "
          f"{compute['base']:.3f} ms, head {compute['head']:.3f} ms (each side's own)")  # fmt: skip
    print(f"base {args.base}: {', '.join(f'{v:.3f}' for v in found['base'])} ms")
    print(f"head: {', '.join(f'{v:.3f}' for v in found['head'])} ms")
    print(f"overhead per request, medians: base {base:.3f} ms, head {head:.3f} ms; "
          f"head / base {head / base:.2f} (target <= 0.70)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
