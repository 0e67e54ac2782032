"""``POST /v1/admin/import``: a bulk import (:mod:`service.collection.bulk`) run inside the
server as a job, into the served bundle's gallery, while reads and writes go on.

The server reads sources only from ``SDSSL_IMPORT_DIR`` (off when unset): a request names a
file or folder inside it, never a path of its own. Each batch is checked as the API checks items
and written under the runtime's write lock — client writes interleave between batches — as one
durable upsert; the job's record (``<data dir>/jobs``, shared with rollouts) is saved after it,
so ``GET /v1/admin/jobs/{id}`` shows the rows read, stored, refused and skipped so far.

One import at a time, and not beside a rollout or a reload (each would swap the index it writes
to): those are refused with 409 while an import runs, and an import while they run. A server
stopped during an import marks its job failed at the next start — every batch it reported is
stored — and the same import with ``resume: true`` goes on where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from service.collection.bulk import Batch, Counts, batches
from service.collection.bulk import store as store_batch
from service.collection.vector_sources import SourceError, VectorSource, open_source
from service.lifecycle.jobs import Job, JobStore
from service.lifecycle.reasons import public_reason
from service.lifecycle.rollout import mirrored
from service.lifecycle.runtime import Runtime, RuntimeHolder
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)
KIND = "import"
RECORD_TRIES = 60  # an ended job's record is retried once a second this many times


class ImportRefused(Exception):
    """An import that cannot start (one-line reason; ``code`` and ``status`` for the API)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def resolve_source(settings: Settings, name: str) -> Path:
    """``name`` inside ``SDSSL_IMPORT_DIR``: a relative path that stays inside it once every
    link is followed; ImportRefused otherwise (imports off, an escape, nothing there). Files
    inside a folder source are then opened without following links
    (:func:`~service.collection.vector_sources.open_source`), so they cannot lead out either."""
    if settings.import_dir is None:
        raise ImportRefused(409, "imports_off", "imports are off: set SDSSL_IMPORT_DIR to the "
                            "folder the server may read import sources from")  # fmt: skip
    relative = Path(name)
    if (not name or relative.is_absolute() or ".." in relative.parts
            or any(ord(c) < 32 or ord(c) == 127 for c in name)):  # fmt: skip
        raise ImportRefused(422, "invalid_source", "source must be a relative path inside the "
                            "import folder, without '..' or control characters")  # fmt: skip
    try:
        root = settings.import_dir.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise ImportRefused(422, "invalid_source", "source leads outside the import folder")
        if not path.exists():
            raise ImportRefused(422, "invalid_source", f"no {name!r} in the import folder")
    except (OSError, RuntimeError, ValueError) as exc:  # a link loop, a name too long, no access
        raise ImportRefused(422, "invalid_source", f"{name!r} cannot be reached "
                            f"({_why(exc)})") from None  # fmt: skip
    return path


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or "I/O error"
    return "a link loop" if isinstance(exc, RuntimeError) else "not a usable path"


def pin_source(settings: Settings, path: Path, name: str) -> int:
    """A descriptor of ``path`` (as :func:`resolve_source` found it), reached from the import
    folder one component at a time without following a link: a folder swapped for a link
    between the check and the open cannot lead the import elsewhere. Read the source through
    ``/proc/self/fd/<fd>``; close the descriptor once it is open."""
    assert settings.import_dir is not None
    root = settings.import_dir.resolve()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in path.relative_to(root).parts:
            step = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                           dir_fd=fd)  # fmt: skip
            os.close(fd)
            fd = step
    except OSError as exc:
        os.close(fd)
        why = "it changed while it was checked" if exc.errno == errno.ELOOP else _why(exc)
        raise ImportRefused(422, "invalid_source", f"{name!r} cannot be reached ({why})") from None
    return fd


STOPPED = (
    "the server stopped during the import; the {n} rows it reported are stored: start "
    "it again with resume: true to go on"
)


class Import:
    """One running import: its job record, the runtime it writes to and its source."""

    def __init__(self, job: Job, runtime: Runtime, source: VectorSource, manager: Imports):
        self.job, self.runtime, self.source, self.manager = job, runtime, source, manager
        self.counts = Counts()
        self.task: asyncio.Task | None = None
        self.stop: str | None = None  # the state to end in after the current batch
        self.woken = asyncio.Event()  # ends a pause between batches early

    async def run(self) -> None:
        job, m = self.job, self.manager
        started = time.monotonic()
        rows = batches(self.source, self.runtime.manifest.model.dim, m.settings, self.counts,
                       job.batch)  # fmt: skip
        try:
            job.state = "copying"
            while self.stop is None:
                batch = await asyncio.to_thread(next, rows, None)
                if batch is None:
                    break
                await self._store(batch)
                job.done += batch.read
                self._count(time.monotonic() - started)
                m.metrics.items.set(self.runtime.index.indexed())
                await m.save(job)
                if job.pause_ms and self.stop is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.woken.wait(), job.pause_ms / 1000)
            job.state = "done" if job.done >= job.total else (self.stop or "done")
            if job.state == "failed":  # the server is stopping
                job.error = STOPPED.format(n=job.imported)
            log.info("import %s %s: %d stored, %d already present, %d refused", job.id,
                     job.state, job.imported, job.skipped, job.refused)  # fmt: skip
        except Exception as exc:
            if not isinstance(exc, SourceError):
                log.exception("import %s failed", job.id)
            job.state = "failed"
            job.error = str(exc) if isinstance(exc, SourceError) else public_reason(exc)
        finally:
            self._count(time.monotonic() - started)
            job.finished_at = time.time()
            rows.close()  # its readers' descriptors, then the source's own
            self.source.close()
            await m.release(self)

    async def _store(self, batch: Batch) -> None:
        """One batch under the write lock (API writes wait for it, and it for them)."""
        async with mirrored(self.runtime) as mirror:
            if mirror is not None:  # rollouts are refused while an import runs
                raise RuntimeError("a rollout began during the import")
            await asyncio.to_thread(
                store_batch, self.runtime.index, batch, self.counts, self.job.resume
            )

    def _count(self, seconds: float) -> None:
        job, c = self.job, self.counts
        labels = self.manager.metrics.import_rows.labels
        labels("stored").inc(c.imported - job.imported)
        labels("refused").inc(c.refused - job.refused)
        labels("present").inc(c.skipped_existing - job.skipped)
        job.imported, job.refused, job.skipped = c.imported, c.refused, c.skipped_existing
        job.reasons, job.seconds = list(c.reasons), seconds

    async def end(self, state: str) -> None:
        """Stop after the batch being written (every batch written stays) and wait for it."""
        self.stop = state
        self.woken.set()
        if self.task is not None:
            await asyncio.shield(self.task)


class Imports:
    """The app's imports: at most one running; records in ``<data dir>/jobs``."""

    def __init__(self, settings: Settings, metrics: Metrics, holder: RuntimeHolder, jobs: JobStore):
        self.settings, self.metrics, self.holder, self.jobs = settings, metrics, holder, jobs
        self.active: Import | None = None
        self.unsaved: dict[str, Job] = {}  # ended jobs whose record could not be written yet

    async def save(self, job: Job) -> None:
        await asyncio.to_thread(self.jobs.save, job)

    def get(self, job_id: str) -> Job | None:
        """The running import's live record, if it is that job (or an ended one whose record
        is not written yet)."""
        run = self.active
        if run is not None and run.job.id == job_id:
            return run.job
        return self.unsaved.get(job_id)

    async def start(self, name: str, resume: bool, batch: int, pause_ms: float,
                    rollout_running: Callable[[], bool]) -> Job:  # fmt: skip
        """Check the source (its format, its dimension) and start the job in the background;
        ImportRefused with the reason otherwise. The source is opened before the reload lock is
        taken (reading it may take a while); the checks that decide whether it may run are made
        under that lock (``rollout_running`` among them), where reloads and rollouts make
        theirs."""
        if self.holder.pinned_by is not None:  # early, before any reading; checked again below
            raise ImportRefused(409, "job_running", f"{self.holder.pinned_by} is running")
        path = await asyncio.to_thread(resolve_source, self.settings, name)
        serving = self.holder.current
        expect = serving.manifest.model.dim if serving is not None else None
        fd = await asyncio.to_thread(pin_source, self.settings, path, name)
        try:
            source = await asyncio.to_thread(open_source, Path(f"/proc/self/fd/{fd}"),
                                             repr(name), False, expect, path.suffix)  # fmt: skip
        except SourceError as exc:
            raise ImportRefused(422, "invalid_source", str(exc)) from exc
        finally:
            os.close(fd)
        try:
            async with self.holder.reload_lock:
                if self.holder.pinned_by is not None:
                    raise ImportRefused(409, "job_running", f"{self.holder.pinned_by} is running")
                if rollout_running():
                    raise ImportRefused(409, "rollout_running", "a rollout is running: wait for "
                                        "it or cancel it")  # fmt: skip
                runtime = self.holder.current
                if runtime is None:
                    raise ImportRefused(409, "starting", "the model is still loading")
                dim = runtime.manifest.model.dim
                if (source.rows or source.dim) and source.dim != dim:
                    why = f"vectors have {source.dim} values; the served bundle's have {dim}"
                    raise ImportRefused(422, "invalid_source", f"{name!r}: {why}")
                job = Job(bundle=runtime.bundle_id, source=name, kind=KIND, batch=batch,
                          pause_ms=pause_ms, resume=resume, total=source.rows)  # fmt: skip
                await self.save(job)
                run = Import(job, runtime, source, self)
                self.active, self.holder.pinned_by = run, f"import {job.id}"
                run.task = asyncio.get_running_loop().create_task(run.run())
        except BaseException:
            source.close()
            raise
        return job

    async def release(self, run: Import) -> None:
        """The import ended: let reloads and rollouts run again, then record it (a record that
        cannot be written is logged; it never keeps the server pinned)."""
        if self.active is run:
            self.active = None
            self.holder.pinned_by = None
        job = run.job
        for attempt in range(RECORD_TRIES):
            try:
                await self.save(job)
                self.unsaved.pop(job.id, None)
                return
            except OSError as exc:
                if attempt == 0:
                    log.warning("import %s: its record cannot be written (%s); retrying",
                                job.id, exc)  # fmt: skip
                self.unsaved[job.id] = job  # answered from memory meanwhile
                await asyncio.sleep(1.0)
        log.error("import %s: its record could not be written in %d tries", job.id, RECORD_TRIES)

    async def fail_stale(self) -> None:
        """At start: an import a stopped process left running is failed (it does not resume
        by itself: its source may have changed since)."""
        for job in await asyncio.to_thread(self.jobs.all):
            if job.kind == KIND and job.active:
                job.state, job.finished_at = "failed", time.time()
                job.error = STOPPED.format(n=job.imported)
                await self.save(job)

    async def close(self) -> None:
        """At shutdown: stop the import after its current batch."""
        if self.active is not None:
            await self.active.end("failed")
