"""Dynamic batching: one queue per graph (an exit depth, or the all-exits graph), cohorts that run
block by block (:mod:`.anytime`), and one compute worker.

Requests enqueue work; a single worker task picks the most urgent unit — least slack first: a
cohort by the latest moment its next block can start for its tightest rider to reach the next
exit in time, a graph batch by when its oldest job would finish if started now — forms batches
up to ``max_batch`` images, waits at most ``max_wait_ms`` for company while more requests are on
their way (``upstream``), and runs one
graph (or one segment) at a time on one thread off the event loop (onnxruntime uses every core
for one batch; two at once would only fight). The queue is bounded: beyond ``queue_bound``
waiting images a request is refused with :class:`Overloaded` (503 + Retry-After). The batcher
knows nothing of budgets beyond deadlines: choosing depths is the scheduler's business. Idle,
the worker re-times what was passed over (:mod:`.retime`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.inference.anytime import Cohort, Left, Rider
from service.inference.latency import LatencyModel
from service.inference.planner import QueueState
from service.inference.retime import Retimer

log = logging.getLogger(__name__)
GROUP_COST = 1.5  # images ride one cohort while a block costs at most this x one image's
INLINE_MS = 2.0  # a run predicted this short, with nothing else waiting, runs on the loop itself


class Overloaded(Exception):
    """The queue is full; ``retry_after_s`` estimates when there will be room."""

    def __init__(self, retry_after_s: int, why: str = "server busy") -> None:
        super().__init__(f"{why}; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass
class Job:
    key: Hashable
    images: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Ran:
    """One job's result and when its batch ran (``time.perf_counter`` seconds)."""

    rows: np.ndarray
    enqueued: float
    started: float
    finished: float
    batch_size: int


@dataclass
class BatchRecord:
    key: Hashable
    size: int
    ms: float


class Batcher:
    """Queues, cohorts, the worker task, and the queue state the planner reads."""

    def __init__(
        self,
        run: Callable[[Hashable, np.ndarray], np.ndarray],
        latency: LatencyModel,
        *,
        max_batch: int,
        max_wait_ms: float,
        queue_bound: int,
        on_batch: Callable[[BatchRecord], None] | None = None,
        run_segment: Callable[[Hashable, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
        segments: list[Hashable] | None = None,
        exit_depths: list[int] | None = None,
        retimer: Retimer | None = None,
    ) -> None:
        self._run, self.latency, self.retimer = run, latency, retimer
        self._run_segment, self.segments = run_segment, list(segments or [])
        self.exit_depths = list(exit_depths or range(1, len(self.segments) + 1))
        self.max_batch, self.max_wait_s, self.queue_bound = (
            max_batch,
            max_wait_ms / 1000,
            queue_bound,
        )
        self._on_batch = on_batch
        self._queues: dict[Hashable, deque[Job]] = {}
        self._pending: dict[Hashable, int] = {}
        self._cohorts: list[Cohort] = []
        self._total = 0
        self._inflight: tuple[float, float] | None = None  # (started, predicted ms)
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self._task: asyncio.Task | None = None
        self._closed = False
        # Inference requests admitted but not yet submitted (parsing, decoding), counted by
        # their Admission. Waiting for company only pays when some are on their way.
        self.upstream = 0

    @property
    def queued_images(self) -> int:
        return self._total

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker(), name="batcher")

    async def close(self) -> None:
        """Stop taking work, let queued work finish, then stop the worker."""
        self._closed = True
        deadline = time.monotonic() + 60
        while (self._total or self._inflight) and time.monotonic() < deadline:
            if self._task is not None and self._task.done():
                break  # the worker is gone: nothing will drain the queue
            await asyncio.sleep(0.005)
        futures = [j.future for q in self._queues.values() for j in q]
        futures += [r.future for c in self._cohorts for r in c.riders]
        for future in futures:  # whatever is left is refused, never left hanging
            if not future.done():
                future.set_exception(Overloaded(1))
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    def state(self) -> QueueState:
        """What a request submitted now would find ahead of it."""
        remaining = 0.0
        if self._inflight is not None:
            started, predicted = self._inflight
            remaining = max(0.0, predicted - 1000 * (time.perf_counter() - started))
        for c in self._cohorts:  # at most the rest of the way down, cautiously
            remaining += sum(self.latency.predict(s, c.images) for s in self.segments[c.depth :])
        return QueueState(
            pending=dict(self._pending),
            inflight_remaining_ms=remaining,
            company=self.upstream > 1,  # someone besides the asker is on the way
        )

    def _admit(self, n: int) -> None:
        if self._closed:
            raise Overloaded(1)
        if self._total and self._total + n > self.queue_bound:
            raise Overloaded(self._retry_after(), f"more than {self.queue_bound} images wait to "
                             "run (SDSSL_QUEUE_BOUND)")  # fmt: skip

    async def submit(self, key: Hashable, images: np.ndarray) -> Ran:
        """Queue ``images`` for graph ``key`` and wait for its rows (or raise Overloaded)."""
        self._admit(len(images))
        job = Job(key, images, asyncio.get_running_loop().create_future())
        self._queues.setdefault(key, deque()).append(job)
        self._pending[key] = self._pending.get(key, 0) + len(images)
        self._total += len(images)
        self._wake.set()
        return await job.future

    async def submit_anytime(
        self, images: np.ndarray, *, deadline: float, reserve_s: float
    ) -> Left:
        """Ride ``images`` through the segments until ``deadline`` (minus ``reserve_s``) or
        the last block; the embeddings of the depth reached (or raise Overloaded)."""
        self._admit(len(images))
        rider = Rider(images, deadline, reserve_s, asyncio.get_running_loop().create_future())
        last = self._cohorts[-1] if self._cohorts else None
        waiting = last if last is not None and last.started is None else None  # not yet running
        if waiting is None or not self._may_ride_together(waiting.images + len(images)):
            waiting = Cohort(self.exit_depths)
            self._cohorts.append(waiting)
        waiting.riders.append(rider)
        self._total += len(images)
        self._wake.set()
        return await rider.future

    def _may_ride_together(self, images: int) -> bool:
        """Whether a cohort of ``images`` is worth forming: within ``max_batch``, and a block
        at that size costing at most GROUP_COST x a block of one image — everyone waits for
        the slowest block in a cohort (and a tight request for one block of any cohort), so
        images ride together only where batching is nearly free (a GPU), not where cost grows
        with the batch (a CPU)."""
        if images > self.max_batch:
            return False
        first = self.segments[0]  # typical costs: a tail from a few samples is too noisy here
        typical = self.latency.predict(first, images, tail=False)
        return typical <= GROUP_COST * self.latency.predict(first, 1, tail=False)

    def _retry_after(self) -> int:
        state = self.state()
        ahead = state.inflight_remaining_ms + sum(
            self.latency.predict(k, c) for k, c in state.pending.items()
        )
        return max(1, math.ceil(ahead / 1000)) if math.isfinite(ahead) else 1

    # ---- the worker ------------------------------------------------------------------------
    def _most_urgent(self) -> Hashable | Cohort | None:
        """Earliest deadline first: a cohort's is its tightest rider's; a graph queue is due
        when its oldest job would finish if started now."""
        candidates: list[tuple[float, float, Hashable | Cohort]] = []
        for key, queue in self._queues.items():
            if queue:
                head = queue[0]
                due = head.enqueued + self.latency.predict(key, len(head.images)) / 1000
                candidates.append((due, head.enqueued, key))  # unmeasured graphs: by age
        for cohort in self._cohorts:
            if cohort.riders:
                candidates.append((cohort.latest_start(self._cost_s), cohort.oldest, cohort))
        return min(candidates, key=lambda c: c[:2])[2] if candidates else None

    async def _worker(self) -> None:
        while True:
            try:
                await self._work_once()
            except Exception:  # a bug here must not leave every later request hanging
                log.exception("the batcher's worker failed; failing the work it held")
                self._fail_everything(RuntimeError("internal error in the batcher"))

    def _fail_everything(self, exc: Exception) -> None:
        for q in self._queues.values():
            while q:
                job = q.popleft()
                if not job.future.done():
                    job.future.set_exception(exc)
        for c in self._cohorts:
            for r in c.riders:
                if not r.future.done():
                    r.future.set_exception(exc)
        self._queues.clear()
        self._pending.clear()
        self._cohorts.clear()
        self._total = 0

    async def _work_once(self) -> None:
        unit = self._most_urgent()
        if unit is None:
            await self._idle()
        elif isinstance(unit, Cohort):
            await self._step(unit)
        else:
            await self._batch(unit)

    async def _idle(self) -> None:
        """Wait for work; with none for a while, re-time one passed-over bucket (one run)."""
        self._wake.clear()
        retimer = self.retimer
        wait = retimer.idle_wait_s() if retimer is not None else math.inf
        if retimer is None or math.isinf(wait):
            await self._wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), wait)
            return  # work came
        probe = retimer.probe()
        if probe is None or self.upstream or self._total:
            return
        key, b, x = probe
        fn = self._run_segment if key in self.segments else self._run

        def compute_ms() -> float:
            """One run as warm-up times it: after an untimed one (an idle machine's first run
            pays for cold caches; docs/architecture.md), no thread hop in the time."""
            fn(key, x)
            started = time.perf_counter()
            fn(key, x)
            return 1000 * (time.perf_counter() - started)

        self._inflight = (time.perf_counter(), self.latency.predict(key, b))
        try:
            ms = await asyncio.get_running_loop().run_in_executor(self._executor, compute_ms)
        except Exception:
            log.exception("re-timing %s at batch %d failed", key, b)
            retimer.forget(key, b)
            return
        finally:
            self._inflight = None
        retimer.record(key, b, ms)

    async def _wait_for_company(self, images: int, oldest: float) -> bool:
        """Wait (at most until ``oldest`` is max_wait old) when the batch is not full and
        other requests are on their way; True if it waited."""
        age = time.perf_counter() - oldest
        if self.upstream > 0 and images < self.max_batch and age < self.max_wait_s:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.max_wait_s - age)
            return True
        return False

    async def _timed(self, key: Hashable, fn: Callable, *args: object) -> tuple[object, float]:
        """Run one graph off the event loop; its result and when it finished."""
        n = len(args[0])  # type: ignore[arg-type]
        predicted = self.latency.predict(key, n)
        self._inflight = (time.perf_counter(), predicted)
        started = time.perf_counter()
        try:
            if predicted <= INLINE_MS and not self.upstream and not self._total:
                out = fn(key, *args)  # alone and tiny: two thread hops would cost more
            else:
                loop = asyncio.get_running_loop()
                out = await loop.run_in_executor(self._executor, fn, key, *args)
        finally:
            self._inflight = None
        finished = time.perf_counter()
        ms = 1000 * (finished - started)
        self.latency.observe(key, n, ms)
        if self._on_batch:
            self._on_batch(BatchRecord(key, n, ms))
        return out, finished

    async def _batch(self, key: Hashable) -> None:
        if await self._wait_for_company(self._pending.get(key, 0), self._queues[key][0].enqueued):
            return
        jobs = self._take(key)
        jobs = [j for j in jobs if not j.future.cancelled()]
        if not jobs:
            return
        batch = np.concatenate([j.images for j in jobs]) if len(jobs) > 1 else jobs[0].images
        started = time.perf_counter()
        try:
            out, finished = await self._timed(key, self._run, batch)
        except Exception as exc:  # a failed run fails its requests, never the worker
            log.exception("batch of %d on graph %s failed", len(batch), key)
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(exc)
            return
        offset = 0
        for j in jobs:
            n = len(j.images)
            rows = out[offset : offset + n] if out.ndim == 2 else out[:, offset : offset + n]
            offset += n
            if not j.future.done():
                j.future.set_result(Ran(rows, j.enqueued, started, finished, len(batch)))

    def _take(self, key: Hashable) -> list[Job]:
        queue, jobs, size = self._queues[key], [], 0
        while queue and (not jobs or size + len(queue[0].images) <= self.max_batch):
            job = queue.popleft()
            jobs.append(job)
            size += len(job.images)
        self._pending[key] -= size
        if not self._pending[key]:
            del self._pending[key]
        self._total -= size
        return jobs

    async def _step(self, cohort: Cohort) -> None:
        """One segment of a cohort, with riders leaving before (if it was put aside) and after."""
        if (
            cohort.depth == 0
            and self._may_ride_together(cohort.images + 1)
            and await self._wait_for_company(cohort.images, cohort.oldest)
        ):
            return
        self._release(cohort)  # a rider that can no longer afford the next block leaves now
        if cohort.riders:
            segment = self.segments[cohort.depth]
            x = cohort.input()
            try:
                (hidden, embedding), _ = await self._timed(segment, self._run_segment, x)
            except Exception as exc:
                log.exception("segment %s of a cohort of %d failed", segment, len(x))
                for r in cohort.riders:
                    if not r.future.done():
                        r.future.set_exception(exc)
                self._total -= cohort.images
                cohort.riders.clear()
            else:
                cohort.advance(hidden, embedding)
                self._release(cohort)
        if not cohort.riders:
            self._cohorts.remove(cohort)

    def _cost_s(self, first: int, last: int, images: int) -> float:
        """Predicted seconds of blocks first+1..last for ``images``."""
        return sum(self.latency.predict(s, images) for s in self.segments[first:last]) / 1000

    def _release(self, cohort: Cohort) -> None:
        images = cohort.images
        leaving = cohort.leave(time.perf_counter(), self._cost_s)
        for rider, left in leaving:
            self._total -= len(rider.images)
            if not rider.future.done():
                rider.future.set_result(left)
        passed_over = any(left.fits for _, left in leaving)  # a late rider's says nothing
        if passed_over and self.retimer is not None and cohort.depth < cohort.max_depth:
            for segment in self.segments[cohort.depth : cohort.next_exit()]:  # too slow, it said
                self.retimer.pass_over(segment, images)
