"""Everything that belongs to one loaded bundle, and the holder that swaps bundles atomically.

A :class:`Runtime` is built beside the one serving (sessions, warm-up, scheduler, indexes), then
swapped in by one assignment; the old one finishes its in-flight requests and is closed. Any
failure while building leaves the old runtime serving.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import Manifest, bundle_id, gallery_depth, load_verified
from service.collection import ItemIndex, open_index
from service.inference import Mode, Scheduler
from service.inference.batcher import BatchRecord
from service.inference.engine import (
    ALL_EXITS,
    Engine,
    GraphKey,
    Segment,
    choose_providers,
)
from service.inference.latency import LatencyModel
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    bundle: Path
    manifest: Manifest
    bundle_id: str
    engine: Engine
    scheduler: Scheduler
    index: ItemIndex
    active: int = 0  # requests pinned to this runtime (closing waits for them)
    mirror: Any = None  # the rollout (service.lifecycle.rollout) its writes are mirrored to, if any
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # held by every index write
    loaded_at: float = field(default_factory=time.time)

    @property
    def exit_depths(self) -> list[int]:
        return self.manifest.exit_depths

    @property
    def gallery_depth(self) -> int:
        """The exit depth items are embedded at; queries of every depth search its space."""
        return gallery_depth(self.manifest)

    async def close(self, keep_index: bool = False) -> None:
        """Wait for in-flight requests, drain the queue, persist and close the index (unless
        the next runtime shares it: a reload of the same bundle)."""
        deadline = time.monotonic() + 30
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await self.scheduler.close()
        if not keep_index:
            await asyncio.to_thread(self.index.close)


def warm_up(
    engine: Engine, latency: LatencyModel, settings: Settings, size: int
) -> dict[GraphKey, np.ndarray]:
    """Time every (graph, batch size) of the table; segments chained as they run. Returns one
    input row per graph (images, or the hidden state a segment takes) to re-time it on."""
    rng = np.random.default_rng(0)
    examples: dict[GraphKey, np.ndarray] = {}
    for b in latency.batch_sizes:
        images = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
        for key in latency.keys:
            if isinstance(key, Segment):
                continue
            examples.setdefault(key, images[:1])  # batch size 1 comes first: no copy
            latency.time(key, b, functools.partial(engine.run, key, images), settings.warmup_runs)
        hidden = images
        for segment in engine.segments if settings.anytime != "off" else []:
            examples.setdefault(segment, hidden[:1])
            run = functools.partial(engine.run_segment, segment, hidden)
            hidden, _ = latency.time(segment, b, run, settings.warmup_runs)
    return examples


def _build(
    settings: Settings, bundle: Path, current: Runtime | None
) -> tuple[Manifest, str, Engine, LatencyModel, ItemIndex, dict[GraphKey, np.ndarray]]:
    manifest = load_verified(bundle)
    gallery_depth(manifest)  # a bundle without bridges is refused before anything opens
    bid = bundle_id(bundle)
    choose_providers(settings.device)  # an impossible device refuses before the index opens
    # A reload of the bundle being served shares its open index; otherwise the index opens
    # first, so that its writer lock refuses a second writer before any warm-up is spent.
    index = current.index if current is not None and current.bundle_id == bid else None
    own_index = index is None
    if own_index:
        index = open_index(settings, manifest, bid, use_gpu=settings.device != "cpu")
    try:
        engine = Engine(bundle, manifest, settings.device, settings.threads)
        segments = engine.segments if settings.anytime != "off" else []  # timed, maybe used
        keys = [*manifest.exit_depths, ALL_EXITS, *segments]
        latency = LatencyModel(keys, settings.warmup_batch_sizes())
        started = time.perf_counter()
        examples = warm_up(engine, latency, settings, manifest.model.img_size)
    except BaseException:
        if own_index:
            index.close()
        raise
    log.info("warm-up of %d graphs: %.1f s", len(manifest.exits) + 1, time.perf_counter() - started)
    return manifest, bid, engine, latency, index, examples


async def load_runtime(
    settings: Settings, bundle: Path, metrics: Metrics, current: Runtime | None = None
) -> Runtime:
    """Verify, load and warm a bundle and open its indexes (or share ``current``'s when it is
    the same bundle), every blocking part — hashing included — off the event loop."""
    manifest, bid, engine, latency, index, examples = await asyncio.to_thread(
        _build, settings, bundle, current
    )

    def on_batch(rec: BatchRecord) -> None:
        if isinstance(rec.key, Segment):
            label = f"segment_{rec.key.last}"
        else:
            label = "all" if rec.key is ALL_EXITS else str(rec.key)
        metrics.batch_size.labels(label).observe(rec.size)
        metrics.batch_seconds.labels(label).observe(rec.ms / 1000)

    segments = _anytime_segments(settings, engine, latency)
    scheduler = Scheduler(
        engine.run,
        latency,
        manifest.exit_depths,
        ALL_EXITS,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        queue_bound=settings.queue_bound,
        calibration=Mode(settings.calibration),
        on_batch=on_batch,
        run_segment=engine.run_segment,
        segments=segments,
        examples=examples,
        retime_after_s=settings.retime_after_s,
        retime_runs=settings.warmup_runs,
        split=engine.dim,
    )
    scheduler.start()
    return Runtime(bundle, manifest, bid, engine, scheduler, index)


ANYTIME_MIN_BLOCK_MS = 1.0


def _anytime_segments(settings: Settings, engine: Engine, latency: LatencyModel) -> list[Segment]:
    """The segments budgets run through, or none (whole graphs). ``auto`` runs block by block
    only when a block costs at least ANYTIME_MIN_BLOCK_MS: the default model's blocks take
    ~0.1 ms on a CPU, where stepping block by block costs more than it gains (measured:
    bench.budget_adherence); a ViT-S/16 block takes ~7 ms."""
    if settings.anytime == "off" or not engine.segments:
        return []
    block_ms = sum(latency.predict(s, 1, tail=False) for s in engine.segments) / len(
        engine.segments
    )
    if settings.anytime == "auto" and block_ms < ANYTIME_MIN_BLOCK_MS:
        log.info("budgets run whole graphs: a block costs %.2f ms (< %.1f)", block_ms,
                 ANYTIME_MIN_BLOCK_MS)  # fmt: skip
        return []
    log.info("budgets run block by block (a block costs %.2f ms)", block_ms)
    return engine.segments


def report_device(runtime: Runtime, metrics: Metrics) -> None:
    """Set the sessions gauge to the runtime now serving."""
    metrics.sessions.clear()
    for providers in runtime.engine.session_providers().values():
        metrics.sessions.labels(runtime.engine.device, providers[0]).inc()


class RuntimeHolder:
    """The current runtime; :meth:`swap` replaces it in one assignment."""

    def __init__(self) -> None:
        self.current: Runtime | None = None
        self.reload_lock = asyncio.Lock()
        # A job writing into ``current``'s index that a swap would cut off ("import 3f9c…"):
        # set and read under ``reload_lock``; reloads and rollouts are refused while it is set.
        self.pinned_by: str | None = None

    @property
    def ready(self) -> bool:
        return self.current is not None

    def swap(self, new: Runtime, metrics: Metrics) -> Runtime | None:
        """Serve ``new`` from now on — the one place that changes what serves (start-up,
        reload, rollout). Requests already pinned to the old runtime finish on it; the caller
        retires it (returned; None at start-up). The metrics follow: sessions, items."""
        old, self.current = self.current, new
        report_device(new, metrics)
        metrics.items.set(new.index.indexed())
        return old
