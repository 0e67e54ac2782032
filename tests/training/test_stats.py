"""Paired statistics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.stats import paired, sign_flip_p


def test_paired_by_hand() -> None:
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.4641, 2 df
    p = paired(np.array([11.0, 12.0, 13.0]), np.array([10.0, 10.0, 10.0]))
    assert p.diffs == [1.0, 2.0, 3.0] and p.mean == 2.0 and p.sd == pytest.approx(1.0)
    assert p.t == pytest.approx(2 * math.sqrt(3)) and p.df == 2
    assert p.p_t == pytest.approx(0.07418, abs=1e-4)  # two-sided Student t, 2 df (tables)
    # sign flips of (1, 2, 3): |mean| >= 2 only for +++ and --- -> 2 / 8
    assert p.p_sign_flip == pytest.approx(0.25)


def test_sign_flip_counts_ties_and_the_floor() -> None:
    assert sign_flip_p(np.array([1.0, -1.0])) == 1.0  # every pattern is as extreme as 0
    assert sign_flip_p(np.array([0.5] * 5)) == pytest.approx(2 / 32)  # the smallest possible


def test_one_seed_has_no_spread() -> None:
    p = paired(np.array([0.9]), np.array([0.8]))
    assert math.isnan(p.sd) and math.isnan(p.t) and p.to_dict()["sd"] is None
