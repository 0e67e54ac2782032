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


METHODS: dict[str, BaseMethod] = {
    "simclr": BaseMethod(
        "simclr", momentum_teacher=False, predictor=False, projector_last_bn=True, contrastive=True
    ),
    "byol": BaseMethod(
        "byol", momentum_teacher=True, predictor=True, projector_last_bn=False, contrastive=False
    ),
    "mocov3": BaseMethod(
        "mocov3", momentum_teacher=True, predictor=True, projector_last_bn=True, contrastive=True
    ),
}


def get_method(name: str) -> BaseMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r} (choose from {', '.join(METHODS)})") from None
