"""The tiny real bundles the tests serve, made by one set of functions: the fixtures call them
(once per session), and ``python -m tests.bundles DIR`` writes them all into DIR so that an
interpreter without torch can run the service and client tests on them (``make test-py313``
hands DIR over as ``SDSSL_TEST_BUNDLES``)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"
# name -> (training seed, export options): one checkpoint per seed, exported several ways.
BUNDLES: dict[str, tuple[int, dict]] = {
    "tiny": (0, {}),  # depth 4, dim 32, every exit and segment
    "tiny-b": (1, {}),  # the same shape, other weights: the bundle a rollout moves to
    "tiny-sparse": (0, {"exit_depths": "1,2,4"}),  # a reload target with other exits
    "tiny-shallow": (0, {"exit_depths": "1,2", "segments": False}),  # no gallery-depth exit
}


def train_tiny(out: Path, seed: int = 0) -> Path:
    """A depth-4, dim-32 MoCo v3 + SDSSL checkpoint, trained six steps, with its metrics."""
    import torch

    from training.config import load_config
    from training.evaluate import evaluate_checkpoint
    from training.loop import train

    torch.set_num_threads(1)
    cfg = load_config(TINY_CONFIG, ["train.method=mocov3", "train.max_steps=6",
                                    f"train.seed={seed}"])  # fmt: skip
    train(cfg, out)
    if seed == 0:
        evaluate_checkpoint(out, plot=False)
    return out


def export_tiny(checkpoint: Path, out: Path, **options) -> Path:
    """``checkpoint`` exported to ``out`` with ``options`` (``export_bundle``'s)."""
    from export.bundle import export_bundle

    export_bundle(checkpoint, out, progress=False, **options)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print(f"usage: python -m tests.bundles DIR   (writes {', '.join(BUNDLES)})")
        return 2
    root = Path(argv[0])
    checkpoints: dict[int, Path] = {}
    for name, (seed, options) in BUNDLES.items():
        if (root / name / "manifest.json").is_file():
            continue
        if seed not in checkpoints:
            checkpoints[seed] = train_tiny(root / "checkpoints" / f"seed-{seed}", seed)
        export_tiny(checkpoints[seed], root / name, **options)
        print(f"wrote {root / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
