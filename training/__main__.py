"""Command line: ``python -m training {train,evaluate,compare,init,slim} ...``.

Flags map onto config fields (``--config FILE`` then ``--set section.key=value``); there is no
parallel world of argparse options. Errors the user can fix print one line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.errors import UserError

EPILOG = """config sections and keys: see training/config.py or any file in configs/.
examples:
  python -m training train --config configs/default.yaml --out runs/default
  python -m training train --config configs/tiny.yaml --set train.method=mocov3 --out runs/t
  python -m training evaluate runs/default
  python -m training compare --method simclr --seeds 0,1,2
  python -m training compare --method mocov3 --seeds 0,1,2,3,4 --jobs 4   # side by side
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML or JSON config file (defaults otherwise)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config field, e.g. --set train.lr=5e-4 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train and evaluate SDSSL ViTs whose every block gives a usable embedding.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a model (SDSSL or baseline) into a checkpoint directory",
        description="Train with SimCLR, BYOL or MoCo v3, with (SDSSL) or without (baseline) "
        "self-distillation. Saves a checkpoint every epoch; --resume continues one.",
    )
    _add_config_args(p)
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the checkpoint in --out (with its config; --set may change only "
        "train.max_steps, train.threads, train.log_every, data.num_workers)",
    )
    p.add_argument(
        "--no-eval", action="store_true", help="skip the per-depth evaluation after training"
    )

    p = sub.add_parser(
        "evaluate",
        help="k-NN and linear-probe top-1 at every exit depth of a checkpoint",
        description="Writes metrics.json, metrics.md and metrics.png into the checkpoint.",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint directory")
    p.add_argument("--dataset", help="dataset spec to evaluate on (default: the training one)")
    p.add_argument(
        "--exit-depths", default="all", help="comma-separated exit depths, or 'all' (default)"
    )
    p.add_argument(
        "--output", type=Path, help="folder for metrics.json/.md/.png (default: the checkpoint)"
    )
    p.add_argument("--no-plot", action="store_true", help="skip metrics.png")
    p.add_argument(
        "--backbone",
        choices=("auto", "student", "teacher"),
        default="auto",
        help="which backbone of a full checkpoint to score: auto (default) is the evaluated and "
        "exported one, the EMA teacher where the method has one (MoCo v3, BYOL)",
    )
    p.add_argument(
        "--cv",
        action="store_true",
        help="score as `compare` does: stratified 5-fold cross-validation over all images",
    )

    p = sub.add_parser(
        "compare",
        help="baseline vs SDSSL over several seeds, scored by 5-fold cross-validated k-NN",
        description="Trains baseline and SDSSL with the same seeds, model and budget, then "
        "writes docs/results/<dataset>-<method>.md and .json.",
    )
    _add_config_args(p)
    p.add_argument("--method", required=True, help="simclr, byol or mocov3")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--runs", type=Path, default=Path("runs/compare"), help="checkpoints go here")
    p.add_argument("--results", type=Path, default=Path("docs/results"), help="report folder")
    p.add_argument(
        "--tag", help="suffix of the report's name: <dataset>-<method>-<tag> (e.g. default)"
    )
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        help="runs trained at once, each in its own process with cores/JOBS threads unless "
        "train.threads is set, which scores and caches its run when it finishes (default 1; "
        "more for a GPU or a many-core CPU)",
    )

    p = sub.add_parser(
        "init",
        help="write an untrained (random-init) checkpoint of a config",
        description="For benchmarks and export tests of model sizes not trained here "
        "(e.g. configs/vit_s16.yaml). Same initialisation as step 0 of training.",
    )
    _add_config_args(p)
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")

    p = sub.add_parser(
        "slim",
        help="copy a checkpoint keeping only the evaluated backbone (fp16 by default)",
        description="For shipping: drops heads, optimizer state and the student when a "
        "teacher exists. The result exports and evaluates but cannot resume.",
    )
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--fp32", action="store_true", help="keep float32 weights")
    return parser


def run(args: argparse.Namespace) -> int:
    from training.config import apply_overrides, load_config, validate

    if args.command == "train":
        from training import distributed
        from training.checkpoint import load_config as load_checkpoint_config
        from training.evaluate import evaluate_checkpoint, markdown_table
        from training.loop import train

        if args.resume:  # the checkpoint's config; --set may change runtime fields only
            cfg = load_checkpoint_config(args.out)
            apply_overrides(cfg, args.overrides)
            validate(cfg)
        else:
            cfg = load_config(args.config, args.overrides)
        out = train(cfg, args.out, resume=args.out if args.resume else None)
        if not args.no_eval and distributed.is_main():
            print(markdown_table(evaluate_checkpoint(out)))
        return 0
    if args.command == "evaluate":
        from training.evaluate import evaluate_checkpoint, markdown_table

        metrics = evaluate_checkpoint(
            args.checkpoint,
            dataset=args.dataset,
            exit_depths=args.exit_depths,
            output=args.output,
            plot=not args.no_plot,
            backbone=args.backbone,
            cv=args.cv,
        )
        print(markdown_table(metrics))
        return 0
    if args.command == "compare":
        from training.compare import run_comparison

        cfg = load_config(args.config, [*args.overrides, f"train.method={args.method}"])
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        md = run_comparison(cfg, seeds, args.runs, args.results, args.tag, args.jobs)
        print(md.read_text())
        return 0
    if args.command == "init":
        from training.checkpoint import save_checkpoint
        from training.loop import seed_everything
        from training.sdssl import SDSSL

        cfg = load_config(args.config, args.overrides)
        seed_everything(cfg.train.seed)
        save_checkpoint(args.out, SDSSL(cfg))
        print(f"wrote untrained checkpoint {args.out}")
        return 0
    if args.command == "slim":
        from training.checkpoint import save_slim

        save_slim(args.checkpoint, args.out, fp16=not args.fp32)
        print(f"wrote {args.out}")
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
