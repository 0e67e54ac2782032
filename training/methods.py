"""The base self-supervised methods: a small explicit registry, not an inheritance tower."""

from __future__ import annotations

from dataclasses import dataclass

from training.errors import ConfigError


@dataclass(frozen=True)
class BaseMethod:
    """What distinguishes SimCLR, BYOL and MoCo v3 inside the one SDSSL assembler."""

    name: str
    momentum_teacher: bool  # targets come from an EMA teacher (backbone + final projector)
    predictor: bool  # per-layer predictor heads on the student
    projector_last_bn: bool  # projector ends on an affine-free BatchNorm
    contrastive: bool  # InfoNCE-style loss with temperature (vs. BYOL's regression)
    predictor_last_bn: bool = False  # predictor ends on affine-free BN (MoCo v3's ViT predictor)
    per_view_heads: bool = False  # each view through the heads on its own (per-view BN stats)


METHODS: dict[str, BaseMethod] = {
    "simclr": BaseMethod(
        "simclr", momentum_teacher=False, predictor=False, projector_last_bn=True, contrastive=True
    ),
    "byol": BaseMethod(
        "byol",
        momentum_teacher=True,
        predictor=True,
        projector_last_bn=False,
        contrastive=False,
        per_view_heads=True,
    ),
    "mocov3": BaseMethod(
        "mocov3",
        momentum_teacher=True,
        predictor=True,
        projector_last_bn=True,
        contrastive=True,
        predictor_last_bn=True,
        per_view_heads=True,
    ),
}


def get_method(name: str) -> BaseMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r} (choose from {', '.join(METHODS)})") from None
