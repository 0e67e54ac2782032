"""Command line: ``python -m export CHECKPOINT OUT`` | ``verify`` | ``profile`` | ``bridge``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from training.errors import UserError

DESCRIPTION = """Export a training checkpoint to a bundle, or check / profile a bundle.

  python -m export CHECKPOINT_DIR OUT_DIR [--exit-depths all|1,2,..] [--fp16] [--opset N]
  python -m export verify BUNDLE
  python -m export profile BUNDLE [--batch-sizes 1,8,32]
  python -m export bridge BUNDLE [--out OUT] [--dataset SPEC] [--gallery-depth G]

Every exit's embedding is bridged into the gallery depth's space (default: the last depth):
a linear map fitted on training images, so one gallery serves queries of every exit depth.
The graph's own embedding stays available as the `raw_embedding` output.
"""


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint directory (python -m training)")
    p.add_argument("out", type=Path, help="bundle directory to create")
    p.add_argument("--exit-depths", default="all", help="'all' (default) or e.g. 1,3,6")
    p.add_argument("--fp16", action="store_true", help="fp16 weights and compute (I/O unchanged)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument(
        "--exporter",
        choices=["legacy", "dynamo"],
        default="legacy",
        help="torch exporter: TorchScript-based 'legacy' (fast, default) or torch.export",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument(
        "--gallery-depth",
        type=int,
        default=None,
        help="the exit depth whose space the bridges map into, where items are embedded "
        "(default: the model's depth L)",
    )
    p.add_argument(
        "--bridge-dataset",
        default=None,
        help="fit the bridges on this dataset's training split (default: the checkpoint's "
        "dataset; mnist5k, folder:PATH, mnist:ROOT, cifar10:ROOT)",
    )
    p.add_argument(
        "--no-segments",
        action="store_true",
        help="leave out the per-block segment graphs (the server then cannot run a batch block "
        "by block; the bundle is one model's weights smaller)",
    )
    return p


def verify_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export verify",
        description="Check every sha256 and the manifest, run each graph on a sample batch and "
        "check every exit agrees with all_exits. Exit 2 with one line on any mismatch.",
    )
    p.add_argument("bundle", type=Path)
    return p


def profile_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export profile",
        description="onnxruntime latency (median, p95 after warm-up) per exit depth and batch "
        "size; prints a table and saves a PNG. Writes nothing into the bundle.",
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated (default 1,8,32)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per cell (default 20)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--plot", type=Path, default=Path("artifacts/profile.png"), help="PNG path")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    return p


def bridge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export bridge",
        description="Fit a bridge per exit depth into the gallery depth's space on training "
        "images (ridge, λ chosen on a held-out part) and fold it into every graph; print the "
        "same-depth vs bridged k-NN and recall@10 per depth, measured on images disjoint from "
        "the fit. Upgrades a format-1 bundle (no checkpoint needed) or re-bridges one. The "
        "result is a new bundle (a new id): in place by default, or at --out.",
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("--out", type=Path, default=None, help="write here (default: replace BUNDLE)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--dataset",
        default=None,
        help="the training data (a dataset spec: mnist5k, folder:PATH, mnist:ROOT, "
        "cifar10:ROOT); default: what the bundle's bridges were fitted on",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="the dataset's held-out share, never fitted on (default: the bundle's, else 0.2)",
    )
    p.add_argument("--gallery-depth", type=int, default=None, help="default: the model's depth")
    return p


def run(argv: list[str]) -> int:
    if argv and argv[0] == "bridge":
        args = bridge_parser().parse_args(argv[1:])
        from export.bridges.upgrade import bridge_bundle
        from export.manifest import bundle_id

        m, report = bridge_bundle(args.bundle, args.out, args.dataset, args.test_fraction,
                                  args.gallery_depth, args.force)  # fmt: skip
        out = args.out or args.bundle
        print(report)
        print(f"wrote {out}: bridged into exit depth {m.bridge.gallery_depth}'s space, "
              f"id {bundle_id(out)[:12]}")  # fmt: skip
        return 0
    if argv and argv[0] == "verify":
        args = verify_parser().parse_args(argv[1:])
        from export.verify import verify_bundle

        m = verify_bundle(args.bundle)
        print(f"ok: {args.bundle} ({len(m.exits)} exits + all_exits, {m.precision})")
        return 0
    if argv and argv[0] == "profile":
        args = profile_parser().parse_args(argv[1:])
        from export.profile import plot, profile_bundle, table

        sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
        result = profile_bundle(args.bundle, sizes, repeats=args.repeats, threads=args.threads)
        print(table(result))
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(result, args.plot)
        print(f"plot: {args.plot}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    args = export_parser().parse_args(argv)
    from export.bundle import export_bundle
    from export.manifest import bundle_id

    start = time.perf_counter()
    m = export_bundle(
        args.checkpoint,
        args.out,
        exit_depths=args.exit_depths,
        fp16=args.fp16,
        opset=args.opset,
        force=args.force,
        exporter=args.exporter,
        segments=not args.no_segments,
        gallery_depth=args.gallery_depth,
        bridge_dataset=args.bridge_dataset,
    )
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(
        f"wrote {args.out}: {len(m.exits)} exits + all_exits + {len(m.segments)} segments, "
        f"{m.precision}, "
        f"{size / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s, "
        f"id {bundle_id(args.out)[:12]}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
