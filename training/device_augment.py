"""MoCo v3's two-view augmentation on the accelerator, a batch at a time (``data.augment_on:
device``): the loader only decodes, the GPU crops, jitters and blurs.

Every random choice of a sample is drawn on the CPU from a generator seeded by (seed, epoch,
index), as :class:`~training.augment.TwoViews` seeds its per-sample transforms, so a sample's
views do not depend on the batch it lands in, its position there, or the device. The operations
mirror the CPU pipeline (torchvision) with three documented differences: crops are resampled
bilinearly without antialiasing, the four colour-jitter operations run in a fixed order
(brightness, contrast, saturation, hue) rather than a random one, and the blur kernel is
normalised over its support (as torchvision's is).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from training.config import DataConfig
from training.data import ImageSource

PARAMS = 14  # per view: crop (4), flip, jitter (on, b, c, s, h), gray, blur (on, sigma), solarize


class RawImages(Dataset):
    """Decoded images as uint8 ``[3, H, W]`` tensors with both views' random choices (drawn in
    the loader's workers; the pixels are augmented later, on the device). Set ``epoch`` before
    iterating each epoch."""

    def __init__(self, source: ImageSource, cfg: DataConfig, img_size: int, seed: int) -> None:
        self.source, self.cfg, self.img_size = source, cfg, img_size
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        img = np.asarray(self.source.image(i).convert("RGB"), dtype=np.uint8)
        h, w = img.shape[:2]
        p1, p2 = sample_params(torch.tensor([i]), h, w, self.cfg, self.img_size, self.seed,
                               self.epoch)  # fmt: skip
        return torch.from_numpy(img.copy()).permute(2, 0, 1), p1[0], p2[0]


def collate_same_size(batch: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    sizes = {tuple(item[0].shape) for item in batch}
    if len(sizes) > 1:
        raise ValueError(
            f"data.augment_on=device batches raw images, which must share one size (found "
            f"{sorted(sizes)[:3]}...): resize the dataset or use data.augment_on=cpu"
        )
    return tuple(torch.stack(parts) for parts in zip(*batch, strict=True))


def _crop_box(g: torch.Generator, h: int, w: int, scale: tuple[float, float]) -> tuple[int, ...]:
    """torchvision's RandomResizedCrop.get_params with ratio (3/4, 4/3), on ``g``."""
    area = h * w
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        u1, u2 = torch.rand(2, generator=g).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u1)
        ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u2)
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            i = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            j = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            return i, j, ch, cw
    ratio = w / h  # fallback: the whole image, clamped to the ratio range
    if ratio < 3 / 4:
        cw, ch = w, round(w / (3 / 4))
    elif ratio > 4 / 3:
        ch, cw = h, round(h * (4 / 3))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def view_params(
    g: torch.Generator, h: int, w: int, cfg: DataConfig, img_size: int, blur_p: float,
    solarize_p: float,
) -> list[float]:  # fmt: skip
    """One view's random choices, in the order of :data:`PARAMS`."""
    u = lambda: torch.rand(1, generator=g).item()  # noqa: E731
    i, j, ch, cw = _crop_box(g, h, w, (cfg.crop_min_scale, 1.0))
    jitter = float(u() < cfg.color_jitter)
    b, c, s = (1 + 0.4 * (2 * u() - 1) for _ in range(3))
    hue = 0.1 * (2 * u() - 1)
    gray = float(u() < cfg.grayscale)
    blur = float(u() < blur_p)
    scale = img_size / 224.0  # MoCo v3's sigma range at 224 px, kept as a share of the image
    sigma = (0.1 + 1.9 * u()) * scale
    solarize = float(u() < solarize_p)
    flip = float(u() < cfg.hflip)
    return [i, j, ch, cw, flip, jitter, b, c, s, hue, gray, blur, sigma, solarize]


def sample_params(
    indices: torch.Tensor, h: int, w: int, cfg: DataConfig, img_size: int, seed: int, epoch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, PARAMS]`` for view 1 (always blurred) and view 2 (blur 0.1, solarise 0.2), each
    sample from its own generator."""
    v1, v2 = [], []
    for index in indices.tolist():
        g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 10_000_019 + index)
        v1.append(view_params(g, h, w, cfg, img_size, 1.0, 0.0))
        v2.append(view_params(g, h, w, cfg, img_size, 0.1, 0.2))
    return torch.tensor(v1, dtype=torch.float64), torch.tensor(v2, dtype=torch.float64)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` (fraction of a turn, per image) through HSV."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    v, delta = maxc, maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    d = delta.clamp_min(1e-12)
    hr = (g - b) / d
    hg = 2.0 + (b - r) / d
    hb = 4.0 + (r - g) / d
    hue = torch.where(maxc == r, hr, torch.where(maxc == g, hg, hb))
    hue = torch.where(delta > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    hue = (hue + shift.view(-1, 1, 1)) % 1.0
    i = torch.floor(hue * 6.0)
    f = hue * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(x)
    for k, (cr, cg, cb) in enumerate(choices):
        m = (i == k).unsqueeze(1)
        out = torch.where(m, torch.stack([cr, cg, cb], 1), out)
    return out


def _blur(x: torch.Tensor, sigma: torch.Tensor, on: torch.Tensor, kernel: int) -> torch.Tensor:
    """Per-image Gaussian blur (separable, reflect padding); images with ``on`` false pass."""
    n, c, hh, ww = x.shape
    half = (kernel - 1) / 2
    t = torch.linspace(-half, half, kernel, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
    k = k / k.sum(1, keepdim=True)
    delta = torch.zeros_like(k)
    delta[:, kernel // 2] = 1.0
    k = torch.where(on[:, None], k, delta).repeat_interleave(c, 0)  # [n*c, kernel]
    pad = kernel // 2
    y = x.reshape(1, n * c, hh, ww)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, hh, ww)


def apply_view(
    images: torch.Tensor, p: torch.Tensor, img_size: int, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` + ``[B, PARAMS]`` → one normalised float view ``[B, 3, S, S]``."""
    x = images.float() / 255.0
    p = p.to(device=x.device, dtype=x.dtype)
    n, _, h, w = x.shape
    i, j, ch, cw, flip = p[:, 0], p[:, 1], p[:, 2], p[:, 3], p[:, 4]
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = (cw / w) * (1 - 2 * flip)
    theta[:, 0, 2] = (2 * j + cw) / w - 1
    theta[:, 1, 1] = ch / h
    theta[:, 1, 2] = (2 * i + ch) / h - 1
    grid = F.affine_grid(theta, [n, 3, img_size, img_size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    on = p[:, 5].bool().view(-1, 1, 1, 1)
    y = (x * p[:, 6].view(-1, 1, 1, 1)).clamp(0, 1)  # brightness
    m = _gray(y).mean((1, 2, 3), keepdim=True)
    y = ((y - m) * p[:, 7].view(-1, 1, 1, 1) + m).clamp(0, 1)  # contrast
    g = _gray(y)
    y = ((y - g) * p[:, 8].view(-1, 1, 1, 1) + g).clamp(0, 1)  # saturation
    y = _hue_shift(y, p[:, 9])
    x = torch.where(on, y, x)
    x = torch.where(p[:, 10].bool().view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
    kernel = max(3, (img_size // 10) | 1)
    x = _blur(x, p[:, 12].clamp_min(1e-3), p[:, 11].bool(), kernel)
    solar = p[:, 13].bool().view(-1, 1, 1, 1) & (x >= 128 / 255)
    x = torch.where(solar, 1.0 - x, x)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


class DeviceTwoViews:
    """Two views of a raw batch (from :class:`RawImages`), made where the batch lives."""

    def __init__(self, cfg: DataConfig, img_size: int) -> None:
        self.img_size = img_size
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32)
        self.std = torch.tensor(cfg.std, dtype=torch.float32)

    def __call__(
        self, images: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return (apply_view(images, p1, self.img_size, mean, std),
                apply_view(images, p2, self.img_size, mean, std))  # fmt: skip
