"""Measured latencies and their tails: the one place that turns observations into predictions.

Everything the scheduler predicts is a statistic of recent observations that one outlier
cannot move: a high quantile computed the robust way (:func:`tail`: the rank a 99th percentile
asks for, but never the very largest of a window once it holds a few samples) or the median —
so one stalled request (a page fault, a GC pause, a SIGSTOP) does not raise every prediction
that follows it. (A mean would: one 300 ms stall among 20 runs of 2 ms raises it to 16 ms.)
"""

from __future__ import annotations

import bisect
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

QUANTILE = 0.99
WINDOW = 128  # observations kept per (graph, batch size) and per timing component

T = TypeVar("T")


def tail(samples: Iterable[float], quantile: float = QUANTILE) -> float:
    """The ``quantile`` of ``samples``, ignoring the single largest once there are 8 or more:
    the k-th largest with k = max(ceil((1 - q) n), 2). 0.0 for no samples."""
    xs = sorted(samples)
    n = len(xs)
    if not n:
        return 0.0
    k = max(math.ceil(round((1 - quantile) * n, 9)), 2 if n >= 8 else 1)
    return xs[-min(k, n)]


class Window:
    """The last ``size`` observations of one quantity, and their :func:`tail`."""

    def __init__(self, size: int = WINDOW) -> None:
        self._xs: deque[float] = deque(maxlen=size)
        self._tail: float | None = None
        self._median: float | None = None

    def add(self, x: float) -> None:
        self._xs.append(x)
        self._tail = self._median = None

    def __len__(self) -> int:
        return len(self._xs)

    def clear(self) -> None:
        self._xs.clear()
        self._tail = self._median = None

    def replace(self, xs: Iterable[float]) -> None:
        """Forget every observation; keep ``xs`` instead."""
        self.clear()
        self._xs.extend(xs)

    @property
    def tail(self) -> float:
        if self._tail is None:
            self._tail = tail(self._xs)
        return self._tail

    @property
    def median(self) -> float:
        if self._median is None:
            self._median = statistics.median(self._xs) if self._xs else 0.0
        return self._median

    @property
    def mean(self) -> float:
        return sum(self._xs) / len(self._xs) if self._xs else 0.0


class LatencyModel:
    """Compute time per (graph, batch size bucket): measured at warm-up, then from every batch.

    ``key`` is whatever names a graph (an exit depth, or the all-exits graph). ``predict`` is the
    robust 99th percentile (or the median) of the bucket that covers the batch; a batch larger
    than every bucket is predicted as chunks of the largest.
    """

    def __init__(self, keys: Iterable[Hashable], batch_sizes: list[int]) -> None:
        self.keys = list(keys)
        self.batch_sizes = sorted(set(batch_sizes))
        self._windows: dict[tuple[Hashable, int], Window] = {}
        self._last: dict[tuple[Hashable, int], float] = {}  # perf_counter of its latest run
        self._lock = threading.Lock()

    def bucket(self, n: int) -> int:
        """The measured batch size that covers ``n`` images (smallest >= n, else the largest)."""
        i = bisect.bisect_left(self.batch_sizes, n)
        return self.batch_sizes[min(i, len(self.batch_sizes) - 1)]

    def observe(self, key: Hashable, n: int, ms: float) -> None:
        """Fold one measured run of ``n`` images into its bucket."""
        b = self.bucket(n)
        if n > b:  # larger than any bucket: scale to the bucket's size
            ms = ms * b / n
        with self._lock:
            self._windows.setdefault((key, b), Window()).add(ms)
            self._last[(key, b)] = time.perf_counter()

    def time(self, key: Hashable, n: int, run: Callable[[], T], runs: int) -> T:
        """Run ``run`` once untimed (allocations, caches), then ``runs`` times, each folded in
        as a run of ``key`` on ``n`` images; the last output (the first when ``runs`` is 0).
        The one timing loop of warm-up."""
        out = run()
        for _ in range(runs):
            start = time.perf_counter()
            out = run()
            self.observe(key, n, 1000 * (time.perf_counter() - start))
        return out

    def last_run(self, key: Hashable, b: int) -> float | None:
        """When bucket ``(key, b)`` last learned a run (perf_counter seconds); None: never."""
        with self._lock:
            return self._last.get((key, b))

    def replace(self, key: Hashable, b: int, samples: list[float]) -> None:
        """Bucket ``(key, b)`` forgets its observations and keeps ``samples`` (fresh runs)."""
        with self._lock:
            self._windows.setdefault((key, b), Window()).replace(samples)
            self._last[(key, b)] = time.perf_counter()

    def predict(self, key: Hashable, n: int, *, tail: bool = True) -> float:
        """Predicted ms to run ``n`` images of graph ``key``: the robust p99 of its bucket's
        recent batches, or (``tail=False``) their median, the typical time."""
        if n <= 0:
            return 0.0
        top = self.batch_sizes[-1]
        full, rest = divmod(n, top)
        total = full * self._stat(key, top, tail)
        if rest:
            total += self._stat(key, self.bucket(rest), tail)
        return total

    def _stat(self, key: Hashable, b: int, tail: bool) -> float:
        with self._lock:
            window = self._windows.get((key, b))
            if window is not None and len(window):
                return window.tail if tail else window.median
            # Unmeasured: the nearest measured smaller bucket, scaled up.
            smaller = [s for s in self.batch_sizes if s < b and (key, s) in self._windows]
            if not smaller:
                return math.inf
            w, s = self._windows[(key, smaller[-1])], smaller[-1]
            return (w.tail if tail else w.median) * b / s

    def rows(self) -> list[tuple[Hashable, int, float, float, float, int]]:
        """``(key, batch size, mean ms, median ms, predicted ms, samples)`` per measured bucket."""
        with self._lock:
            items = list(self._windows.items())
        return [(k, b, w.mean, w.median, w.tail, len(w)) for (k, b), w in items]
