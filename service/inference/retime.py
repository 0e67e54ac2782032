"""Re-timing what the scheduler passed over.

The latency table learns from the batches it runs, so a graph the scheduler stops choosing
stops being measured: a slow spell (a noisy neighbour, a burst of load) that inflated its times
would keep it unchosen — every budget served shallower than it could be — until a restart. So
the scheduler marks each (graph, batch size) it rejects as too slow for a budget
(:meth:`Retimer.pass_over`), and once such a bucket has gone ``after_s`` without a run, the
batcher's worker re-times it in idle moments: one timed run at a time, after IDLE_S without
work, on an input of the graph's shape kept from warm-up; ``runs`` fresh runs replace the
bucket's old observations. A server nobody asks for budgets re-times nothing.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Hashable

import numpy as np

from service.inference.latency import LatencyModel

log = logging.getLogger(__name__)
IDLE_S = 0.2  # the worker re-times only after this long without work


class Retimer:
    """The passed-over buckets, which one to re-time next and on what input. ``examples``
    holds one input row per graph key (uint8 images, or a segment's hidden state); keys
    without one are never re-timed."""

    def __init__(
        self,
        latency: LatencyModel,
        examples: dict[Hashable, np.ndarray],
        *,
        after_s: float,
        runs: int,
    ) -> None:
        self.latency, self.examples = latency, examples
        self.after_s, self.runs = after_s, runs
        self._passed: dict[tuple[Hashable, int], float] = {}  # bucket -> when passed over
        self._fresh: dict[tuple[Hashable, int], list[float]] = {}  # its re-timing runs so far

    def pass_over(self, key: Hashable, n: int) -> None:
        """The scheduler did not run ``key`` for ``n`` images: predicted too slow."""
        kb = (key, self.latency.bucket(n))
        last = self.latency.last_run(*kb)
        if key not in self.examples or last is None:
            return
        if self._passed.get(kb, last) < last:  # an older mark, and a run since: start over
            self.forget(*kb)
        self._passed.setdefault(kb, time.perf_counter())

    def _due(self) -> tuple[tuple[Hashable, int] | None, float]:
        """The passed-over bucket longest without a run, if due, and the seconds until one
        will be (inf: none waits). A bucket that ran since it was passed over is fresh."""
        for kb, marked in list(self._passed.items()):
            if (self.latency.last_run(*kb) or 0.0) > marked:
                self.forget(*kb)
        if not self._passed:
            return None, math.inf
        kb = min(self._passed, key=lambda k: self.latency.last_run(*k) or 0.0)
        wait = (self.latency.last_run(*kb) or 0.0) + self.after_s - time.perf_counter()
        return (kb, 0.0) if wait <= 0 else (None, wait)

    def forget(self, key: Hashable, b: int) -> None:
        """No re-timing of ``(key, b)`` (fresh, or its probe failed) until passed over again."""
        self._passed.pop((key, b), None)
        self._fresh.pop((key, b), None)

    def idle_wait_s(self) -> float:
        """How long the worker should stay idle before :meth:`probe` (inf: nothing to do)."""
        return max(IDLE_S, self._due()[1])

    def probe(self) -> tuple[Hashable, int, np.ndarray] | None:
        """The bucket due now, as ``(key, batch size, input)``; None when none is."""
        kb, _ = self._due()
        if kb is None:
            return None
        key, b = kb
        return key, b, np.repeat(self.examples[key], b, axis=0)

    def record(self, key: Hashable, b: int, ms: float) -> None:
        """One timed probe run of ``key`` at batch size ``b``; the ``runs``-th replaces the
        bucket's observations with the fresh ones."""
        kb = (key, b)
        if kb not in self._passed:
            return  # it ran meanwhile (or was forgotten): fresh already
        fresh = self._fresh.setdefault(kb, [])
        fresh.append(ms)
        if len(fresh) < self.runs:
            return
        before = self.latency.predict(key, b)
        self.latency.replace(key, b, fresh)
        self.forget(key, b)
        log.info("re-timed %s at batch %d (passed over, then idle): predicted %.2f -> %.2f ms",
                 key, b, before, self.latency.predict(key, b))  # fmt: skip
