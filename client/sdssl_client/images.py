"""Images as the client takes them: paths, bytes, PIL images or numpy arrays → encoded bytes."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

ImageLike = str | os.PathLike | bytes | bytearray | memoryview | Any  # Any: PIL or numpy


def to_bytes(image: ImageLike) -> bytes:
    """Encoded image bytes: files are read, bytes pass through, PIL images and uint8 numpy arrays
    (H×W or H×W×3/4) are written as PNG (lossless; needs Pillow)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes()
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise TypeError(
            f"{type(image).__name__} images need Pillow: pip install 'sdssl-client[images]'"
        ) from exc
    if not isinstance(image, Image.Image):
        import numpy as np

        if not isinstance(image, np.ndarray):
            raise TypeError(f"not an image: {type(image).__name__} (path, bytes, PIL or numpy)")
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise TypeError("numpy images must be uint8 H×W or H×W×C")
        image = Image.fromarray(image)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def many(images: ImageLike | list[ImageLike]) -> list[bytes]:
    """One image or a list of them, as bytes."""
    if isinstance(images, (list, tuple)):
        return [to_bytes(i) for i in images]
    return [to_bytes(images)]
