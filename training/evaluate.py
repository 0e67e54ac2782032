"""Per-exit-depth evaluation: weighted k-NN and linear probe on the frozen (teacher) backbone.

Writes ``metrics.json`` (the exact shape other packages read), ``metrics.md`` and ``metrics.png``
into the checkpoint directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.augment import Evaluated, eval_transform
from training.checkpoint import METRICS, MetricsRecord, load_backbone, write_json
from training.config import Config
from training.data import ImageSource, load_splits
from training.errors import DataError
from training.exits import exit_embeddings, parse_exit_depths
from training.knn import knn_top1
from training.linear_probe import linear_top1
from training.methods import get_method

log = logging.getLogger(__name__)


@torch.no_grad()
def embed_source(
    backbone: nn.Module,
    source: ImageSource,
    cfg: Config,
    exit_depths: list[int],
    desc: str = "embed",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings ``[E, N, D]`` of every image at each exit depth, and labels ``[N]``."""
    dataset = Evaluated(source, eval_transform(cfg.model.img_size, cfg.data))
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False)
    backbone.eval()
    device = next(backbone.parameters()).device
    chunks, labels = [], []
    for images, y in tqdm(loader, desc=desc, leave=False, disable=len(loader) < 4):
        chunks.append(exit_embeddings(backbone, images.to(device), exit_depths).cpu())
        labels.append(y)
    return torch.cat(chunks, dim=1), torch.cat(labels)


@torch.no_grad()
def raw_pixels(source: ImageSource, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised pixels as features ``[N, C*S*S]`` (the raw-pixel k-NN floor)."""
    dataset = Evaluated(source, eval_transform(cfg.model.img_size, cfg.data))
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(xs).flatten(1), torch.tensor(ys)


def score_depths(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    cfg: Config,
    linear: bool = True,
) -> tuple[list[float], list[float]]:
    """k-NN and linear top-1 per exit depth from precomputed ``[E, N, D]`` embeddings."""
    (x_tr, y_tr), (x_te, y_te) = train, test
    knn, lin = [], []
    for e in range(x_tr.shape[0]):
        knn.append(knn_top1(x_tr[e], y_tr, x_te[e], y_te, cfg.eval.knn_k, cfg.eval.knn_temperature))
        if linear:
            lin.append(
                linear_top1(
                    x_tr[e],
                    y_tr,
                    x_te[e],
                    y_te,
                    cfg.eval.linear_max_iter,
                    cfg.eval.linear_weight_decay,
                )
            )
    return knn, lin


def cross_validated(
    feats: torch.Tensor, labels: torch.Tensor, cfg: Config, folds: int = 5, linear: bool = True
) -> tuple[list[float], list[float]]:
    """Mean k-NN / linear top-1 per depth over stratified ``folds``-fold cross-validation."""
    rng = np.random.default_rng(0)
    fold_of = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels.numpy()):
        idx = np.flatnonzero(labels.numpy() == c)
        rng.shuffle(idx)
        fold_of[idx] = np.arange(len(idx)) % folds
    knn_sum = np.zeros(feats.shape[0])
    lin_sum = np.zeros(feats.shape[0])
    for f in range(folds):
        te = torch.from_numpy(fold_of == f)
        knn, lin = score_depths(
            (feats[:, ~te], labels[~te]), (feats[:, te], labels[te]), cfg, linear
        )
        knn_sum += knn
        if linear:
            lin_sum += lin
    return (knn_sum / folds).tolist(), (lin_sum / folds).tolist() if linear else []


def metrics_record(
    dataset: str, exit_depths: list[int], knn: list[float], lin: list[float], **extra: str
) -> dict[str, Any]:
    """The metrics.json object (:class:`~training.checkpoint.MetricsRecord`, checked): scores
    rounded to 5 places; ``extra``: ``backbone``, ``protocol``."""
    return MetricsRecord(
        dataset=dataset,
        exit_depths=list(exit_depths),
        knn_top1=[round(v, 5) for v in knn],
        linear_top1=[round(v, 5) for v in lin],
        **extra,
    ).to_dict()


def markdown_table(metrics: dict[str, Any]) -> str:
    lines = ["| exit depth | k-NN top-1 | linear top-1 |", "|---:|---:|---:|"]
    for d, k, lin in zip(
        metrics["exit_depths"], metrics["knn_top1"], metrics["linear_top1"], strict=True
    ):
        lines.append(f"| {d} | {100 * k:.1f} % | {100 * lin:.1f} % |")
    return "\n".join(lines) + "\n"


def plot_metrics(series: dict[str, dict[str, Any]], path: Path, floor: float | None = None) -> None:
    """Accuracy against exit depth, one line per (label, metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, m in series.items():
        depths = m["exit_depths"]
        ax.plot(depths, [100 * v for v in m["knn_top1"]], marker="o", label=f"{label} k-NN")
        if m.get("linear_top1"):
            ax.plot(
                depths,
                [100 * v for v in m["linear_top1"]],
                marker="s",
                linestyle="--",
                label=f"{label} linear",
            )
    if floor is not None:
        ax.axhline(100 * floor, color="gray", linestyle=":", label="raw-pixel k-NN")
    ax.set_xlabel("exit depth (blocks run)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_checkpoint(
    ckpt_dir: Path,
    dataset: str | None = None,
    exit_depths: str | list[int] | None = "all",
    output: Path | None = None,
    plot: bool = True,
    backbone: str = "auto",
    cv: bool = False,
) -> dict[str, Any]:
    """Score exit depths of a checkpoint's ``backbone`` (see :func:`load_backbone`); write
    metrics.json/.md/.png into ``output`` (default: the checkpoint directory, or its
    ``student/`` folder when the student is not the backbone the checkpoint exports — export
    copies the checkpoint's metrics.json into the bundle's manifest). ``cv``: score as the
    comparisons do (:func:`cross_validated` over all images) instead of on the test split."""
    net, cfg = load_backbone(ckpt_dir, backbone)
    side_student = backbone == "student" and get_method(cfg.train.method).momentum_teacher
    depths = parse_exit_depths(exit_depths, cfg.model.depth)
    dataset = dataset or cfg.data.dataset
    splits = load_splits(dataset, cfg.data.test_fraction)
    if splits.train.labels is None or len(splits.test) == 0:
        raise DataError(f"dataset {dataset} has no labels: evaluation needs class sub-folders")
    if cv:
        knn, lin = cross_validated(*embed_source(net, splits.all, cfg, depths, "embed all"), cfg)
    else:
        train = embed_source(net, splits.train, cfg, depths, "embed train")
        test = embed_source(net, splits.test, cfg, depths, "embed test")
        knn, lin = score_depths(train, test, cfg)
    extra = {"backbone": "student"} if side_student else {}
    if cv:
        extra["protocol"] = "stratified 5-fold cross-validation over all images"
    metrics = metrics_record(dataset, depths, knn, lin, **extra)
    output = output or (ckpt_dir / "student" if side_student else ckpt_dir)
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / METRICS, metrics)
    (output / "metrics.md").write_text(markdown_table(metrics))
    if plot:
        plot_metrics({cfg.train.method: metrics}, output / "metrics.png")
    return metrics
