"""Latency budget → exit depth: pure functions of what is known when a request is planned —
the one depth policy, asked once per request for a whole graph (:func:`choose_depth`) and at
every segment boundary by an anytime cohort (:func:`goes_on`). Both apply one rule
(:func:`in_time`): work fits when it is predicted to end, response included, by the deadline.

A request's server-side time is what has passed since it arrived (parsing, decoding: known
exactly when the depth is chosen) + what remains: its wait for the batch it joins, that batch's
compute, and the time from the batch's end to its response. The raw prediction of the remainder
is the work queued ahead (+ ``max_wait_ms`` when the batcher will wait for company) + the
graph's batch time at the batch size it joins (:mod:`.latency`); the calibration
(:mod:`.calibration`) adds what those measurements cannot see.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from service.inference.latency import LatencyModel


def in_time(predicted_end: float, deadline: float) -> bool:
    """The rule of every depth decision: what is predicted to end (response included) by the
    deadline fits. Times in one unit: seconds on ``time.perf_counter()``, or ms since arrival."""
    return predicted_end <= deadline


def goes_on(*, now: float, reach_s: float, reserve_s: float, deadline: float) -> bool:
    """Anytime, at a segment boundary: a request goes on to the next exit depth when reaching it
    (``reach_s``, predicted at the cohort's size) and then answering (``reserve_s``) fits;
    otherwise it leaves with the last exit depth passed. Monotone like :func:`choose_depth`:
    a later deadline never leaves earlier."""
    return in_time(now + reach_s + reserve_s, deadline)


def latest_start(*, reach_s: float, reserve_s: float, deadline: float) -> float:
    """When work of ``reach_s`` must start at the latest for :func:`goes_on` to hold."""
    return deadline - reserve_s - reach_s


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
    """What the calibration adds to the raw prediction: to the remainder (the learned error of
    wait + compute + response at this load) or, the previous planner's rule, to the whole."""

    remaining_ms: float = 0.0
    whole_ms: float = 0.0
    compute_tail: bool = False  # compute at its p99 (else its mean) in the raw prediction


@dataclass(frozen=True)
class Estimate:
    key: Hashable
    wait_ms: float  # raw: from submission to the batch's start
    compute_ms: float  # raw: the batch's compute
    total_ms: float  # elapsed so far + raw remainder + pads: the prediction

    def fits(self, budget_ms: float) -> bool:
        return in_time(self.total_ms, budget_ms)


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
    tail = pads.compute_tail
    ahead = queue.inflight_remaining_ms
    for other, count in queue.pending.items():
        if other != key:  # conservatively: every other graph's queue runs first
            ahead += model.predict(other, count, tail=tail)
    wait = ahead + (max_wait_ms if queue.company else 0.0)
    compute = model.predict(key, queue.pending.get(key, 0) + n, tail=tail)  # joins its batch
    total = elapsed_ms + wait + compute + pads.remaining_ms + pads.whole_ms
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
