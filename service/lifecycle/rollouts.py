"""The app's rollouts: at most one active, each a :class:`~.rollout.Rollout` job recorded in
``<data dir>/jobs``; started by ``POST /v1/admin/rollout``, resumed at start, stopped at
shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from export.manifest import bundle_id
from service.lifecycle.jobs import Job, JobStore
from service.lifecycle.reasons import RolloutError, public_reason
from service.lifecycle.rollout import Rollout
from service.lifecycle.runtime import Runtime, RuntimeHolder
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)


class Rollouts:
    """The app's rollouts: at most one active; jobs recorded in ``<data dir>/jobs``."""

    def __init__(
        self, settings: Settings, metrics: Metrics, holder: RuntimeHolder, background: set
    ) -> None:
        self.settings, self.metrics, self.holder = settings, metrics, holder
        self.jobs = JobStore(settings.data_dir / "jobs")
        self.active: Rollout | None = None
        self._background = background

    def background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settled(self) -> None:
        """Wait for the app's background work started so far: closes of swapped-out bundles
        and of earlier jobs' targets (each keeps its index folder's writer lock until closed),
        and job saves."""
        await asyncio.gather(*list(self._background), return_exceptions=True)

    def jobs_save_soon(self, job: Job) -> None:
        self.background(asyncio.to_thread(self.jobs.save, job))

    def get(self, job_id: str) -> Job | None:
        if self.active is not None and self.active.job.id == job_id:
            return self.active.job
        return self.jobs.get(job_id)

    async def start(self, bundle: Path, swap: bool, batch: int, pause_ms: float) -> Job:
        """Record a new job and start it in the background (the target loads there)."""
        async with self.holder.reload_lock:
            if self.active is not None:
                raise RolloutError(f"rollout {self.active.job.id} is running")
            if self.holder.pinned_by is not None:
                raise RolloutError(f"{self.holder.pinned_by} is running: wait for it or cancel it")
            source = self.holder.current
            if source is None:
                raise RolloutError("the model is still loading")
            if await asyncio.to_thread(bundle_id, bundle) == source.bundle_id:
                raise RolloutError("that bundle is the one being served")
            job = Job(bundle=str(bundle), source=source.bundle_id, swap=swap, batch=batch,
                      pause_ms=pause_ms)  # fmt: skip
            await asyncio.to_thread(self.jobs.save, job)
            self._launch(Rollout(job, source, self))
        self.metrics.rollout_progress.set(0)
        return job

    def _launch(self, rollout: Rollout) -> None:
        self.active = rollout
        rollout.task = asyncio.get_running_loop().create_task(rollout.run())

    async def resume(self, source: Runtime) -> None:
        """At start, before serving: pick up the job a previous process left active. The target
        loads here, so the first write is already mirrored."""
        for job in self.jobs.all():
            if not job.active or job.kind != "rollout":
                continue
            if job.source != source.bundle_id:
                job.state, job.error = "failed", "the server restarted with another bundle"
                await asyncio.to_thread(self.jobs.save, job)
                continue
            rollout = Rollout(job, source, self)
            try:
                await rollout.load_target()
            except Exception as exc:
                log.warning("rollout %s: cannot load %s again: %r", job.id, job.bundle, exc)
                rollout.fail(f"cannot load the bundle again: {public_reason(exc)}")
                continue
            log.info("rollout %s resumes at item #%d (%d done)", job.id, job.cursor, job.done)
            self._launch(rollout)
            return

    async def close(self) -> None:
        """At shutdown: stop the job where it is (it resumes at the next start)."""
        rollout, self.active = self.active, None
        if rollout is None:
            return
        if rollout.task is not None:
            rollout.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await rollout.task
        await rollout.save()
        if rollout.target is not None:
            await rollout.target.close()
