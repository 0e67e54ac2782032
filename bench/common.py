"""Shared benchmark parts: real images and a closed-loop load through the Python client
(``sdssl_client``, as users drive the server). Servers come from
:mod:`tests.harness`, the harness the tests use too: the benchmarks run from a checkout (they
read its bundles and write bench/results/), so its root is put on the import path when
``sdssl-bench`` starts from a console script."""

from __future__ import annotations

import asyncio
import io
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from tests.harness import ServerProcess, free_port  # noqa: E402

__all__ = ["ServerProcess", "free_port"]

DEFAULT_BUNDLE = ROOT / "bundles" / "default"


def machine() -> str:
    """A short description of where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core {cpu}"


def digit_pngs(n: int = 64) -> list[bytes]:
    """Real mnist5k test digits as PNG bytes."""
    from tests.harness import mnist_test

    test = mnist_test()
    out = []
    for i in range(n):
        buf = io.BytesIO()
        test.image(i * (len(test) // n)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies_ms: list[float]
    bodies: list[dict] = field(default_factory=list)
    errors: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


async def _closed_loop(
    url: str,
    concurrency: int,
    seconds: float,
    images: list[bytes],
    params_for,
    keep_bodies: bool,
) -> LoadResult:
    import httpx
    from sdssl_client import AsyncClient, SDSSLError

    # The product's own client, one connection per worker; no retries: a refusal is counted.
    # Each reads the server's limits once, before the clock starts.
    clients = [AsyncClient(url, timeout=60, retries=0) for _ in range(concurrency)]
    await asyncio.gather(*(c.limits() for c in clients))
    stop = time.perf_counter() + seconds
    lat: list[float] = []
    bodies: list[dict] = []
    errors = 0

    async def worker(w: int) -> None:
        nonlocal errors
        client, i = clients[w], w
        while time.perf_counter() < stop:
            img = images[i % len(images)]
            start = time.perf_counter()
            try:
                got = await client.embed(img, **params_for(i))
            except (SDSSLError, httpx.TransportError):  # refused, or the connection failed
                errors += 1
            else:
                lat.append(1000 * (time.perf_counter() - start))
                if keep_bodies:
                    bodies.append({"exit_depth": got.exit_depth, "timing": got.timing})
            i += concurrency

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return LoadResult(len(lat), elapsed, lat, bodies, errors)


def closed_loop(
    url: str,
    concurrency: int,
    seconds: float,
    images: list[bytes],
    params_for=lambda i: {},
    keep_bodies: bool = False,
) -> LoadResult:
    """``concurrency`` clients, each sending its next request when the last one returns."""
    return asyncio.run(_closed_loop(url, concurrency, seconds, images, params_for, keep_bodies))


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")
