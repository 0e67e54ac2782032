"""Per-step schedules: learning rate, self-distillation weight lambda(t), teacher momentum."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, base: float, final: float, warmup: int) -> float:
    """Linear warm-up from 0 to ``base`` over ``warmup`` steps, then cosine to ``final``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


def distill_weight(step: int, total: int, ratio: float, ramp: float = 1.0) -> float:
    """lambda(t) = (r/2)(1 - cos(pi t / T')), T' = ramp * T; 0 at t = 0, r from t = T' on."""
    span = max(1.0, ramp * total)
    progress = min(1.0, step / span)
    return 0.5 * ratio * (1.0 - math.cos(math.pi * progress))


def teacher_momentum(step: int, total: int, base: float) -> float:
    """m(t) = 1 - (1 - m0)(cos(pi t / T) + 1)/2: ``base`` at t = 0, 1 at t = T."""
    progress = min(1.0, step / max(1, total))
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
