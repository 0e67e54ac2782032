"""Numerical agreement checks between graphs and references (numpy + onnxruntime, no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.errors import BundleError
from export.manifest import exit_row

FP32_MAX_ABS = 1e-4
FP16_MIN_COS = 0.999


def onnx_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU onnxruntime session (graph optimisations on)."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max |a - b|, min row-wise cosine similarity) of two ``[N, D]`` embedding arrays."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = (a64 * b64).sum(-1) / (np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1))
    return float(np.abs(a64 - b64).max()), float(cos.min())


def check_exit(out: np.ndarray, ref: np.ndarray, fp16: bool, name: str) -> None:
    """fp32: max |Δ| ≤ 1e-4; fp16: cosine ≥ 0.999 per embedding. BundleError otherwise."""
    if out.shape != ref.shape:
        raise BundleError(f"{name}: output shape {out.shape} != expected {ref.shape}")
    if not np.isfinite(out).all():
        raise BundleError(f"{name}: non-finite values in the output")
    max_abs, min_cos = agreement(out, ref)
    if fp16 and min_cos < FP16_MIN_COS:
        raise BundleError(f"{name}: cosine {min_cos:.5f} < {FP16_MIN_COS} against reference")
    if not fp16 and max_abs > FP32_MAX_ABS:
        raise BundleError(f"{name}: max |Δ| {max_abs:.2e} > {FP32_MAX_ABS} against reference")


def check_exits_agree(per_exit: dict[int, np.ndarray], all_out: np.ndarray, fp16: bool) -> None:
    """Every ``exit_DD`` output equals ``all_exits[d-1]`` within the same bounds."""
    for d, out in per_exit.items():
        check_exit(out, exit_row(all_out, d), fp16, f"exit_{d:02d} vs all_exits[{d - 1}]")
