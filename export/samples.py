"""Images for parity checks: random pixels, the checkpoint's own dataset, and photos.

All are uint8 ``[N, S, S, 3]`` RGB, brought to S×S by evaluation's own resize + centre crop.
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from training.augment import eval_geometry
from training.config import Config
from training.data import load_splits
from training.errors import DataError

log = logging.getLogger(__name__)


def _photos() -> list[Image.Image]:
    """scikit-image's bundled colour photos, when it is installed (it is in the dev extra)."""
    try:
        from skimage import data
    except ImportError:
        return []
    return [Image.fromarray(getattr(data, n)()).convert("RGB") for n in ("astronaut", "chelsea")]


def sample_images(cfg: Config, n_random: int = 4, n_dataset: int = 8) -> np.ndarray:
    """Random, dataset and photo images as the graphs' uint8 input."""
    size = cfg.model.img_size
    geometry = eval_geometry(size, cfg.data)
    rng = np.random.default_rng(0)
    batch = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n_random)]
    try:
        test = load_splits(cfg.data.dataset, cfg.data.test_fraction).test
        picks = np.linspace(0, len(test) - 1, min(n_dataset, len(test))).astype(int)
        batch += [np.asarray(geometry(test.image(int(i)))) for i in picks]
    except DataError as exc:
        log.warning("parity without dataset images: %s", exc)
    batch += [np.asarray(geometry(p)) for p in _photos()]
    return np.stack(batch)
