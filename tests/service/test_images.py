"""Image intake equals the torchvision transform that training evaluates with."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from service.errors import APIError
from service.inference.images import decode, resize_center_crop, to_rgb


def reference():
    """training/'s eval transform and its config (the reference needs torch)."""
    pytest.importorskip("torch", reason="the reference is training/'s torchvision transform")
    from training.augment import eval_geometry
    from training.config import DataConfig

    return eval_geometry, DataConfig


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("crop_ratio", [1.0, 0.875])
@pytest.mark.parametrize("size", [(28, 28), (512, 512), (640, 480), (33, 97), (3, 5), (300, 29)])
def test_equals_torchvision_eval_geometry(size, crop_ratio, interpolation) -> None:
    eval_geometry, DataConfig = reference()
    cfg = DataConfig(eval_crop_ratio=crop_ratio, interpolation=interpolation)
    crop = 28
    resize = round(crop / crop_ratio)
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ours = resize_center_crop(img, resize, crop, interpolation, 10**8)
    ref = np.asarray(eval_geometry(crop, cfg)(img))
    assert ours.shape == (crop, crop, 3) and ours.dtype == np.uint8
    assert np.array_equal(ours, ref)


def test_equals_torchvision_on_photos() -> None:
    eval_geometry, DataConfig = reference()
    skdata = pytest.importorskip("skimage.data")
    cfg = DataConfig(eval_crop_ratio=0.875, interpolation="bicubic")
    for photo in (skdata.astronaut(), skdata.coffee(), skdata.chelsea()):
        img = Image.fromarray(photo)
        ours = resize_center_crop(img, 256, 224, "bicubic", 10**8)
        assert np.array_equal(ours, np.asarray(eval_geometry(224, cfg)(img)))


def test_modes_become_rgb() -> None:
    for mode in ("L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"):
        img = Image.new(mode, (4, 3))
        assert to_rgb(img).mode == "RGB"
    sixteen = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert np.asarray(to_rgb(sixteen)).max() == 255


def test_pixel_caps() -> None:
    with pytest.raises(APIError) as exc:
        resize_center_crop(Image.new("RGB", (1, 20000)), 28, 28, "bilinear", 1_000_000)
    assert exc.value.status == 413
    import io

    buf = io.BytesIO()
    Image.new("RGB", (300, 300)).save(buf, "PNG")
    with pytest.raises(APIError) as exc:
        decode(buf.getvalue(), max_pixels=1000)
    assert exc.value.status == 413
