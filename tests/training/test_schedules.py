from __future__ import annotations

import pytest

from training.config import TrainConfig, distill_ratio
from training.schedules import distill_weight, teacher_momentum, warmup_cosine


@pytest.mark.parametrize("r", [1.0, 0.8])
def test_distill_weight_end_points(r: float) -> None:
    assert distill_weight(0, 1000, r) == 0.0
    assert distill_weight(500, 1000, r) == pytest.approx(r / 2)
    assert distill_weight(1000, 1000, r) == pytest.approx(r)


def test_distill_weight_ramp_reaches_r_early_and_stays() -> None:
    assert distill_weight(500, 1000, 1.0, ramp=0.5) == pytest.approx(1.0)
    assert distill_weight(900, 1000, 1.0, ramp=0.5) == pytest.approx(1.0)
    assert distill_weight(250, 1000, 1.0, ramp=0.5) == pytest.approx(0.5)


def test_distill_ratio_defaults_per_method() -> None:
    assert distill_ratio(TrainConfig(method="mocov3")) == 1.0
    assert distill_ratio(TrainConfig(method="byol")) == 0.8
    assert distill_ratio(TrainConfig(method="simclr")) == 0.8
    assert distill_ratio(TrainConfig(method="simclr", distill_ratio=0.3)) == 0.3


def test_teacher_momentum_end_points() -> None:
    assert teacher_momentum(0, 1000, 0.996) == pytest.approx(0.996)
    assert teacher_momentum(500, 1000, 0.996) == pytest.approx(0.998)
    assert teacher_momentum(1000, 1000, 0.996) == pytest.approx(1.0)


def test_warmup_cosine_end_points() -> None:
    assert warmup_cosine(0, 100, 1.0, 0.0, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 1.0, 0.0, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 1.0, 0.0, 10) == pytest.approx(1.0)
    assert warmup_cosine(100, 100, 1.0, 0.1, 10) == pytest.approx(0.1)
    assert warmup_cosine(55, 100, 1.0, 0.0, 10) == pytest.approx(0.5)
