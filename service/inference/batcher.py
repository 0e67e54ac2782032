"""Dynamic batching: one queue per graph (an exit depth, or the all-exits graph), one worker.

Requests enqueue jobs; a single worker task forms batches — the graph whose oldest job is oldest
goes next, taking jobs up to ``max_batch`` images, waiting at most ``max_wait_ms`` for company
while more requests are on their way (``upstream``) — and runs them on one thread off the event
loop (onnxruntime uses every core for one batch; two batches at once would only fight). The
queue is bounded: beyond ``queue_bound`` waiting images a request is refused with
:class:`Overloaded` (503 + Retry-After). The batcher knows nothing of budgets: that is the
scheduler's business (:mod:`service.inference.scheduler`).
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

from service.inference.latency import LatencyModel
from service.inference.planner import QueueState

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue is full; ``retry_after_s`` estimates when there will be room."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"server busy; retry after {retry_after_s} s")
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
    """Queues, the worker task, and the queue state the planner reads."""

    def __init__(
        self,
        run: Callable[[Hashable, np.ndarray], np.ndarray],
        latency: LatencyModel,
        *,
        max_batch: int,
        max_wait_ms: float,
        queue_bound: int,
        on_batch: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        self._run, self.latency = run, latency
        self.max_batch, self.max_wait_s, self.queue_bound = (
            max_batch,
            max_wait_ms / 1000,
            queue_bound,
        )
        self._on_batch = on_batch
        self._queues: dict[Hashable, deque[Job]] = {}
        self._pending: dict[Hashable, int] = {}
        self._total = 0
        self._inflight: tuple[float, float] | None = None  # (started, predicted ms)
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self._task: asyncio.Task | None = None
        self._closed = False
        self._outstanding = 0  # submitted jobs not yet answered
        # Inference requests admitted but not yet submitted (parsing, decoding): the scheduler
        # counts them. Waiting for company only pays when some are on their way.
        self.upstream: Callable[[], int] = lambda: 0

    @property
    def queued_images(self) -> int:
        return self._total

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker(), name="batcher")

    async def close(self) -> None:
        """Stop taking work, let queued jobs finish, then stop the worker."""
        self._closed = True
        deadline = time.monotonic() + 60
        while (self._total or self._inflight) and time.monotonic() < deadline:
            if self._task is not None and self._task.done():
                break  # the worker is gone: nothing will drain the queue
            await asyncio.sleep(0.005)
        for queue in self._queues.values():  # whatever is left is refused, never left hanging
            while queue:
                job = queue.popleft()
                if not job.future.done():
                    job.future.set_exception(Overloaded(1))
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
        return QueueState(
            pending=dict(self._pending),
            inflight_remaining_ms=remaining,
            company=self.upstream() > 1,  # someone besides the asker is on the way
        )

    async def submit(self, key: Hashable, images: np.ndarray) -> Ran:
        """Queue ``images`` for graph ``key`` and wait for its rows (or raise Overloaded)."""
        n = len(images)
        if self._closed:
            raise Overloaded(1)
        if self._total and self._total + n > self.queue_bound:
            raise Overloaded(self._retry_after())
        job = Job(key, images, asyncio.get_running_loop().create_future())
        self._queues.setdefault(key, deque()).append(job)
        self._pending[key] = self._pending.get(key, 0) + n
        self._total += n
        self._outstanding += 1
        self._wake.set()
        try:
            return await job.future
        finally:
            self._outstanding -= 1

    def _retry_after(self) -> int:
        state = self.state()
        ahead = state.inflight_remaining_ms + sum(
            self.latency.predict(k, c) for k, c in state.pending.items()
        )
        return max(1, math.ceil(ahead / 1000)) if math.isfinite(ahead) else 1

    def _next_key(self) -> Hashable | None:
        heads = [(q[0].enqueued, k) for k, q in self._queues.items() if q]
        return min(heads)[1] if heads else None

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

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            key = self._next_key()
            if key is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            # Wait for company while the batch is not full, its oldest job is young enough, and
            # other requests are on their way (no one to wait for at concurrency 1).
            head_age = time.perf_counter() - self._queues[key][0].enqueued
            company = self.upstream() > 0
            if (
                company
                and self._pending.get(key, 0) < self.max_batch
                and head_age < self.max_wait_s
            ):
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.max_wait_s - head_age)
                continue
            jobs = self._take(key)
            jobs = [j for j in jobs if not j.future.cancelled()]
            if not jobs:
                continue
            batch = np.concatenate([j.images for j in jobs]) if len(jobs) > 1 else jobs[0].images
            self._inflight = (time.perf_counter(), self.latency.predict(key, len(batch)))
            started = time.perf_counter()
            try:
                out = await loop.run_in_executor(self._executor, self._run, key, batch)
            except Exception as exc:  # a failed run fails its requests, never the worker
                log.exception("batch of %d on graph %s failed", len(batch), key)
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            finally:
                self._inflight = None
            finished = time.perf_counter()
            ms = 1000 * (finished - started)
            self.latency.observe(key, len(batch), ms)
            if self._on_batch:
                self._on_batch(BatchRecord(key, len(batch), ms))
            offset = 0
            for j in jobs:
                n = len(j.images)
                rows = out[offset : offset + n] if out.ndim == 2 else out[:, offset : offset + n]
                offset += n
                if not j.future.done():
                    j.future.set_result(Ran(rows, j.enqueued, started, finished, len(batch)))
