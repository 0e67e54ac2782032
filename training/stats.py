"""Paired statistics for baseline-vs-SDSSL comparisons: the runs of one seed share data order and
initialisation, so the evidence is in the per-seed differences, not in two separate means."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Paired:
    """Per-seed differences (treatment − control) and what they support."""

    diffs: list[float]
    mean: float
    sd: float  # sample standard deviation (n − 1); nan for one seed
    t: float  # paired t statistic, mean / (sd / sqrt n); nan when undefined
    df: int
    p_t: float  # two-sided p of t with df degrees of freedom
    p_sign_flip: float  # exact two-sided p of the sign-flip (randomisation) test

    def to_dict(self) -> dict[str, float | int | list[float]]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(self).items()}  # fmt: skip


def paired(treatment: np.ndarray, control: np.ndarray) -> Paired:
    """Paired comparison of two equal-length per-seed samples."""
    d = np.asarray(treatment, dtype=np.float64) - np.asarray(control, dtype=np.float64)
    n = len(d)
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    if n > 1 and sd > 0:
        t = mean / (sd / math.sqrt(n))
        p_t = float(2 * _t_sf(abs(t), n - 1))
    else:
        t, p_t = math.nan, math.nan
    return Paired([float(x) for x in d], mean, sd, t, n - 1, p_t, sign_flip_p(d))


def sign_flip_p(d: np.ndarray) -> float:
    """Exact two-sided p: the share of the 2^n sign patterns whose |mean| ≥ the observed one
    (valid with no distributional assumption; its smallest value is 2 / 2^n)."""
    d = np.asarray(d, dtype=np.float64)
    observed = abs(d.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    means = np.abs((signs * d).mean(axis=1))
    return float((means >= observed - 1e-12).mean())


def _t_sf(t: float, df: int) -> float:
    from scipy.stats import t as student

    return float(student.sf(t, df))
