"""Checkpoint → bundle: one ONNX graph per exit depth, the all-exits graph, and the manifest.

The bundle is assembled in a temporary sibling directory and renamed into place only after
every graph has passed ``onnx.checker`` (full check) and parity against the torch model, so an
interrupted or failed export leaves nothing that looks like a bundle.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import torch
from tqdm import tqdm

from export.bridges.build import describe, fit_bridges, fold_graphs
from export.errors import ExportError
from export.graphs import AllExitsGraph, ExitGraph, SegmentGraph
from export.manifest import (
    ALL_EXITS_OUTPUT,
    EXIT_OUTPUT,
    INPUT_NAME,
    MANIFEST,
    MANIFEST_DIGEST,
    SEGMENT_INPUT,
    SEGMENT_OUTPUT,
    AllExitsEntry,
    ExitEntry,
    Manifest,
    ModelInfo,
    Preprocess,
    SegmentEntry,
    exit_file_name,
    exit_row,
    file_sha256,
    segment_file_name,
)
from export.parity import check_exit, check_exits_agree, onnx_session
from export.samples import sample_images
from export.weights import share_bundle_weights
from training.augment import eval_resize
from training.checkpoint import CONFIG, METRICS, WEIGHTS, MetricsRecord, load_backbone
from training.config import Config
from training.exits import exit_embeddings, parse_exit_depths

log = logging.getLogger(__name__)
ALL_EXITS_FILE = "all_exits.onnx"
EXPORTERS = ("legacy", "dynamo")


def checkpoint_sha256(ckpt_dir: Path) -> str:
    """Identity of a checkpoint: sha256 over its weights' and config's sha256s."""
    parts = [file_sha256(ckpt_dir / WEIGHTS), file_sha256(ckpt_dir / CONFIG)]
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def _export_graph(
    module: torch.nn.Module,
    path: Path,
    output: str | list[str],
    opset: int,
    exporter: str,
    example: torch.Tensor | None = None,
    input_name: str = INPUT_NAME,
) -> None:
    """Export with a dynamic batch axis; TorchScript-based ("legacy") or torch.export."""
    module.eval()
    if example is None:
        example = torch.zeros(2, *_input_hw(module), 3, dtype=torch.uint8)
    outputs = [output] if isinstance(output, str) else output
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        if exporter == "dynamo":
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[input_name],
                output_names=outputs,
                dynamic_shapes={input_name: {0: torch.export.Dim("batch")}},
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
        else:
            axes = {o: {1 if o == ALL_EXITS_OUTPUT else 0: "batch"} for o in outputs}
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[input_name],
                output_names=outputs,
                dynamic_axes={input_name: {0: "batch"}, **axes},
                opset_version=opset,
                dynamo=False,
            )
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name} failed onnx.checker: {exc}") from exc


def _input_hw(module: torch.nn.Module) -> tuple[int, int]:
    size = module.vit.patch_embed.img_size
    return int(size[0]), int(size[1])


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _metrics(ckpt_dir: Path) -> dict[int, tuple[float | None, float | None]]:
    path = ckpt_dir / METRICS
    if not path.is_file():
        return {}
    try:
        return MetricsRecord.read(path).by_depth()
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        log.warning("ignoring unreadable %s: %s", path, str(exc).splitlines()[0])
        return {}


def export_bundle(
    ckpt_dir: Path,
    out_dir: Path,
    exit_depths: str | list[int] | None = "all",
    fp16: bool = False,
    opset: int = 18,
    force: bool = False,
    exporter: str = "legacy",
    progress: bool = True,
    segments: bool = True,
    gallery_depth: int | None = None,
    bridge_dataset: str | None = None,
    _after_graph: Callable[[str], None] | None = None,
) -> Manifest:
    """Write a verified bundle for ``ckpt_dir`` at ``out_dir``; returns its manifest. Every
    graph's embedding is bridged into ``gallery_depth``'s space (default L), the bridges fitted
    on the training split of ``bridge_dataset`` (default: the checkpoint's dataset)."""
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r} (choose from {', '.join(EXPORTERS)})")
    backbone, cfg = load_backbone(ckpt_dir)
    depth = cfg.model.depth
    depths = parse_exit_depths(exit_depths, depth)
    gallery_depth = depth if gallery_depth is None else gallery_depth
    if not 1 <= gallery_depth <= depth:
        raise ExportError(f"gallery depth {gallery_depth} is not an exit depth (1..{depth})")
    if out_dir.exists() and not force:
        raise ExportError(f"{out_dir} already exists (use --force to replace it)")
    tmp = staging_dir(out_dir)
    try:
        manifest = _write_graphs(
            backbone, cfg, ckpt_dir, tmp, depths, fp16, opset, exporter, progress, _after_graph,
            segments, gallery_depth, bridge_dataset or cfg.data.dataset,
        )  # fmt: skip
        install(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def staging_dir(out_dir: Path) -> Path:
    """A hidden sibling of ``out_dir`` to assemble a bundle in (renamed into place by
    :func:`install`, so nothing half-written ever looks like a bundle)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a bundle is read by other users (docker)
    return tmp


def install(tmp: Path, out_dir: Path) -> None:
    """fsync the assembled bundle, then rename it to ``out_dir`` (an existing one is moved
    aside first and removed after the swap)."""
    _fsync_dir(tmp)
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)


def _write_graphs(
    backbone: torch.nn.Module,
    cfg: Config,
    ckpt_dir: Path,
    tmp: Path,
    depths: list[int],
    fp16: bool,
    opset: int,
    exporter: str,
    progress: bool,
    after_graph: Callable[[str], None] | None,
    with_segments: bool,
    gallery_depth: int,
    bridge_dataset: str,
) -> Manifest:
    mean, std = cfg.data.mean, cfg.data.std
    images = sample_images(cfg)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        reference = exit_embeddings(backbone, x, list(range(1, cfg.model.depth + 1))).numpy()
    metrics = _metrics(ckpt_dir)
    entries: list[ExitEntry] = []
    outputs: dict[int, np.ndarray] = {}
    jobs = [*depths, None]  # None: the all-exits graph
    for d in tqdm(jobs, desc="export", disable=not progress, unit="graph"):
        module = (
            AllExitsGraph(backbone, mean, std) if d is None else ExitGraph(backbone, d, mean, std)
        )
        if fp16:
            module = module.half()
            module.normalise.float()  # keep the uint8 -> float normalisation in fp32
        name = ALL_EXITS_FILE if d is None else exit_file_name(d)
        output = ALL_EXITS_OUTPUT if d is None else EXIT_OUTPUT
        _export_graph(module, tmp / name, output, opset, exporter)
        session = onnx_session(tmp / name)
        if d is None:
            all_out = session.run(None, {INPUT_NAME: images})[0]
            for e in range(cfg.model.depth):
                check_exit(all_out[e], reference[e], fp16, f"{name}[{e}]")
            check_exits_agree(outputs, all_out, fp16)
        else:
            out = session.run(None, {INPUT_NAME: images})[0]
            check_exit(out, exit_row(reference, d), fp16, name)
            outputs[d] = out
            knn, lin = metrics.get(d, (None, None))
            entries.append(
                ExitEntry(
                    exit_depth=d,
                    file=name,
                    dim=cfg.model.embed_dim,
                    sha256=file_sha256(tmp / name),
                    knn_top1=knn,
                    linear_top1=lin,
                )
            )
        if after_graph is not None:
            after_graph(name)
    segments = (
        _write_segments(backbone, cfg, tmp, images, reference, fp16, opset, exporter, after_graph)
        if with_segments
        else []
    )
    preprocess = Preprocess(
        resize=eval_resize(cfg.model.img_size, cfg.data),
        crop=cfg.model.img_size,
        interpolation=cfg.data.interpolation,
        mean=tuple(mean),
        std=tuple(std),
    )
    all_entry = AllExitsEntry(file=ALL_EXITS_FILE, sha256=file_sha256(tmp / ALL_EXITS_FILE))
    fitted = fit_bridges(tmp / ALL_EXITS_FILE, preprocess, cfg.model.depth, bridge_dataset,
                         cfg.data.test_fraction, gallery_depth, progress, log.info)  # fmt: skip
    entries, all_entry, segments = fold_graphs(tmp, entries, all_entry, segments, fitted, images,
                                               fp16, reference)  # fmt: skip
    entries, all_entry, segments, weights = share_bundle_weights(
        tmp, entries, all_entry, segments, images
    )
    if progress:
        print(describe(fitted))
    if after_graph is not None:
        after_graph("bridges")
    manifest = Manifest(
        model=ModelInfo(
            img_size=cfg.model.img_size,
            patch_size=cfg.model.patch_size,
            dim=cfg.model.embed_dim,
            depth=cfg.model.depth,
            num_heads=cfg.model.num_heads,
            parameters=sum(p.numel() for p in backbone.parameters()),
        ),
        preprocess=preprocess,
        exits=entries,
        all_exits=all_entry,
        segments=segments,
        checkpoint_sha256=checkpoint_sha256(ckpt_dir),
        method=cfg.train.method,
        distill=cfg.train.distill,
        precision="fp16" if fp16 else "fp32",
        opset=opset,
        created_at=datetime.now(UTC),
        bridge=fitted.info,
        weights=weights,
    )
    (tmp / MANIFEST).write_text(manifest.to_json())
    (tmp / MANIFEST_DIGEST).write_text(file_sha256(tmp / MANIFEST) + "\n")
    return manifest


def _write_segments(
    backbone: torch.nn.Module,
    cfg: Config,
    tmp: Path,
    images: np.ndarray,
    reference: np.ndarray,
    fp16: bool,
    opset: int,
    exporter: str,
    after_graph: Callable[[str], None] | None,
) -> list[SegmentEntry]:
    """One graph per block, chained on the hidden state; each checked against the reference
    embedding at its exit depth, fed the previous segment's ONNX output (so errors compound as
    they would when serving)."""
    mean, std = cfg.data.mean, cfg.data.std
    entries, hidden = [], images
    for first in range(cfg.model.depth):
        last = first + 1
        module = SegmentGraph(backbone, first, last, mean, std)
        if fp16:
            module = module.half()
            module.normalise.float()
        name = segment_file_name(first, last)
        example = torch.from_numpy(hidden[:2]) if first else None
        source = SEGMENT_INPUT if first else INPUT_NAME
        _export_graph(module, tmp / name, [SEGMENT_OUTPUT, EXIT_OUTPUT], opset, exporter,
                      example=example, input_name=source)  # fmt: skip
        feed = {source: hidden}
        hidden, out = onnx_session(tmp / name).run(None, feed)
        check_exit(out, exit_row(reference, last), fp16, name)
        entries.append(SegmentEntry(first=first, last=last, file=name,
                                    sha256=file_sha256(tmp / name)))  # fmt: skip
        if after_graph is not None:
            after_graph(name)
    return entries
