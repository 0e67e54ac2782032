"""One-step rollout: build a new bundle's indexes inside the running server from the items' kept
inputs, while the served bundle keeps answering reads and writes, then swap.

How nothing is lost or resurrected — every write to a runtime's index holds its ``write_lock``
(an asyncio lock: SQLite serialises the writes anyway; the embedding happens outside it):

- When the target bundle is loaded, under the source's write lock, the rollout starts
  *mirroring* and notes the *horizon*, the newest item then. Every later write to the served
  bundle — the item, re-embedded by the target from its kept input, or the delete — lands in
  both indexes before it is acknowledged; so the job copies only items up to the horizon.
- The job walks those items in insertion order (``num_id``), re-embeds a batch outside the lock,
  then under it writes only the items whose version (``num_id``, new on every replace) is still
  current: a newer write already reached the target through the mirror, a deleted item stays
  deleted. The cursor is recorded after every batch (:mod:`service.lifecycle.jobs`): a killed job
  resumes there, with the horizon moved to the newest item (a write the crash cut between the two
  indexes is copied again), and a restarted server loads the target before it serves.
- Completion, under the lock, removes items only the target holds (from an earlier, abandoned
  attempt), lists the items that had no input, then the swap. Requests pinned to the old bundle
  keep mirroring until the old runtime closes.

Items without a kept input cannot be re-embedded; the job lists them as needing re-upload.
After a swap ``<data dir>/serving.json`` records it (:mod:`service.lifecycle.serving`), so a
restart with the old ``SDSSL_BUNDLE`` serves the new bundle (whose index holds the writes made
since) and says so in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import APIError
from service.inference.images import prepare
from service.lifecycle.jobs import MISSING_LISTED, Job
from service.lifecycle.reasons import RolloutError, public_reason
from service.lifecycle.runtime import Runtime, load_runtime
from service.lifecycle.serving import record_serving

if TYPE_CHECKING:  # the manager that owns the job
    from service.lifecycle.rollouts import Rollouts

log = logging.getLogger(__name__)


class Rollout:
    """One running rollout: its job record, the source runtime (serving when it started, whose
    ``write_lock`` orders the job's writes against the mirrored ones) and the target runtime."""

    def __init__(self, job: Job, source: Runtime, manager: Rollouts) -> None:
        self.job, self.source, self.manager = job, source, manager
        self.target: Runtime | None = None
        self.lock = source.write_lock
        self.task: asyncio.Task | None = None
        self._started = time.monotonic()

    # ---- re-embedding --------------------------------------------------------------------------
    def _embed_sync(self, pngs: list[bytes | None]) -> list[np.ndarray | None]:
        """The target's gallery embeddings ``[D]`` of kept inputs (one depth: its gallery
        depth), None where there is no input or the target's preprocessing refuses it (an
        aspect its resize cannot take, say)."""
        assert self.target is not None
        p = self.target.manifest.preprocess
        interp, limit = p.interpolation, self.manager.settings.max_pixels
        rows: list[np.ndarray | None] = []
        for png in pngs:
            try:
                row = None if png is None else prepare(png, p.resize, p.crop, interp, limit)
                rows.append(row)
            except APIError:
                rows.append(None)
        ok = [i for i, r in enumerate(rows) if r is not None]
        out: list[np.ndarray | None] = [None] * len(pngs)
        if ok:
            vectors = self.target.engine.embed_gallery(np.stack([rows[i] for i in ok]))
            for j, i in enumerate(ok):
                out[i] = vectors[j]
        return out

    async def embed(self, pngs: list[bytes | None]) -> list[np.ndarray | None] | None:
        """:meth:`_embed_sync` off the loop; None (and the rollout failed) if the target cannot
        run — the served bundle's write goes on regardless."""
        try:
            return await asyncio.to_thread(self._embed_sync, pngs)
        except Exception as exc:
            if self.job.active and self.target is not None:
                log.warning("rollout %s: the new bundle failed to embed: %r", self.job.id, exc)
                self.fail(f"the new bundle failed to embed: {public_reason(exc)}")
            return None

    # ---- mirrored writes (the caller holds the source's write lock) ----------------------------
    async def mirror_upsert(
        self, ids: list[str], metadata: list[Any], vectors: list[np.ndarray | None] | None,
        pngs: list[bytes] | None, keep: bool,
    ) -> None:  # fmt: skip
        """Write a served-bundle upsert into the target too. Items the target could not embed
        (no kept input) are removed there: they are listed as needing re-upload."""
        if self.target is None:  # failed or cancelled meanwhile
            return
        vectors = vectors or [None] * len(ids)
        ok = [i for i, v in enumerate(vectors) if v is not None]
        try:
            for i in sorted(set(range(len(ids))) - set(ok)):
                await asyncio.to_thread(self.target.index.delete, ids[i])
            if ok:
                await asyncio.to_thread(
                    self.target.index.upsert,
                    [ids[i] for i in ok],
                    [metadata[i] for i in ok],
                    np.stack([vectors[i] for i in ok]),
                    [pngs[i] for i in ok] if keep and pngs else None,
                )
            self.job.mirrored += len(ok)
            self.manager.metrics.rollout_items.labels("mirrored").inc(len(ok))
        except Exception as exc:  # the served bundle's write stands; the rollout cannot
            log.warning("rollout %s: a mirrored write failed: %r", self.job.id, exc)
            self.fail(f"a mirrored write failed: {public_reason(exc)}")

    async def mirror_delete(self, item_id: str) -> None:
        if self.target is None:
            return
        try:
            await asyncio.to_thread(self.target.index.delete, item_id)
        except Exception as exc:
            log.warning("rollout %s: a mirrored delete failed: %r", self.job.id, exc)
            self.fail(f"a mirrored delete failed: {public_reason(exc)}")

    # ---- the job -------------------------------------------------------------------------------
    async def load_target(self) -> None:
        """Load, verify and warm the target bundle; from here on writes are mirrored."""
        m = self.manager
        await m.settled()  # an earlier job's target must have closed (and released its lock)
        target = await load_runtime(m.settings, Path(self.job.bundle), m.metrics)
        m.metrics.items.set(self.source.index.indexed())  # the gauge shows what serves
        if target.bundle_id == self.source.bundle_id:
            await target.close()
            raise RolloutError("that bundle is the one being served")
        async with self.lock:
            self.target = target
            self.job.target = target.bundle_id
            self.source.mirror = self
            self.job.horizon = await asyncio.to_thread(self.source.index.last_num_id)
            self.job.state = "copying"
            await self.save()
        self._started = time.monotonic()  # the rate counts copying, not loading

    async def run(self) -> None:
        """Copy every item, then complete (and swap unless asked to wait)."""
        job = self.job
        try:
            if self.target is None:
                await self.load_target()
            if job.state == "copying":
                while rows := await self._rows():
                    vectors = await self._embed_rows(rows)
                    async with self.lock:
                        await self._commit(rows, vectors)
                    await self._progress(rows)
                    if job.pause_ms:
                        await asyncio.sleep(job.pause_ms / 1000)
                await self.complete()
            if job.state == "ready" and job.swap:
                await self.swap()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("rollout %s failed", job.id)
            self.fail(public_reason(exc, "the rollout failed"))

    async def _rows(self) -> list[tuple[int, str, Any, bytes | None]]:
        job = self.job
        return await asyncio.to_thread(
            self.source.index.with_inputs, job.cursor, job.batch, job.horizon
        )

    async def _embed_rows(self, rows: list) -> list[np.ndarray | None]:
        vectors = await self.embed([r[3] for r in rows])
        if vectors is None:
            raise RolloutError(self.job.error or "the new bundle failed to embed")
        return vectors

    async def _commit(self, rows: list, vectors: list[np.ndarray | None]) -> None:
        """Write a re-embedded batch into the target, only items still at the version read;
        items without a kept input (or one the target refused) are counted as missing."""
        assert self.target is not None
        job = self.job
        done = [i for i, v in enumerate(vectors) if v is not None]
        current = await asyncio.to_thread(self.source.index.versions, [rows[i][1] for i in done])
        pick = [i for i in done if current.get(rows[i][1]) == rows[i][0]]
        if pick:
            await asyncio.to_thread(
                self.target.index.upsert,
                [rows[i][1] for i in pick],
                [rows[i][2] for i in pick],
                np.stack([vectors[i] for i in pick]),
                [rows[i][3] for i in pick],
            )
        job.copied += len(pick)
        job.skipped += len(done) - len(pick)
        job.missing_count += len(rows) - len(done)
        labels = self.manager.metrics.rollout_items.labels
        labels("copied").inc(len(pick))
        labels("missing").inc(len(rows) - len(done))

    async def _progress(self, rows: list) -> None:
        job = self.job
        job.cursor = rows[-1][0]
        job.done += len(rows)
        now = time.monotonic()
        job.seconds += now - self._started
        self._started = now
        left = await asyncio.to_thread(self.source.index.count_after, job.cursor, job.horizon)
        job.total = job.done + left
        self.manager.metrics.rollout_progress.set(job.done / job.total if job.total else 0)
        await self.save()

    async def complete(self) -> None:
        """Under the lock: the last items, the target's extras removed, the missing listed."""
        assert self.target is not None
        job = self.job
        async with self.lock:
            while rows := await self._rows():
                await self._commit(rows, await self._embed_rows(rows))
                await self._progress(rows)
            source_ids, target_ids = await asyncio.gather(
                asyncio.to_thread(self.source.index.ids), asyncio.to_thread(self.target.index.ids)
            )
            for item_id in target_ids - source_ids:
                await asyncio.to_thread(self.target.index.delete, item_id)
                job.removed += 1
            missing = sorted(source_ids - target_ids)  # never re-embedded: no kept input
            job.missing, job.missing_count = missing[:MISSING_LISTED], len(missing)
            job.state = "ready"
            self.manager.metrics.rollout_progress.set(1.0)
            await self.save()
        log.info("rollout %s: %d items re-embedded (%d mirrored, %d need re-upload)", job.id,
                 job.copied, job.mirrored, job.missing_count)  # fmt: skip

    async def swap(self) -> None:
        """Serve the target; requests pinned to the old bundle keep mirroring until it closes."""
        m, job = self.manager, self.job
        assert self.target is not None
        async with m.holder.reload_lock, self.lock:
            if job.state != "ready":
                raise RolloutError(f"job is {job.state}, not ready to swap")
            m.holder.swap(self.target, m.metrics)  # the source retires below, once unpinned
            await asyncio.to_thread(
                record_serving, m.settings.data_dir, Path(job.bundle), self.target.bundle_id,
                self.source.bundle_id, f"rollout {job.id}",
            )  # fmt: skip
            job.state, job.finished_at = "swapped", time.time()
            await self.save()
            m.active = None
        m.background(self._retire_source())
        log.info("rollout %s: now serving %s (%s)", job.id, job.bundle, job.target[:12])

    async def _retire_source(self) -> None:
        try:
            await self.source.close()
        finally:
            self.source.mirror = None

    def fail(self, reason: str) -> None:
        """Stop mirroring and close the target; the served bundle is untouched."""
        job = self.job
        if not job.active:
            return
        job.state, job.error, job.finished_at = "failed", reason, time.time()
        self.manager.metrics.rollout_failures.inc()
        log.warning("rollout %s failed: %s", job.id, reason)
        self._stop()

    async def cancel(self) -> None:
        async with self.lock:
            if not self.job.active:
                raise RolloutError(f"job is {self.job.state}")
            self.job.state, self.job.finished_at = "cancelled", time.time()
            self._stop()

    def _stop(self) -> None:
        if self.source.mirror is self:
            self.source.mirror = None
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        if self.manager.active is self:
            self.manager.active = None
        target, self.target = self.target, None
        if target is not None:
            self.manager.background(target.close())
        self.manager.jobs_save_soon(self.job)

    async def save(self) -> None:
        await asyncio.to_thread(self.manager.jobs.save, self.job)


@contextlib.asynccontextmanager
async def mirrored(runtime: Runtime) -> AsyncIterator[Rollout | None]:
    """Around every write to ``runtime``'s index: holds its write lock, and gives the rollout to
    mirror the write to, or None."""
    async with runtime.write_lock:
        rollout = runtime.mirror
        yield rollout if rollout is not None and rollout.target is not None else None
