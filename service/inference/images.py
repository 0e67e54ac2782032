"""Image intake, in one place: bytes → checked, decoded, oriented RGB → resized + centre-cropped
uint8 ``[S, S, 3]``. The resize/crop equals torchvision's ``Resize(int)`` + ``CenterCrop`` that
evaluation uses (a test proves it)."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from service.errors import APIError

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF"})
RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
T = TypeVar("T")
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Read only the header: an allowed format within the pixel cap, or APIError (4xx)."""
    if not data:
        raise APIError(400, "empty_image", "image is empty (0 bytes)")
    img = Image.open(io.BytesIO(data))
    fmt = img.format
    if fmt not in ALLOWED_FORMATS:
        allowed = ", ".join(sorted(ALLOWED_FORMATS))
        raise APIError(415, "unsupported_format", f"{fmt} images are not accepted ({allowed})")
    w, h = img.size
    if w < 1 or h < 1 or w * h > max_pixels:
        raise APIError(
            413,
            "image_too_large",
            f"image is {w}x{h} pixels; the limit is {max_pixels} (SDSSL_MAX_PIXELS)",
        )
    return img


def _errors_as_api(fn: Callable[[bytes, int], T]) -> Callable[[bytes, int], T]:
    """Pillow's ways of saying 'bad image' as 4xx APIErrors."""

    def wrapper(data: bytes, max_pixels: int) -> T:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                return fn(data, max_pixels)
        except APIError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise APIError(413, "image_too_large", f"decompression bomb refused: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise APIError(400, "not_an_image", "bytes are not a recognised image") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise APIError(400, "corrupt_image", f"cannot decode image: {exc}") from exc

    return wrapper


@_errors_as_api
def pixels(data: bytes, max_pixels: int) -> int:
    """Pixels an image declares (header only: no decoding); APIError (4xx) if it is refused."""
    w, h = _open_checked(data, max_pixels).size
    return w * h


@_errors_as_api
def _decode(data: bytes, max_pixels: int) -> Image.Image:
    img = _open_checked(data, max_pixels)
    img.seek(0)  # GIF/WebP: first frame
    img.load()
    return img


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode an allowed format into an upright RGB image; APIError (4xx) on anything else."""
    img = _decode(data, max_pixels)
    with contextlib.suppress(Exception):  # a malformed EXIF block must not reject the image
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Grey, palette, RGBA, CMYK and 16-bit images → 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    return img if img.mode == "RGB" else img.convert("RGB")


def resize_center_crop(
    img: Image.Image, resize: int, crop: int, interpolation: str, max_pixels: int
) -> np.ndarray:
    """Shorter side → ``resize`` (torchvision's rule), centre crop ``crop``: uint8 [S, S, 3]."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if new_w * new_h > max_pixels:
        raise APIError(
            413,
            "image_too_large",
            f"a {w}x{h} image resizes to {new_w}x{new_h}, more than {max_pixels} pixels "
            "(SDSSL_MAX_PIXELS): aspect too extreme",
        )
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), RESAMPLE[interpolation])
    top = round((new_h - crop) / 2.0)
    left = round((new_w - crop) / 2.0)
    return np.asarray(img.crop((left, top, left + crop, top + crop)), dtype=np.uint8)


def prepare(data: bytes, resize: int, crop: int, interpolation: str, max_pixels: int) -> np.ndarray:
    """Bytes of one image → the graphs' uint8 input row ``[S, S, 3]``."""
    return resize_center_crop(decode(data, max_pixels), resize, crop, interpolation, max_pixels)


def canonical_png(img: Image.Image, side: int) -> bytes:
    """The kept input of an item: the upright RGB image with its shorter side at most ``side``
    (never enlarged), as a fast lossless PNG — what a later bundle re-embeds from."""
    w, h = img.size
    scale = side / min(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                         Image.Resampling.BICUBIC)  # fmt: skip
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def prepare_kept(
    data: bytes, resize: int, crop: int, interpolation: str, max_pixels: int, side: int
) -> tuple[np.ndarray, bytes]:
    """One decode → the input row (as :func:`prepare`) and the kept copy (:func:`canonical_png`)."""
    img = decode(data, max_pixels)
    row = resize_center_crop(img, resize, crop, interpolation, max_pixels)
    return row, canonical_png(img, side)
