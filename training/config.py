"""Typed configuration for the model and its training; the one source of truth.

A :class:`Config` is stored as ``config.json`` in every checkpoint, so a checkpoint rebuilds its
model with no other input. Config files (YAML or JSON) and ``--set section.key=value`` overrides
map onto these fields; an unknown key is an error, never silently ignored. The sections are
pydantic models: a value is converted to its field's type (``"4"`` → 4, ``"yes"`` → True,
``"none"`` → None where None is allowed, ``"0.5,0.5,0.5"`` → a tuple) when it is set, from a
file, an override or code, and a value that does not convert is a :class:`ConfigError`.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from training.errors import ConfigError

METHODS = ("simclr", "byol", "mocov3")


class _Section(BaseModel):
    """A config section: unknown keys refused, every assignment converted and checked."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _from_text(cls, value: Any, info: Any) -> Any:
        """What a command line or YAML writes: ``none``/``null`` for None, and ``a,b,c`` for
        a tuple; the rest is pydantic's lax conversion."""
        if not isinstance(value, str):
            return value
        annotation = cls.model_fields[info.field_name].annotation
        options = typing.get_args(annotation)
        if value.strip().lower() in ("none", "null") and type(None) in options:
            return None
        if typing.get_origin(annotation) is tuple:
            return tuple(v.strip() for v in value.split(","))
        return value


class ModelConfig(_Section):
    """The ViT backbone (timm ``VisionTransformer``) and the MoCo v3 recipe switches."""

    img_size: int = 28
    patch_size: int = 7
    in_chans: int = 3
    embed_dim: int = 128
    depth: int = 12
    num_heads: int = 4
    mlp_ratio: float = 4.0
    # MoCo v3 recipe switches (seed values are the defaults).
    pos_embed: str = "sincos"  # "sincos" (fixed 2-D sin-cos) or "learn"
    freeze_patch_embed: bool = True  # frozen random patch projection
    drop_path_rate: float = 0.0
    weight_init: str = "moco"  # "moco" or timm's default ""


class HeadsConfig(_Section):
    """Projector / predictor MLPs (training only; never exported)."""

    proj_hidden_dim: int = 1024  # hidden width of the final layer's projector (4096 at ViT-B)
    mid_proj_hidden_dim: int = 512  # hidden width of the intermediate projectors (2048 at ViT-B)
    pred_hidden_dim: int = 1024  # predictor hidden width
    out_dim: int = 256
    # MoCo v3 / BYOL as their reference code builds them: each view through the heads on its
    # own (BatchNorm statistics per view) and, for MoCo v3, a predictor ending on affine-free BN.
    # False: both views as one batch and no such BN (this repository's behaviour before).
    # SimCLR always batches both views together, as SimCLR does.
    reference_bn: bool = True
    # Run the intermediate projectors and the predictors as batched matmuls (one kernel per
    # layer for all exits: training.stacked_heads) — for GPUs, where a dozen small MLPs are
    # launch-bound. Same maths; checkpoints of the two layouts do not load into each other.
    stacked: bool = False


class DataConfig(_Section):
    """Dataset, split, augmentation and normalisation."""

    dataset: str = "mnist5k"  # mnist5k | folder:PATH | mnist:ROOT | cifar10:ROOT
    split: str = "train"  # which split trains: "train" or "all" (labels are never used)
    test_fraction: float = 0.2  # held-out share for evaluation (stratified, fixed seed)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    eval_crop_ratio: float = 1.0  # evaluation resizes the shorter side to img_size / ratio
    interpolation: str = "bilinear"
    crop_min_scale: float = 0.08  # RandomResizedCrop lower scale bound (MoCo v3: 0.08)
    hflip: float = 0.5  # horizontal-flip probability
    color_jitter: float = 0.8  # probability of colour jitter (0.4, 0.4, 0.2, 0.1)
    grayscale: float = 0.2
    num_workers: int = 0
    # Where the two views are made: cpu (torchvision per image in the loader's workers) or
    # device (training.device_augment: a batch at a time on the accelerator; the loader only
    # decodes, so the images of a dataset must share one size).
    augment_on: str = "cpu"


class TrainConfig(_Section):
    """Method, self-distillation and optimisation."""

    method: str = "simclr"  # simclr | byol | mocov3
    distill: bool = True  # SDSSL self-distillation on; False is the baseline
    distill_ratio: float | None = None  # r in lambda(t); None -> method default (1.0 / 0.8)
    distill_ramp: float = 1.0  # share of training over which lambda ramps 0 -> r (paper: 1.0)
    predictor_term: bool = True  # SDSSL's stop-gradient predictor term (MoCo v3 / BYOL)
    temperature: float = 0.2
    # Teacher EMA start m0, cosine to 1. None: follows the run length (teacher_base_momentum),
    # so the teacher forgets its random initialisation however short the run.
    momentum: float | None = None
    batch_size: int = 128  # global batch (split across ranks)
    epochs: int = 100
    max_steps: int | None = None  # stop after this many steps (the schedules still span epochs)
    lr: float = 1e-3
    min_lr: float = 0.0
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    bf16: bool = False
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None = torch's default
    log_every: int = 10


class EvalConfig(_Section):
    """Per-depth evaluation protocol (DINO weighted k-NN and a linear probe)."""

    knn_k: int = 20
    knn_temperature: float = 0.07
    linear_max_iter: int = 100  # L-BFGS iterations of the logistic-regression probe
    linear_weight_decay: float = 1e-4
    batch_size: int = 256


class Config(BaseModel):
    """Everything needed to rebuild, train and evaluate a model."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig)
    heads: HeadsConfig = Field(default_factory=HeadsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        cfg = cls()
        apply_mapping(cfg, raw)
        validate(cfg)
        return cfg

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Config:
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        return cls.from_dict(raw)


def _kind(annotation: Any) -> str:
    """A field's type as an error names it: ``int``, ``float or None``, ``tuple``."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    names = [getattr(o, "__name__", str(o)) for o in options or (annotation,)]
    return " or ".join("None" if n == "NoneType" else n for n in names)


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """Set ``section.key`` on ``cfg``; unknown sections or keys are a ConfigError."""
    section_name, _, key = dotted.partition(".")
    if not key:
        raise ConfigError(f"override {dotted!r} must be section.key (e.g. train.lr)")
    section = getattr(cfg, section_name, None) if section_name in Config.model_fields else None
    if not isinstance(section, _Section):
        sections = ", ".join(Config.model_fields)
        raise ConfigError(f"unknown config section {section_name!r} (known: {sections})")
    fields = type(section).model_fields
    if key not in fields:
        raise ConfigError(f"unknown config key {dotted!r} (known: {', '.join(sorted(fields))})")
    try:
        setattr(section, key, value)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"][1:])  # inside the field: a tuple's item
        reason = f"item {where}: {err['msg']}" if where else err["msg"]
        raise ConfigError(
            f"{dotted}: expected {_kind(fields[key].annotation)}, got {value!r} ({reason})"
        ) from None


def apply_mapping(cfg: Config, raw: dict[str, Any]) -> None:
    """Apply a nested mapping (from JSON/YAML) onto ``cfg``."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a mapping of sections")
    for section_name, values in raw.items():
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section_name!r} must be a mapping")
        for key, value in values.items():
            set_value(cfg, f"{section_name}.{key}", value)


def apply_overrides(cfg: Config, overrides: list[str]) -> None:
    """Apply ``section.key=value`` strings (the CLI's ``--set``)."""
    for item in overrides:
        dotted, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} must look like section.key=value")
        set_value(cfg, dotted.strip(), value.strip())


def load_config(path: Path | None, overrides: list[str] | None = None) -> Config:
    """Defaults, then a YAML/JSON file, then ``--set`` overrides; validated."""
    cfg = Config()
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                raw = yaml.safe_load(text) or {}
            else:
                raw = json.loads(text)
        except Exception as exc:
            raise ConfigError(f"cannot parse config {path}: {exc}") from exc
        apply_mapping(cfg, raw)
    apply_overrides(cfg, overrides or [])
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Fail fast with a one-line reason on values that cannot work."""
    m, t, d = cfg.model, cfg.train, cfg.data
    if t.method not in METHODS:
        raise ConfigError(f"unknown method {t.method!r} (choose from {', '.join(METHODS)})")
    if m.depth < 1:
        raise ConfigError(f"model.depth must be >= 1, got {m.depth}")
    if m.img_size % m.patch_size:
        raise ConfigError(
            f"model.img_size {m.img_size} is not a multiple of model.patch_size {m.patch_size}"
        )
    if m.embed_dim % m.num_heads:
        raise ConfigError(f"model.embed_dim {m.embed_dim} is not divisible by num_heads")
    if m.pos_embed not in ("sincos", "learn"):
        raise ConfigError(f"model.pos_embed must be 'sincos' or 'learn', got {m.pos_embed!r}")
    if m.pos_embed == "sincos" and m.embed_dim % 4:
        raise ConfigError("model.embed_dim must be a multiple of 4 for sin-cos position embedding")
    if m.weight_init not in ("moco", ""):
        raise ConfigError(f"model.weight_init must be 'moco' or '', got {m.weight_init!r}")
    if t.batch_size < 2:
        raise ConfigError("train.batch_size must be >= 2 (contrastive losses need negatives)")
    if t.epochs < 1:
        raise ConfigError("train.epochs must be >= 1")
    if not 0.0 < t.distill_ramp <= 1.0:
        raise ConfigError("train.distill_ramp must lie in (0, 1]")
    if t.momentum is not None and not 0.0 <= t.momentum <= 1.0:
        raise ConfigError("train.momentum must lie in [0, 1]")
    if d.augment_on not in ("cpu", "device"):
        raise ConfigError(f"data.augment_on must be 'cpu' or 'device', got {d.augment_on!r}")
    if d.split not in ("train", "all"):
        raise ConfigError(f"data.split must be 'train' or 'all', got {d.split!r}")
    if not 0.0 < d.test_fraction < 1.0:
        raise ConfigError("data.test_fraction must lie in (0, 1)")
    if len(d.mean) != 3 or len(d.std) != 3:
        raise ConfigError("data.mean and data.std need three values (RGB)")
    if d.interpolation not in ("bilinear", "bicubic", "nearest"):
        raise ConfigError(f"data.interpolation {d.interpolation!r} not supported")
    if cfg.eval.knn_k < 1:
        raise ConfigError("eval.knn_k must be >= 1")


# Fields that may change when a run is resumed: they do not change what is being trained.
RUNTIME_KEYS = frozenset(
    {"train.max_steps", "train.threads", "train.log_every", "data.num_workers"}
)


def changed_keys(a: Config, b: Config) -> list[str]:
    """Dotted names of fields whose values differ between two configs."""
    da, db = a.to_dict(), b.to_dict()
    return [
        f"{section}.{key}"
        for section in da
        for key in da[section]
        if da[section][key] != db[section][key]
    ]


def unused_keys(cfg: Config) -> set[str]:
    """Dotted keys that cannot affect what this config's run learns (the teacher momentum of a
    method without a teacher): resuming or reusing a cached score may differ in them."""
    from training.methods import get_method

    return set() if get_method(cfg.train.method).momentum_teacher else {"train.momentum"}


REFERENCE_MOMENTUM = 0.996  # BYOL's m0 (MoCo v3 uses 0.99), for runs of ~10^5 steps and more
EMA_HORIZONS = 10.0  # ln of how much the teacher must forget its initialisation: e^-10


def teacher_base_momentum(cfg: TrainConfig, total_steps: int) -> float:
    """m0: the configured value, else min(0.996, 1 − 2·H / T) with H = 10.

    Under m(t) = 1 − (1 − m0)(1 + cos(π t / T))/2 the random initialisation's share of the
    teacher after T steps is Π m(t) ≈ exp(−(1 − m0)·T / 2). The reference runs (BYOL: 0.996 over
    ~300k steps; MoCo v3: 0.99 over ~100k) leave exp(−hundreds); 0.996 over this repository's
    780–1950 steps left ≈ 20 % of it (BYOL's depth-1 k-NN equalled random init's). The rule keeps
    the reference value when the run is long enough and otherwise shortens the EMA until the
    share is e^-10: m0 = 0.9897 at the default recipe's 1950 steps (≈ MoCo v3's 0.99), 0.974 at
    780."""
    if cfg.momentum is not None:
        return cfg.momentum
    return max(0.0, min(REFERENCE_MOMENTUM, 1.0 - 2.0 * EMA_HORIZONS / max(1, total_steps)))


def distill_ratio(cfg: TrainConfig) -> float:
    """The r of lambda(t): the configured value, else the paper's per-method default."""
    if cfg.distill_ratio is not None:
        return cfg.distill_ratio
    return 1.0 if cfg.method == "mocov3" else 0.8
