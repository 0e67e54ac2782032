"""Augmentation on the device, checked on CPU tensors: per-sample reproducibility whatever the
batch, and each operation against what it must equal."""

from __future__ import annotations

import math

import torch

from training.config import DataConfig, load_config
from training.device_augment import PARAMS, apply_view, sample_params

CFG = DataConfig(crop_min_scale=0.3)
MEAN, STD = torch.zeros(3), torch.ones(3)


def images(n: int, size: int = 28, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def views(x: torch.Tensor, idx: list[int], epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    p1, p2 = sample_params(torch.tensor(idx), 28, 28, CFG, 28, seed=3, epoch=epoch)
    return apply_view(x, p1, 28, MEAN, STD), apply_view(x, p2, 28, MEAN, STD)


def test_a_samples_views_do_not_depend_on_its_batch() -> None:
    x = images(6)
    v1, v2 = views(x, [10, 11, 12, 13, 14, 15])
    order = [4, 0, 2]  # other companions, other positions
    w1, w2 = views(x[order], [14, 10, 12])
    for k, src in enumerate(order):
        assert torch.allclose(w1[k], v1[src], atol=1e-6)
        assert torch.allclose(w2[k], v2[src], atol=1e-6)
    e1, _ = views(x, [10, 11, 12, 13, 14, 15], epoch=1)
    assert not torch.allclose(e1, v1)
    assert v1.shape == (6, 3, 28, 28) and torch.isfinite(v1).all() and not torch.allclose(v1, v2)


def test_crops_follow_random_resized_crop() -> None:
    p1, p2 = sample_params(torch.arange(500), 28, 28, CFG, 28, seed=0, epoch=0)
    for p in (p1, p2):
        area = p[:, 2] * p[:, 3] / (28 * 28)
        ratio = p[:, 3] / p[:, 2]
        assert p.shape[1] == PARAMS
        assert (area >= 0.3 - 0.05).all() and (area <= 1.0).all()  # rounding to whole pixels
        assert (ratio >= 3 / 4 - 0.1).all() and (ratio <= 4 / 3 + 0.1).all()
        assert (p[:, 0] + p[:, 2] <= 28).all() and (p[:, 1] + p[:, 3] <= 28).all()
    assert (p1[:, 11] == 1).all()  # view 1 is always blurred
    assert 0.05 < p2[:, 11].mean() < 0.16 and 0.14 < p2[:, 13].mean() < 0.27  # 0.1 and 0.2


def plain(i=0, j=0, ch=28, cw=28, **on) -> torch.Tensor:
    """Parameters of one view with every random operation off unless given."""
    p = [i, j, ch, cw, on.get("flip", 0), on.get("jitter", 0), on.get("b", 1), on.get("c", 1),
         on.get("s", 1), on.get("hue", 0), on.get("gray", 0), on.get("blur", 0),
         on.get("sigma", 1.0), on.get("solarize", 0)]  # fmt: skip
    return torch.tensor([p], dtype=torch.float64)


def test_each_operation_does_what_it_says() -> None:
    x = images(1)
    f = x.float() / 255
    assert torch.allclose(apply_view(x, plain(), 28, MEAN, STD), f, atol=1e-5)  # identity
    assert torch.allclose(apply_view(x, plain(flip=1), 28, MEAN, STD), f.flip(-1), atol=1e-5)
    crop = apply_view(x, plain(i=4, j=10, ch=14, cw=14), 14, MEAN, STD)  # pixel-aligned crop
    assert torch.allclose(crop, f[..., 4:18, 10:24], atol=1e-5)
    gray = apply_view(x, plain(gray=1), 28, MEAN, STD)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    same = apply_view(x, plain(jitter=1), 28, MEAN, STD)  # factors 1, hue 0: unchanged
    assert torch.allclose(same, f, atol=1e-5)
    dark = apply_view(x, plain(jitter=1, b=0.5), 28, MEAN, STD)
    assert torch.allclose(dark, f * 0.5, atol=1e-5)
    solar = apply_view(x, plain(solarize=1), 28, MEAN, STD)
    ident = apply_view(x, plain(), 28, MEAN, STD)  # the same float rounding at the threshold
    assert torch.allclose(solar, torch.where(ident >= 128 / 255, 1 - ident, ident), atol=1e-6)
    blurred = apply_view(x, plain(blur=1, sigma=2.0), 28, MEAN, STD)
    assert blurred.std() < f.std() and math.isclose(blurred.mean(), f.mean(), abs_tol=0.02)
    hue = apply_view(x, plain(jitter=1, hue=1.0), 28, MEAN, STD)  # a whole turn: unchanged
    assert torch.allclose(hue, f, atol=1e-4)


def test_training_runs_with_device_augmentation(tmp_path) -> None:
    from tests.bundles import TINY_CONFIG
    from training.loop import train

    cfg = load_config(TINY_CONFIG, ["train.max_steps=2", "data.augment_on=device"])
    out = train(cfg, tmp_path / "ckpt")
    assert (out / "model.safetensors").is_file()
