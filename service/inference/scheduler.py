"""The Scheduler: the one component that decides what runs when.

It owns the per-graph queues (:class:`~.batcher.Batcher`), the latency model and its
calibration, and the count of inference requests in flight. A route admits a request
(:meth:`Scheduler.admit`) as soon as it starts parsing, then hands over its decoded images with
a target — an ``exit_depth``, a ``budget_ms``, or every exit — and gets back what was served and
how long it was predicted to take; :meth:`Scheduler.answered` closes the loop once the response
is ready, feeding the calibration and producing the response's timing block. ``exit_depth`` and
``budget_ms`` keep their names from the route to the onnxruntime session.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from service.inference.batcher import Batcher, BatchRecord, Ran
from service.inference.calibration import Calibration, Mode
from service.inference.latency import LatencyModel
from service.inference.planner import choose_depth, estimate
from service.inference.retime import Retimer


@dataclass(frozen=True)
class Served:
    """What a request got: rows (``[N, D]``, or ``[L, N, D]`` for every exit) and its plan."""

    output: np.ndarray | None  # None: nothing to compute (a search by vector)
    exit_depth: int | None  # None: every exit (the all-exits graph)
    budget_ms: float | None
    predicted_ms: float
    fits: bool  # a depth was predicted to fit the budget (always True without one)
    arrival: float  # time.perf_counter() seconds
    decided: float  # when the depth was chosen
    raw_remaining_ms: float  # the uncalibrated prediction of what followed ``decided``
    in_flight: int  # inference requests in flight when it was decided (this one included)
    ran: Ran | None
    lane: str = ""  # what the calibration learns this request's timing as (route[:anytime])
    raw: np.ndarray | None = None  # the exit's own rows, before the bridge (``output``'s shape)


class Admission:
    """One inference request in flight, from its ``arrival`` (``time.perf_counter()`` seconds,
    when its headers were read: its budget counts from there) until it ends; "upstream" (not
    yet at the batcher, which waits for company only while such requests exist) until it
    submits."""

    def __init__(self, scheduler: Scheduler, arrival: float) -> None:
        self.arrival = arrival
        self._scheduler, self._upstream, self._open = scheduler, True, True
        scheduler.batcher.upstream += 1
        scheduler.in_flight += 1

    def submitted(self) -> None:
        if self._upstream:
            self._upstream = False
            self._scheduler.batcher.upstream -= 1

    def close(self) -> None:
        self.submitted()
        if self._open:
            self._open = False
            self._scheduler.in_flight -= 1


class Scheduler:
    def __init__(
        self,
        run: Callable[[Hashable, np.ndarray], np.ndarray],
        latency: LatencyModel,
        exit_depths: list[int],
        all_exits: Hashable,
        *,
        max_batch: int,
        max_wait_ms: float,
        queue_bound: int,
        calibration: Mode = Mode.COMPONENTS,
        on_batch: Callable[[BatchRecord], None] | None = None,
        run_segment: Callable[[Hashable, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
        segments: list[Hashable] | None = None,
        examples: dict[Hashable, np.ndarray] | None = None,
        retime_after_s: float = 0.0,
        retime_runs: int = 3,
        split: int | None = None,
    ) -> None:
        """``split``: the graphs' rows are ``[..., searchable | raw]`` (the engine packs both
        outputs in one array, so batches and cohorts carry them together); a request's
        ``Served.output`` gets the first ``split`` columns, ``Served.raw`` the rest."""
        self.split = split
        self.latency, self.exit_depths, self.all_exits = latency, list(exit_depths), all_exits
        # Graphs a budget passed over are re-timed when idle (given inputs to time them on).
        self.retimer = (
            Retimer(latency, examples, after_s=retime_after_s, runs=retime_runs)
            if examples and retime_after_s > 0
            else None
        )
        self.max_wait_ms = max_wait_ms
        self.calibration = Calibration(calibration)
        self.in_flight = 0  # admitted inference requests not yet ended
        # Budgets run block by block when the bundle has segments (and they are not turned off).
        self.anytime = bool(segments) and run_segment is not None
        self.batcher = Batcher(run, latency, max_batch=max_batch, max_wait_ms=max_wait_ms,
                               queue_bound=queue_bound, on_batch=on_batch,
                               run_segment=run_segment, segments=segments,
                               exit_depths=exit_depths, retimer=self.retimer)  # fmt: skip

    def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        await self.batcher.close()

    def admit(self, arrival: float) -> Admission:
        """A request arrived at ``arrival`` and will ask for inference."""
        return Admission(self, arrival)

    async def run(
        self,
        images: np.ndarray,
        *,
        admission: Admission,
        route: str,
        exit_depth: int | None = None,
        budget_ms: float | None = None,
        all_exits: bool = False,
    ) -> Served:
        """Plan (the deepest depth predicted to fit ``budget_ms``; else ``exit_depth``; else the
        deepest; or every exit), submit, and wait for the rows. Raises ``Overloaded``.

        With segments, a budget runs block by block instead (:mod:`.anytime`): the depth is
        decided at every block boundary, with the time actually spent."""
        arrival = admission.arrival
        if budget_ms is not None and not all_exits and self.anytime:
            return await self._anytime(images, admission, route, budget_ms)
        now, in_flight = time.perf_counter(), self.in_flight
        pads = self.calibration.pads(route, in_flight)
        queue = self.batcher.state()
        elapsed_ms = 1000 * (now - arrival)
        common = dict(model=self.latency, n=len(images), queue=queue, elapsed_ms=elapsed_ms,
                      max_wait_ms=self.max_wait_ms, pads=pads)  # fmt: skip
        fits = True
        if all_exits:
            est = estimate(key=self.all_exits, **common)
        elif budget_ms is not None:
            est, fits = choose_depth(exit_depths=self.exit_depths, budget_ms=budget_ms, **common)
            # The deeper depths were predicted not to fit. When even the shallowest does not,
            # the budget is below the table, not the table wrong: nothing to re-time for it.
            if self.retimer is not None and fits:
                for d in self.exit_depths:
                    if d > est.key:
                        self.retimer.pass_over(d, queue.pending.get(d, 0) + len(images))
        else:
            d = exit_depth if exit_depth is not None else self.exit_depths[-1]
            est = estimate(key=d, **common)
        admission.submitted()
        ran = await self.batcher.submit(est.key, images)
        output, raw = self._unpack(ran.rows)
        return Served(
            output=output,
            raw=raw,
            exit_depth=None if all_exits else int(est.key),
            budget_ms=budget_ms,
            predicted_ms=est.total_ms,
            fits=fits,
            arrival=arrival,
            decided=now,
            raw_remaining_ms=est.wait_ms + est.compute_ms,
            in_flight=in_flight,
            ran=ran,
            lane=route,
        )

    def _unpack(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.split is None:
            return rows, None
        return rows[..., : self.split], rows[..., self.split :]

    async def _anytime(
        self, images: np.ndarray, admission: Admission, route: str, budget_ms: float
    ) -> Served:
        arrival, lane, in_flight = admission.arrival, f"{route}:anytime", self.in_flight
        reserve_ms = self.calibration.pads(lane, in_flight).remaining_ms
        admission.submitted()
        left = await self.batcher.submit_anytime(
            images, deadline=arrival + budget_ms / 1000, reserve_s=reserve_ms / 1000
        )
        ran = Ran(left.rows, left.enqueued, left.started, left.decided, left.batch_size)
        output, raw = self._unpack(left.rows)
        return Served(
            output=output,
            raw=raw,
            exit_depth=left.exit_depth,
            budget_ms=budget_ms,
            predicted_ms=1000 * (left.decided - arrival) + reserve_ms,
            fits=left.fits,
            arrival=arrival,
            decided=left.decided,
            raw_remaining_ms=0.0,  # what follows leaving is the response alone
            in_flight=in_flight,
            ran=ran,
            lane=lane,
        )

    def without_compute(self, *, admission: Admission, route: str, exit_depth: int) -> Served:
        """A request that runs no graph (a search by vector): only its response is ahead."""
        admission.submitted()
        now, in_flight, arrival = time.perf_counter(), self.in_flight, admission.arrival
        pads = self.calibration.pads(route, in_flight)
        predicted = 1000 * (now - arrival) + pads.remaining_ms + pads.whole_ms
        return Served(None, exit_depth, None, predicted, True, arrival, now, 0.0, in_flight, None,
                      route)  # fmt: skip

    def answered(self, served: Served, *, route: str) -> dict[str, float | bool | None]:
        """The response is ready: learn from this request and return its timing block."""
        now = time.perf_counter()
        elapsed = 1000 * (now - served.arrival)
        remaining = 1000 * (now - served.decided)
        raw_whole = 1000 * (served.decided - served.arrival) + served.raw_remaining_ms
        self.calibration.observe(
            served.lane or route,
            in_flight=served.in_flight,
            remaining_error_ms=remaining - served.raw_remaining_ms,
            whole_error_ms=elapsed - raw_whole,
        )
        budget, predicted = served.budget_ms, served.predicted_ms
        return {
            "budget_ms": budget,
            "predicted_ms": round(predicted, 3) if math.isfinite(predicted) else None,
            "elapsed_ms": round(elapsed, 3),
            "budget_met": None if budget is None else served.fits and elapsed <= budget,
            "batch_size": served.ran.batch_size if served.ran is not None else None,
        }

    def table(self) -> list[dict[str, object]]:
        """The latency table for /v1/model: one row per measured (graph, batch size)."""
        rows = []
        for key, b, mean, median, predicted, samples in self.latency.rows():
            if key == self.all_exits:
                depth, graph = None, "all_exits"
            elif isinstance(key, int):
                depth, graph = key, f"exit_{key:02d}"
            else:  # a segment: the blocks that end at its exit depth
                depth, graph = key.last, f"segment_{key.last - 1:02d}_{key.last:02d}"
            rows.append({"exit_depth": depth, "graph": graph, "batch_size": b,
                         "mean_ms": round(mean, 3), "median_ms": round(median, 3),
                         "predicted_ms": round(predicted, 3),
                         "samples": samples})  # fmt: skip
        return sorted(rows, key=lambda r: (r["exit_depth"] is None, r["exit_depth"] or 0,
                                           r["graph"], r["batch_size"]))  # fmt: skip
