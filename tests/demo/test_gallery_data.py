"""The committed demo gallery data is the default model's test split, image for image."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from training.data import load_splits

ROOT = Path(__file__).resolve().parents[2]


def test_committed_gallery_equals_the_mnist5k_test_split() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import demo_gallery
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    images, labels = demo_gallery.load()
    test = load_splits("mnist5k", 0.2).test
    assert images.shape == (len(test), 28, 28) and images.dtype == np.uint8
    assert np.array_equal(labels, test.labels)
    for i in range(len(test)):
        assert np.array_equal(np.asarray(test.image(i)), np.stack([images[i]] * 3, axis=-1)), i
