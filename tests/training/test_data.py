from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from training.data import load_splits, stratified_split
from training.errors import DataError


def test_mnist5k_split_is_stratified_and_deterministic() -> None:
    a = load_splits("mnist5k", 0.2)
    b = load_splits("mnist5k", 0.2)
    assert len(a.train) == 4000 and len(a.test) == 1000 and len(a.all) == 5000
    assert np.array_equal(a.test.indices, b.test.indices)
    assert np.bincount(a.test.labels).tolist() == [100] * 10
    assert not set(a.train.indices) & set(a.test.indices)
    img = a.train.image(0)
    assert img.mode == "RGB" and img.size == (28, 28)


def test_stratified_split_keeps_class_shares() -> None:
    labels = np.array([0] * 10 + [1] * 30)
    train, test = stratified_split(labels, 0.1)
    assert sorted(labels[test].tolist()) == [0, 1, 1, 1]
    assert len(train) + len(test) == 40


def test_image_folder_with_class_subfolders(tmp_path) -> None:
    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("RGB", (10, 12), colour).save(tmp_path / cls / f"{i}.png")
    splits = load_splits(f"folder:{tmp_path}", 0.2)
    assert splits.all.classes == ["cat", "dog"]
    assert len(splits.all) == 10 and len(splits.test) == 2
    assert splits.all.image(0).getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("imagenet", "unknown dataset"),
        ("folder:/nonexistent/path", "not found"),
        ("mnist:/nonexistent/root", "never downloaded"),
        ("cifar10:/nonexistent/root", "never downloaded"),
    ],
)
def test_bad_datasets_are_clear_errors(spec, match) -> None:
    with pytest.raises(DataError, match=match):
        load_splits(spec, 0.2)


def test_empty_folder_is_an_error(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images"):
        load_splits(f"folder:{tmp_path}", 0.2)
