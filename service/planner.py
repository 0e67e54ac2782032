"""Latency budget → exit depth.

``LatencyModel`` predicts compute time per (exit depth, batch size) from warm-up runs, updated
online from every real batch (EWMA of the mean and of the absolute deviation; the prediction is
mean + 2 deviations, a p95-like bound). ``choose_depth`` picks the deepest exit depth whose
predicted queue wait + compute + response overhead fits the budget.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass


class LatencyModel:
    """Predicted milliseconds per (key, batch size); key is an exit depth (or 0: all exits)."""

    def __init__(self, keys: list[int], batch_sizes: list[int], alpha: float = 0.2) -> None:
        self.batch_sizes = sorted(set(batch_sizes))
        self.alpha = alpha
        self._mean: dict[tuple[int, int], float] = {}
        self._dev: dict[tuple[int, int], float] = {}
        self._count: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()
        self.keys = list(keys)

    def bucket(self, n: int) -> int:
        """The measured batch size that covers ``n`` images (smallest >= n, else the largest)."""
        i = bisect.bisect_left(self.batch_sizes, n)
        return self.batch_sizes[min(i, len(self.batch_sizes) - 1)]

    def observe(self, key: int, n: int, ms: float) -> None:
        """Fold one measured run of ``n`` images into its bucket."""
        b = self.bucket(n)
        if n > b:  # larger than any bucket: scale to the bucket's size
            ms = ms * b / n
        k = (key, b)
        with self._lock:
            if k not in self._mean:
                self._mean[k], self._dev[k], self._count[k] = ms, 0.1 * ms, 1
                return
            err = ms - self._mean[k]
            self._mean[k] += self.alpha * err
            self._dev[k] += self.alpha * (abs(err) - self._dev[k])
            self._count[k] += 1

    def predict(self, key: int, n: int) -> float:
        """Predicted ms to run ``n`` images at ``key`` (chunks of the largest bucket)."""
        if n <= 0:
            return 0.0
        top = self.batch_sizes[-1]
        full, rest = divmod(n, top)
        total = full * self._bound(key, top)
        if rest:
            total += self._bound(key, self.bucket(rest))
        return total

    def _bound(self, key: int, b: int) -> float:
        with self._lock:
            mean = self._mean.get((key, b))
            if mean is None:  # unmeasured: the nearest measured smaller bucket, scaled up
                smaller = [s for s in self.batch_sizes if s < b and (key, s) in self._mean]
                if not smaller:
                    return float("inf")
                s = smaller[-1]
                return (self._mean[(key, s)] + 2 * self._dev[(key, s)]) * b / s
            return mean + 2 * self._dev[(key, b)]

    def table(self) -> list[dict[str, float | int]]:
        """Rows ``{exit_depth, batch_size, mean_ms, predicted_ms, samples}`` for /v1/model."""
        with self._lock:
            items = sorted(self._mean.items())
        return [
            {
                "exit_depth": key,
                "batch_size": b,
                "mean_ms": round(mean, 3),
                "predicted_ms": round(self._bound(key, b), 3),
                "samples": self._count[(key, b)],
            }
            for (key, b), mean in items
        ]


@dataclass(frozen=True)
class QueueState:
    """What is ahead of a new request: pending images per key and the running batch's rest."""

    pending: dict[int, int]
    inflight_remaining_ms: float
    idle: bool  # nothing running or queued: a new batch waits max_wait for company


@dataclass(frozen=True)
class Plan:
    exit_depth: int
    predicted_ms: float
    fits: bool


def predict_ms(
    model: LatencyModel,
    exit_depth: int,
    n: int,
    queue: QueueState,
    max_wait_ms: float,
    elapsed_ms: float,
    overhead_ms: float,
) -> float:
    """Elapsed so far + work ahead (every key's pending images, this key's including ours)
    + the batch wait + response overhead."""
    ahead = queue.inflight_remaining_ms
    for key, count in queue.pending.items():
        if key != exit_depth:
            ahead += model.predict(key, count)
    ahead += model.predict(exit_depth, queue.pending.get(exit_depth, 0) + n)
    wait = max_wait_ms if queue.idle else 0.0
    return elapsed_ms + ahead + wait + overhead_ms


def choose_depth(
    model: LatencyModel,
    exit_depths: list[int],
    budget_ms: float,
    n: int,
    queue: QueueState,
    max_wait_ms: float,
    elapsed_ms: float,
    overhead_ms: float,
) -> Plan:
    """The deepest exit depth predicted to fit; if none fits, the shallowest, ``fits=False``.

    Monotone: for one queue state, a larger budget never yields a shallower depth.
    """
    shallowest = None
    for d in sorted(exit_depths, reverse=True):
        p = predict_ms(model, d, n, queue, max_wait_ms, elapsed_ms, overhead_ms)
        if p <= budget_ms:
            return Plan(d, p, True)
        shallowest = Plan(d, p, False)
    assert shallowest is not None
    return shallowest
