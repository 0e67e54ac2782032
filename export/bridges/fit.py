"""Ridge regression from one exit depth's embeddings into the gallery depth's space.

``bridge(x) = normalise(x @ W + b)``: with intercept (both sides centred), the ridge strength λ
chosen on a held-out part of the fitting images by the mean cosine between the mapped and the
target embeddings (what a cosine search sees), then refitted on all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# λ as a share of the mean eigenvalue of XᵀX (tr(XᵀX) / D): scale-free over N and D.
ALPHAS = tuple(10.0**e for e in range(-6, 2))
HOLDOUT = 0.2


@dataclass(frozen=True)
class Ridge:
    """One depth's bridge: ``W`` [D, D'] and ``b`` [D'] (float32), the λ it was fitted with and
    the held-out mean cosine that chose it (None at the gallery depth: the identity)."""

    weight: np.ndarray
    bias: np.ndarray
    lam: float
    holdout_cosine: float | None

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The bridged embeddings of ``x`` [N, D]: mapped and L2-normalised (float64 maths)."""
        y = x.astype(np.float64) @ self.weight.astype(np.float64) + self.bias
        return y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)


def identity(dim: int) -> Ridge:
    """The gallery depth's own bridge: leaves an embedding as it is."""
    return Ridge(np.eye(dim, dtype=np.float32), np.zeros(dim, np.float32), 0.0, None)


def _solve(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    gram[np.diag_indices_from(gram)] += lam
    w = np.linalg.solve(gram, xc.T @ yc)
    return w, my - mx @ w


def _mean_cosine(pred: np.ndarray, target: np.ndarray) -> float:
    p = pred / np.maximum(np.linalg.norm(pred, axis=-1, keepdims=True), 1e-12)
    t = target / np.maximum(np.linalg.norm(target, axis=-1, keepdims=True), 1e-12)
    return float((p * t).sum(-1).mean())


def fit_ridge(
    x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...] = ALPHAS, seed: int = 0
) -> Ridge:
    """Fit ``y ≈ x W + b`` on ``x``, ``y`` [N, D] (N ≥ 10); λ picked on a held-out fifth."""
    if x.shape[0] != y.shape[0] or x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"x {x.shape} and y {y.shape} must be [N, D] with the same N")
    if x.shape[0] < 10:
        raise ValueError(f"a bridge needs at least 10 fitting images, got {x.shape[0]}")
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    order = np.random.default_rng(seed).permutation(len(x64))
    n_hold = max(2, round(len(x64) * HOLDOUT))
    hold, fit = order[:n_hold], order[n_hold:]
    scale = float(np.trace(np.cov(x64[fit].T, bias=True))) or 1.0  # tr(XcᵀXc)/N; ×N below
    best: tuple[float, float] | None = None
    for alpha in alphas:
        lam = alpha * scale * len(fit) / x.shape[1]
        w, b = _solve(x64[fit], y64[fit], lam)
        cos = _mean_cosine(x64[hold] @ w + b, y64[hold])
        if best is None or cos > best[1]:
            best = (alpha, cos)
    assert best is not None
    lam = best[0] * scale * len(x64) / x.shape[1]
    w, b = _solve(x64, y64, lam)
    return Ridge(w.astype(np.float32), b.astype(np.float32), lam, best[1])
