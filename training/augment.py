"""Image transforms: MoCo v3's asymmetric two-view augmentation (scaled to the image size) and
the evaluation transform the service's preprocessing must reproduce."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from training.config import DataConfig
from training.data import ImageSource

INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


def eval_resize(img_size: int, cfg: DataConfig) -> int:
    """Shorter-side size before the centre crop (``img_size / eval_crop_ratio``)."""
    return round(img_size / cfg.eval_crop_ratio)


def eval_geometry(img_size: int, cfg: DataConfig) -> T.Compose:
    """Resize the shorter side, centre-crop to ``img_size`` (PIL in, PIL out): the part of
    evaluation's transform that a bundle's client performs."""
    return T.Compose(
        [
            T.Resize(eval_resize(img_size, cfg), interpolation=INTERPOLATION[cfg.interpolation]),
            T.CenterCrop(img_size),
        ]
    )


def eval_transform(img_size: int, cfg: DataConfig) -> T.Compose:
    """Geometry, then ÷255 and mean/std normalisation: what evaluation sees."""
    return T.Compose(
        [*eval_geometry(img_size, cfg).transforms, T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    )


def _blur(img_size: int, p: float) -> T.RandomApply:
    # MoCo v3 blurs with sigma in [0.1, 2.0] at 224 px; keep the same share of the image.
    scale = img_size / 224.0
    kernel = max(3, (img_size // 10) | 1)
    return T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1 * scale, 2.0 * scale))], p=p)


def two_view_transforms(img_size: int, cfg: DataConfig) -> tuple[T.Compose, T.Compose]:
    """MoCo v3's asymmetric pair: view 1 always blurred; view 2 rarely blurred, sometimes
    solarised."""

    def common_head() -> list:
        return [
            T.RandomResizedCrop(
                img_size,
                scale=(cfg.crop_min_scale, 1.0),
                interpolation=INTERPOLATION[cfg.interpolation],
            ),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=cfg.color_jitter),
            T.RandomGrayscale(p=cfg.grayscale),
        ]

    tail = [T.RandomHorizontalFlip(cfg.hflip), T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    view1 = T.Compose([*common_head(), _blur(img_size, 1.0), *tail])
    view2 = T.Compose([*common_head(), _blur(img_size, 0.1), T.RandomSolarize(128, p=0.2), *tail])
    return view1, view2


class TwoViews(Dataset):
    """Two independently augmented views of each image (labels unused).

    Each sample's randomness is seeded from (seed, epoch, index), so a run is reproducible
    whatever the worker count, and a resumed run sees exactly the views it would have seen.
    Set ``epoch`` before iterating each epoch.
    """

    def __init__(self, source: ImageSource, transforms: tuple[T.Compose, T.Compose], seed: int = 0):
        self.source, self.t1, self.t2 = source, transforms[0], transforms[1]
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.source.image(i)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
            return self.t1(img), self.t2(img)


class Evaluated(Dataset):
    """Images through the evaluation transform, with their label (-1 when unlabelled)."""

    def __init__(self, source: ImageSource, transform: T.Compose):
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        label = -1 if self.source.labels is None else int(self.source.labels[i])
        return self.transform(self.source.image(i)), label
