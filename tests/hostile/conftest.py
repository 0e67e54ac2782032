"""Red-team round 2 (issue #29): each module is one area of breaks, each test one break that
failed on the main of 2026-12-06. Shared here: items written straight into a data dir (a
server then opens it), and the checks every hostile answer must pass."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import bundle_id, load_verified
from service.collection import open_index
from service.settings import Settings


def fill(
    bundle: Path,
    data_dir: Path,
    n: int,
    metadata: Callable[[int], Any] = lambda i: {"n": i},
    ids: Callable[[int], str] = lambda i: f"item-{i:06d}",
    chunk: int = 5000,
) -> np.ndarray:
    """Write ``n`` items with random unit vectors into ``bundle``'s folder of ``data_dir``,
    as the server would store them (one per item, in the gallery's space); returns them
    ``[n, D]``."""
    manifest = load_verified(bundle)
    dim = manifest.model.dim
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
    index = open_index(Settings(bundle=bundle, data_dir=data_dir), manifest, bundle_id(bundle))
    try:
        for start in range(0, n, chunk):
            rows = range(start, min(n, start + chunk))
            index.upsert(
                [ids(i) for i in rows], [metadata(i) for i in rows], vectors[start : start + chunk]
            )
    finally:
        index.close()
    return vectors


def assert_error(
    r, status: int | tuple[int, ...], code: str | None = None, names: str = ""
) -> dict:
    """A JSON error with this status (and code), whose message names ``names``."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    err = r.json()["error"]
    assert err["message"] and (code is None or err["code"] == code), err
    assert names in err["message"], err
    return err


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` (relative name → sha256), and every folder (→ "dir")."""
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out
