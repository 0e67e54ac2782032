"""Anytime execution: a batch that runs block by block and lets each request leave at its own
deadline — continuous batching over depth.

Requests with a budget ride in a :class:`Cohort`: their images run through the bundle's
segment graphs (one block each) together; after every segment each rider whose next segment
would not end in time — its predicted cost at the cohort's size plus the time the rider keeps
for its response — leaves with the embedding of the depth just reached, and its rows leave the
hidden state, so the others continue cheaper. The batcher interleaves cohorts and whole-graph
batches earliest-deadline first, so a tight request waits for at most one segment of a deep
batch. A cohort that was put aside re-checks its riders before it continues.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.inference.planner import goes_on, in_time, latest_start


@dataclass(eq=False)  # riders are told apart by identity
class Rider:
    """One request in a cohort."""

    images: np.ndarray
    deadline: float  # time.perf_counter() seconds
    reserve_s: float  # kept after leaving, for the response
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Left:
    """What a rider leaves with."""

    rows: np.ndarray  # [n, D] embeddings at exit_depth
    exit_depth: int
    fits: bool  # it left in time to answer within its deadline (as predicted)
    decided: float  # when it left
    enqueued: float
    started: float  # the cohort's first segment
    batch_size: int  # the cohort's images when it started


class Cohort:
    """Riders going through the segments together; ``depth`` blocks done so far. Riders leave
    only at the bundle's exit depths (``exit_depths``): between two of them the embedding of
    the last one passed is kept."""

    def __init__(self, exit_depths: list[int]) -> None:
        self.exit_depths = sorted(exit_depths)
        self.max_depth = self.exit_depths[-1]
        self.riders: list[Rider] = []
        self.depth = 0
        self.hidden: np.ndarray | None = None
        self.embedding: np.ndarray | None = None  # at ``banked``, the last exit depth passed
        self.banked = 0
        self.started: float | None = None
        self.size0 = 0

    @property
    def images(self) -> int:
        return sum(len(r.images) for r in self.riders)

    def latest_start(self, cost_s: Callable[[int, int, int], float]) -> float:
        """When the next block must start at the latest for the tightest rider to reach its
        next exit depth in time (the worker runs the smallest first)."""
        reach = (
            cost_s(self.depth, self.next_exit(), self.images)
            if self.depth < self.max_depth
            else 0.0
        )
        return min(
            latest_start(reach_s=reach, reserve_s=r.reserve_s, deadline=r.deadline)
            for r in self.riders
        )

    @property
    def oldest(self) -> float:
        return min(r.enqueued for r in self.riders)

    def input(self) -> np.ndarray:
        """What the next segment takes: the images (not started yet) or the hidden state."""
        if self.hidden is None:
            self.started, self.size0 = time.perf_counter(), self.images
            return np.concatenate([r.images for r in self.riders])
        return self.hidden

    def advance(self, hidden: np.ndarray, embedding: np.ndarray) -> None:
        self.depth += 1
        self.hidden = hidden
        if self.depth in self.exit_depths:
            self.embedding, self.banked = embedding, self.depth

    def next_exit(self) -> int:
        """The next exit depth after the current one (where a rider could leave next)."""
        return next(d for d in self.exit_depths if d > self.depth)

    def leave(
        self, now: float, cost_s: Callable[[int, int, int], float]
    ) -> list[tuple[Rider, Left]]:
        """Riders that must leave now: past the last exit depth, or when the planner says they
        cannot go on (:func:`~.planner.goes_on`: reaching the next exit depth,
        ``cost_s(from_depth, to_depth, images)`` at this cohort's size, and answering would not
        fit). Their rows leave the hidden state."""
        if self.banked == 0 or self.embedding is None:
            return []  # every rider reaches the first exit depth
        if self.depth >= self.max_depth:
            leaving = list(self.riders)
        else:
            cost = cost_s(self.depth, self.next_exit(), self.images)
            leaving = [
                r
                for r in self.riders
                if not goes_on(now=now, reach_s=cost, reserve_s=r.reserve_s, deadline=r.deadline)
            ]
        if not leaving:
            return []
        out, keep, offset = [], [], 0
        for r in self.riders:
            rows = slice(offset, offset + len(r.images))
            offset += len(r.images)
            if r in leaving:
                fits = in_time(now + r.reserve_s, r.deadline)
                out.append((r, Left(self.embedding[rows], self.banked, fits, now, r.enqueued,
                                    self.started or now, self.size0)))  # fmt: skip
            else:
                keep.append(np.arange(rows.start, rows.stop))
        self.riders = [r for r in self.riders if r not in leaving]
        if keep:
            index = np.concatenate(keep)
            self.hidden, self.embedding = self.hidden[index], self.embedding[index]
        return out
