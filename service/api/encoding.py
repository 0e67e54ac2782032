"""Vectors on the wire: JSON lists (the default), base64 of little-endian float32 or float16
rows, or a whole ``application/x-npy`` body — and the same decoded on the way in.

A 128-float embedding is ~2.4 kB as JSON, 684 B as base64 float32, 344 B as base64 float16;
float32 round-trips exactly, float16 to about 3 significant digits (cosine ≥ 0.9999).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any, Literal

import numpy as np
from fastapi.responses import Response

from service.errors import APIError

Encoding = Literal["json", "base64", "base64-f16"]
NPY = "application/x-npy"
_DTYPES = {"base64": "<f4", "base64-f16": "<f2"}


def encode_rows(rows: np.ndarray, encoding: Encoding) -> Any:
    """``[N, D]`` float rows as the response carries them: the array itself (written as JSON
    lists) or one base64 string per row."""
    if encoding == "json":
        return rows
    dtype = _DTYPES[encoding]
    return [base64.b64encode(np.ascontiguousarray(r, dtype=dtype).tobytes()).decode() for r in rows]


def decode_vector(value: Any, dim: int) -> np.ndarray | None:
    """A base64 string of ``dim`` float32 (or float16: half the bytes) → float64 ``[dim]``;
    None if ``value`` is not a string (then it is a JSON list, checked by the caller)."""
    if not isinstance(value, str) or value.lstrip().startswith("["):
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(422, "invalid_vector", "vector is neither a JSON list nor base64") from exc
    for dtype in ("<f4", "<f2"):
        if len(raw) == dim * np.dtype(dtype).itemsize:
            return np.frombuffer(raw, dtype=dtype).astype(np.float64)
    raise APIError(
        422,
        "invalid_vector",
        f"base64 vector has {len(raw)} bytes; expected {4 * dim} (float32) or {2 * dim} (float16)",
    )


def wants_npy(accept: str | None) -> bool:
    return accept is not None and NPY in accept


def npy_response(rows: np.ndarray, headers: dict[str, str]) -> Response:
    """The rows as one ``.npy`` file (float32 ``[N, D]``); the rest of the answer in headers."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(rows, dtype=np.float32), allow_pickle=False)
    return Response(buf.getvalue(), media_type=NPY, headers=headers)
