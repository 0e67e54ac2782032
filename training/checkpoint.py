"""Checkpoint directories (DESIGN.md): model.safetensors, config.json, state.pt, metrics.json.

Every file is written to a temporary name, fsynced and renamed, so a crash never leaves a
half-written file behind a valid name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from training.backbone import build_backbone
from training.config import Config
from training.errors import CheckpointError, ConfigError
from training.sdssl import SDSSL

WEIGHTS, CONFIG, STATE, METRICS = "model.safetensors", "config.json", "state.pt", "metrics.json"
# Metadata key in model.safetensors: "full" (student, heads, teacher) or "backbone" (slim).
CONTENTS_KEY = "contents"


class MetricsRecord(BaseModel):
    """``metrics.json``: a checkpoint's top-1 scores (0..1) per exit depth — the one definition
    of the file training/evaluate writes, ``slim`` copies and export puts into the manifest."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    exit_depths: list[int] = Field(min_length=1)
    knn_top1: list[float]
    linear_top1: list[float] = Field(default_factory=list, description="empty: not scored")
    backbone: str | None = Field(default=None, description="'student' when not the teacher")
    protocol: str | None = Field(default=None, description="how it was scored, if not the split")

    @model_validator(mode="after")
    def _aligned(self) -> MetricsRecord:
        n = len(self.exit_depths)
        if len(self.knn_top1) != n or len(self.linear_top1) not in (0, n):
            raise ValueError("knn_top1 (and linear_top1, when scored) need one score per depth")
        if not all(0.0 <= v <= 1.0 for v in [*self.knn_top1, *self.linear_top1]):
            raise ValueError("scores are fractions in 0..1")
        return self

    def by_depth(self) -> dict[int, tuple[float, float | None]]:
        """exit depth → (k-NN top-1, linear top-1 or None)."""
        linear = self.linear_top1 or [None] * len(self.exit_depths)
        return dict(zip(self.exit_depths, zip(self.knn_top1, linear, strict=True), strict=True))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object as written (unset optional keys left out)."""
        return self.model_dump(exclude_none=True)

    @classmethod
    def read(cls, path: Path) -> MetricsRecord:
        """``path`` parsed and checked; pydantic's ValidationError (a ValueError) if it is not
        a metrics record."""
        return cls.model_validate_json(path.read_bytes())


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then fsync and rename onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; checkpoints are shared artefacts
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2) + "\n"))


def save_checkpoint(
    out_dir: Path,
    model: SDSSL,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
) -> None:
    """Write the full model, its config and (for resume) optimizer + loop state."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(
        out_dir / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={CONTENTS_KEY: "full"})
    )
    atomic_write(out_dir / CONFIG, lambda p: model.cfg.save(p))
    if optimizer is not None:
        payload = {"optimizer": optimizer.state_dict(), **(state or {})}
        atomic_write(out_dir / STATE, lambda p: torch.save(payload, p))


def save_slim(src_dir: Path, out_dir: Path, fp16: bool = True) -> None:
    """Keep only the evaluated backbone (teacher if any), optionally in fp16: for shipping."""
    backbone, cfg = load_backbone(src_dir)
    metrics = None
    if (src_dir / METRICS).is_file():  # checked before anything is written
        try:
            metrics = MetricsRecord.read(src_dir / METRICS).to_dict()
        except ValidationError as exc:  # also what a broken JSON text raises
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise CheckpointError(
                f"{src_dir / METRICS} is not a metrics record: {where + ': ' if where else ''}"
                f"{err['msg']}"
            ) from exc
    dtype = torch.float16 if fp16 else torch.float32
    tensors = {f"backbone.{k}": v.to(dtype).contiguous() for k, v in backbone.state_dict().items()}
    atomic_write(
        out_dir / WEIGHTS,
        lambda p: save_file(tensors, str(p), metadata={CONTENTS_KEY: "backbone"}),
    )
    atomic_write(out_dir / CONFIG, lambda p: cfg.save(p))
    if metrics is not None:
        write_json(out_dir / METRICS, metrics)


def load_config(ckpt_dir: Path) -> Config:
    """The config stored in a checkpoint (rebuilds the model with no other input)."""
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {ckpt_dir}")
    path = ckpt_dir / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} is not a checkpoint: {CONFIG} missing")
    try:
        return Config.load(path)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: config does not rebuild the model: {exc}") from exc


def _read_weights(ckpt_dir: Path) -> tuple[dict[str, torch.Tensor], str]:
    path = ckpt_dir / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} is not a checkpoint: {WEIGHTS} missing")
    try:
        with safe_open(str(path), framework="pt") as fh:  # one read: tensors and metadata
            contents = (fh.metadata() or {}).get(CONTENTS_KEY, "full")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from exc
    return {k: v.float() for k, v in tensors.items()}, contents


def load_model(ckpt_dir: Path) -> SDSSL:
    """The full SDSSL module (student, heads, teacher) from a full checkpoint."""
    cfg = load_config(ckpt_dir)
    tensors, contents = _read_weights(ckpt_dir)
    if contents != "full":
        raise CheckpointError(f"{ckpt_dir} is a slim (backbone-only) checkpoint; cannot resume")
    model = SDSSL(cfg)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt_dir}: weights do not match its config: {exc}") from exc
    return model


BACKBONES = ("auto", "student", "teacher")


def load_backbone(ckpt_dir: Path, which: str = "auto") -> tuple[VisionTransformer, Config]:
    """A backbone from a full or slim checkpoint: ``auto`` is the evaluated one (the teacher
    where there is one); ``student`` or ``teacher`` asks for that one from a full checkpoint."""
    if which not in BACKBONES:
        raise CheckpointError(f"backbone must be one of {', '.join(BACKBONES)}, not {which!r}")
    cfg = load_config(ckpt_dir)
    tensors, contents = _read_weights(ckpt_dir)
    has_teacher = any(k.startswith("teacher.") for k in tensors)
    if which != "auto" and contents != "full":
        raise CheckpointError(f"{ckpt_dir} is slim: it keeps only the evaluated backbone")
    if which == "teacher" and not has_teacher:
        raise CheckpointError(f"{ckpt_dir} has no teacher ({cfg.train.method} trains none)")
    teacher = has_teacher if which == "auto" else which == "teacher"
    prefix = "teacher.backbone." if teacher else "backbone."
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    backbone = build_backbone(cfg.model)
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt_dir}: weights do not match its config: {exc}") from exc
    return backbone.eval(), cfg


def load_state(ckpt_dir: Path) -> dict[str, Any]:
    """Optimizer and loop state for ``--resume``."""
    path = ckpt_dir / STATE
    if not path.is_file():
        raise CheckpointError(f"cannot resume from {ckpt_dir}: {STATE} missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from exc
