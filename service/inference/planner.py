"""Latency budget → exit depth: pure functions of what is known when a request is planned.

A request's server-side time is what has passed since it arrived (parsing, decoding: known
exactly when the depth is chosen) + its wait for the batch it joins + that batch's compute + the
time from the batch's end to its response (copying rows, the FAISS search, encoding). Each
unknown part is predicted on its own, from its own measurements (:mod:`.latency`):

- compute: the robust p99 of the graph's batch times at that batch size;
- wait: the work queued ahead, plus ``max_wait_ms`` when the batcher will wait for company,
  plus the robust p99 of the wait predictions' recent errors;
- after: the robust p99 of the route's recent after-compute times.

The previous planner (``Calibration.GLOBAL``, kept for comparison in the benchmarks) padded
every prediction with one term: the 99th percentile of whole-request prediction errors.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from service.inference.latency import LatencyModel


@dataclass(frozen=True)
class QueueState:
    """What a request submitted now finds ahead: queued images per graph, the rest of the
    running batch, and whether other requests are on their way (the batcher then waits for
    company)."""

    pending: dict[Hashable, int]
    inflight_remaining_ms: float
    company: bool


@dataclass(frozen=True)
class Pads:
    """What the measurements say to add: to the wait, after the compute, and (the previous
    planner's rule) to the whole prediction."""

    wait_ms: float = 0.0
    after_ms: float = 0.0
    whole_ms: float = 0.0


@dataclass(frozen=True)
class Estimate:
    key: Hashable
    wait_ms: float  # predicted time from submission to the batch's start (uncalibrated)
    compute_ms: float
    total_ms: float  # elapsed so far + every part, calibrated: the prediction

    def fits(self, budget_ms: float) -> bool:
        return self.total_ms <= budget_ms


def estimate(
    *,
    model: LatencyModel,
    key: Hashable,
    n: int,
    queue: QueueState,
    elapsed_ms: float,
    max_wait_ms: float,
    pads: Pads,
) -> Estimate:
    """The predicted server-side time of ``n`` images on graph ``key`` submitted now."""
    ahead = queue.inflight_remaining_ms
    for other, count in queue.pending.items():
        if other != key:  # conservatively: every other graph's queue runs first
            ahead += model.predict(other, count)
    wait = ahead + (max_wait_ms if queue.company else 0.0)
    compute = model.predict(key, queue.pending.get(key, 0) + n)  # joining its queued batch
    total = elapsed_ms + wait + pads.wait_ms + compute + pads.after_ms + pads.whole_ms
    return Estimate(key, wait, compute, total)


def choose_depth(
    *,
    model: LatencyModel,
    exit_depths: list[int],
    budget_ms: float,
    n: int,
    queue: QueueState,
    elapsed_ms: float,
    max_wait_ms: float,
    pads: Pads,
) -> tuple[Estimate, bool]:
    """The deepest exit depth predicted to fit, and True; if none fits, the shallowest and
    False. Monotone: for one state, a larger budget never yields a shallower depth."""
    last = None
    for d in sorted(exit_depths, reverse=True):
        last = estimate(model=model, key=d, n=n, queue=queue, elapsed_ms=elapsed_ms,
                        max_wait_ms=max_wait_ms, pads=pads)  # fmt: skip
        if last.fits(budget_ms):
            return last, True
    assert last is not None, "no exit depths"
    return last, False
