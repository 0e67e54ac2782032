"""Image decoding as bounded work: a pixel budget per request, decoding on its own thread pool,
and admission by the pixels already being decoded.

Decode cost grows with pixels, not bytes (a blank 6320×6320 PNG is 40 kB and a third of a
second of CPU), so every limit here counts the pixels that image headers declare — read before
anything is decoded. Work past ``decode_queue_pixels`` is refused with 503 + Retry-After before
the pool's queue grows, and the pool is separate from the default executor, so item reads and
writes never wait behind decoding.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from export.manifest import Preprocess
from service.errors import APIError
from service.inference.images import pixels, prepare, prepare_kept
from service.metrics import Metrics
from service.settings import Settings

T = TypeVar("T")
INLINE_PIXELS = 65_536  # up to this many pixels decode faster on the event loop than a hop takes


def default_decode_threads() -> int:
    return max(1, (os.cpu_count() or 1) // 2)


class DecodePool:
    """Decodes requests' images off the event loop, within the settings' pixel budgets."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.threads = settings.decode_threads or default_decode_threads()
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
        self.pending_pixels = 0
        self._rate = 30e6  # pixels/s per thread; refined by every pooled decode

    async def prepare(self, images: list[bytes], preprocess: Preprocess) -> np.ndarray:
        """Every image decoded, resized and cropped: uint8 ``[N, S, S, 3]``. 413 over the
        request's pixel budget, 503 when the pool has enough work queued."""
        rows, _ = await self.prepare_kept(images, preprocess, None)
        return rows

    async def prepare_kept(
        self, images: list[bytes], preprocess: Preprocess, keep_side: int | None
    ) -> tuple[np.ndarray, list[bytes] | None]:
        """As :meth:`prepare`, and with ``keep_side`` each image's kept copy
        (:func:`~service.inference.images.canonical_png`) from the same decode."""
        s = self.settings
        if not images:
            raise APIError(422, "no_images", "send at least one image")
        if len(images) > s.max_images:
            raise APIError(
                413,
                "too_many_images",
                f"at most {s.max_images} images per request (SDSSL_MAX_IMAGES)",
            )
        total = sum(
            _numbered(pixels, i, len(images), data, s.max_pixels) for i, data in enumerate(images)
        )
        if total > s.max_request_pixels:
            raise APIError(
                413,
                "request_too_large",
                f"the images hold {total} pixels together; the limit per request is "
                f"{s.max_request_pixels} (SDSSL_MAX_REQUEST_PIXELS; send fewer or smaller images)",
            )

        def work() -> tuple[np.ndarray, list[bytes] | None]:
            started = time.perf_counter()
            done = [
                _numbered(_prepare, i, len(images), data, preprocess, s.max_pixels, keep_side)
                for i, data in enumerate(images)
            ]
            seconds = time.perf_counter() - started
            if seconds > 0:  # the decode rate behind Retry-After
                self._rate = 0.8 * self._rate + 0.2 * total / seconds
            kept = None if keep_side is None else [k for _, k in done]
            return np.stack([row for row, _ in done]), kept

        if total <= INLINE_PIXELS:
            return work()
        if self.pending_pixels and self.pending_pixels + total > s.decode_queue_pixels:
            self.metrics.overloaded.inc()
            raise APIError(
                503,
                "overloaded",
                f"more than {s.decode_queue_pixels} pixels are being decoded "
                "(SDSSL_DECODE_QUEUE_PIXELS); retry later",
                {"Retry-After": str(self._retry_after())},
            )
        self.pending_pixels += total
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
        finally:
            self.pending_pixels -= total

    def _retry_after(self) -> int:
        return max(1, math.ceil(self.pending_pixels / (self._rate * self.threads)))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _prepare(
    data: bytes, p: Preprocess, max_pixels: int, keep_side: int | None
) -> tuple[np.ndarray, bytes | None]:
    if keep_side is None:
        return prepare(data, p.resize, p.crop, p.interpolation, max_pixels), None
    return prepare_kept(data, p.resize, p.crop, p.interpolation, max_pixels, keep_side)


def _numbered(fn: Callable[..., T], i: int, n: int, *args: Any) -> T:
    """Run ``fn``; in a request of several images, say which one an error is about."""
    try:
        return fn(*args)
    except APIError as exc:
        if n > 1:
            exc.message = f"image {i}: {exc.message}"
        raise
