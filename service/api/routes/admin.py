"""Admin routes: reload (load a bundle beside the served one and swap), rollout jobs (a new
bundle's indexes built from the kept inputs, then swapped), import jobs (precomputed vectors
loaded into the served gallery), and snapshots."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from export.manifest import bundle_id, load_verified
from service.api.deps import (
    AuthDep,
    HolderDep,
    ImportsDep,
    MetricsDep,
    RolloutsDep,
    RuntimeDep,
    SettingsDep,
)
from service.api.schemas import (
    ERRORS,
    DeletedOut,
    ImportIn,
    JobOut,
    JobsOut,
    ReloadIn,
    ReloadOut,
    RolloutIn,
    SnapshotOut,
    SnapshotsOut,
)
from service.collection import snapshots
from service.errors import APIError
from service.lifecycle.imports import ImportRefused, Imports
from service.lifecycle.jobs import JOB_ID, Job
from service.lifecycle.reasons import RolloutError, public_reason
from service.lifecycle.rollout import Rollout
from service.lifecycle.rollouts import Rollouts
from service.lifecycle.runtime import load_runtime
from service.lifecycle.serving import record_serving
from service.settings import Settings

router = APIRouter(tags=["admin"])
SNAPSHOTS = "snapshots"  # their folder in the data dir
SNAPSHOT_EXAMPLE = "9d2f0c1e7a3b-20261202T061500123Z.tar"
log = logging.getLogger(__name__)


def _refusal(exc: Exception) -> str:
    return public_reason(exc, "it could not be loaded")


@router.post(
    "/v1/admin/reload",
    response_model=ReloadOut,
    responses={**ERRORS, 409: ERRORS[422]},
    summary="Serve another bundle; on any failure the current one keeps serving",
)
async def reload(
    body: ReloadIn,
    request: Request,
    _: AuthDep,
    holder: HolderDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> dict:
    if request.app.state.rollouts.active is not None:
        raise APIError(409, "rollout_running", "a rollout is running: wait for it or cancel it")
    async with holder.reload_lock:
        if holder.pinned_by is not None:
            raise APIError(409, "job_running", f"{holder.pinned_by} is running: wait for it or "
                           "cancel it")  # fmt: skip
        # Bundles swapped out earlier must have closed (and released their index's writer
        # lock): reloading one of them again would otherwise find its index still locked.
        await request.app.state.rollouts.settled()
        old = holder.current
        loader = getattr(request.app.state, "loader", None)
        if old is None and loader is not None and not loader.done():
            raise APIError(409, "starting", "the configured bundle is still loading: wait for "
                           "/readyz, or for it to say why it cannot serve")  # fmt: skip
        # a restart serves the new bundle too, in place of the one serving now (or of the
        # configured one, if nothing serves): what it replaces is settled before loading
        replaced: str | None = old.bundle_id if old is not None else None
        if old is None:
            try:
                replaced = await asyncio.to_thread(bundle_id, settings.bundle)
            except (OSError, ValueError) as exc:
                log.warning("the configured bundle cannot be read (%s): a restart will not serve "
                            "the reloaded one unless SDSSL_BUNDLE names it", exc)  # fmt: skip
        path = Path(body.bundle)
        try:
            new = await load_runtime(settings, path, metrics, current=old)
        except Exception as exc:  # whatever failed, the old bundle keeps serving
            metrics.reloads.labels("failed").inc()
            log.warning("reload of %s failed: %r", path, exc)
            raise APIError(
                409,
                "reload_failed",
                f"bundle refused: {_refusal(exc)}",
            ) from exc
        same = old is not None and new.index is old.index
        if replaced is not None and new.bundle_id != replaced:
            try:
                await asyncio.to_thread(record_serving, settings.data_dir, path, new.bundle_id,
                                        replaced, "a reload")  # fmt: skip
            except OSError as exc:
                await new.close()
                metrics.reloads.labels("failed").inc()
                raise APIError(409, "reload_failed", "the data dir cannot record the new bundle: "
                               f"{public_reason(exc)}") from exc  # fmt: skip
        holder.swap(new, metrics)
        if old is None:  # the start-up load had failed: this bundle makes the server ready
            request.app.state.load_error, request.app.state.warming = None, False
        metrics.reloads.labels("ok").inc()
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.close(keep_index=same))
            request.app.state.background.add(task)
            task.add_done_callback(request.app.state.background.discard)
        log.info("now serving %s (%s)", path, new.bundle_id[:12])
        return {
            "model": new.bundle_id,
            "previous": old.bundle_id if old else None,
            "exit_depths": new.exit_depths,
            "gallery_depth": new.gallery_depth,
            "items": await asyncio.to_thread(new.index.count),
        }


@router.post(
    "/v1/admin/snapshot",
    response_model=SnapshotOut,
    responses={**ERRORS, 409: ERRORS[422]},
    summary="Write a consistent snapshot of the served bundle's items, or of every bundle's",
    description="SQLite's `VACUUM INTO` on a connection of its own per bundle (items, kept "
    "inputs), then the vectors file's rows those items reach: writers are not blocked and each "
    "bundle's copy holds every item acknowledged before this request. `all=true`: every "
    "bundle folder of the data dir (during a rollout, both). Download it from "
    "`GET /v1/admin/snapshots/{name}`; restore with `sdssl-restore FILE`.",
)
async def snapshot(
    _: AuthDep,
    runtime: RuntimeDep,
    settings: SettingsDep,
    every: Annotated[
        bool, Query(alias="all", description="every bundle of the data dir", examples=[False])
    ] = False,
) -> dict:
    if every:
        folders = await asyncio.to_thread(snapshots.bundle_folders, settings.data_dir)
    else:
        folders = {runtime.bundle_id: runtime.index.root}
    label = "all" if every else runtime.bundle_id[:12]
    try:
        made = await asyncio.to_thread(
            snapshots.create, folders, settings.data_dir / SNAPSHOTS, label,
            settings.min_free_bytes, settings.snapshot_keep,
        )  # fmt: skip
    except snapshots.SnapshotError as exc:  # a folder it cannot copy (one-line reason)
        raise APIError(409, "snapshot_failed", str(exc)) from exc
    return {"name": made.path.name, "model": runtime.bundle_id, "bundles": made.bundles,
            "items": made.items, "bytes": made.bytes,
            "seconds": round(made.seconds, 3)}  # fmt: skip


@router.get(
    "/v1/admin/snapshots",
    response_model=SnapshotsOut,
    responses=ERRORS,
    summary="The snapshots in the data dir, newest first",
)
async def list_snapshots(_: AuthDep, settings: SettingsDep) -> dict:
    found = await asyncio.to_thread(snapshots.described, settings.data_dir / SNAPSHOTS)
    return {"snapshots": found[::-1], "keep": settings.snapshot_keep}


def _snapshot_path(settings: Settings, name: str) -> Path:
    path = settings.data_dir / SNAPSHOTS / name
    if not snapshots.NAME.match(name) or not path.is_file():
        raise APIError(404, "not_found", "no such snapshot")
    return path


@router.delete(
    "/v1/admin/snapshots/{name}",
    response_model=DeletedOut,
    responses=ERRORS,
    summary="Delete a snapshot",
)
async def delete_snapshot(
    _: AuthDep, settings: SettingsDep, name: str = PathParam(examples=[SNAPSHOT_EXAMPLE])
) -> dict:
    path = _snapshot_path(settings, name)
    await asyncio.to_thread(path.unlink, missing_ok=True)
    return {"id": name, "deleted": True}


@router.get(
    "/v1/admin/snapshots/{name}",
    responses={**ERRORS, 200: {"content": {"application/x-tar": {}}}},
    response_class=FileResponse,
    summary="Download a snapshot",
)
async def download_snapshot(
    _: AuthDep,
    settings: SettingsDep,
    name: str = PathParam(examples=[SNAPSHOT_EXAMPLE]),
) -> FileResponse:
    path = _snapshot_path(settings, name)
    return FileResponse(path, media_type="application/x-tar", filename=name)


JobId = PathParam(pattern=JOB_ID, description="the job's id", examples=["3f9c0a1b2d4e5f60"])


@router.post(
    "/v1/admin/rollout",
    response_model=JobOut,
    status_code=202,
    responses={**ERRORS, 409: ERRORS[422]},
    summary="Roll out a new bundle in one step: re-embed every item, then serve it",
    description="Loads the bundle beside the served one and, in the background, re-embeds "
    "every item from its kept input (SDSSL_KEEP_INPUTS) into the new bundle's indexes, in "
    "batches, resumable after a crash. The served bundle keeps answering reads and writes; "
    "writes made meanwhile land in both. When the new indexes are complete the server swaps "
    "(or waits for `POST /v1/admin/jobs/{id}/swap` with `swap: false`). Follow it at "
    "`GET /v1/admin/jobs/{id}` or in /metrics (`sdssl_rollout_*`). Items without a kept input "
    "are listed in the job as needing re-upload.",
)
async def start_rollout(body: RolloutIn, _: AuthDep, rollouts: RolloutsDep) -> dict:
    path = Path(body.bundle)
    try:
        await asyncio.to_thread(load_verified, path)
    except Exception as exc:
        raise APIError(
            409,
            "rollout_refused",
            f"bundle refused: {_refusal(exc)}",
        ) from exc
    try:
        job = await rollouts.start(path, body.swap, body.batch, body.pause_ms)
    except RolloutError as exc:
        raise APIError(409, "rollout_refused", str(exc)) from exc
    return job.public()


@router.post(
    "/v1/admin/import",
    response_model=JobOut,
    status_code=202,
    responses={**ERRORS, 409: ERRORS[422]},
    summary="Load precomputed vectors (.npy folder, .npz, .parquet) into the served gallery",
    description="Reads `source` from the server's import folder (`SDSSL_IMPORT_DIR`; off when "
    "unset) and stores its rows in batches, in the background, while reads and writes go on: "
    "the same checks and write path as `sdssl-import`. Vectors are in the "
    "gallery's space (what `/v1/embeddings` answers); a row that fails the API's checks is "
    "skipped and counted. Each batch is durable once the job's `done` counts it. Follow it at "
    "`GET /v1/admin/jobs/{id}` (or `sdssl_import_rows` in /metrics); stop it with "
    "`POST /v1/admin/jobs/{id}/cancel`. One job at a time: reloads and rollouts wait for it. "
    "Imported items keep no input image: a rollout lists them as needing re-upload.",
)
async def start_import(
    body: ImportIn, _: AuthDep, imports: ImportsDep, rollouts: RolloutsDep
) -> dict:
    try:
        job = await imports.start(body.source, body.resume, body.batch, body.pause_ms,
                                  rollout_running=lambda: rollouts.active is not None)  # fmt: skip
    except ImportRefused as exc:
        raise APIError(exc.status, exc.code, str(exc)) from exc
    return job.public()


def _live(rollouts: Rollouts, imports: Imports, job: Job) -> Job:
    """The running job's in-memory record in place of its last saved one."""
    return imports.get(job.id) or (
        rollouts.active.job
        if rollouts.active is not None and rollouts.active.job.id == job.id
        else job
    )


@router.get(
    "/v1/admin/jobs",
    response_model=JobsOut,
    responses=ERRORS,
    summary="Every recorded job (rollouts and imports), newest first",
)
async def list_jobs(_: AuthDep, rollouts: RolloutsDep, imports: ImportsDep) -> dict:
    jobs = await asyncio.to_thread(rollouts.jobs.all)
    return {"jobs": [_live(rollouts, imports, j).public() for j in jobs]}


@router.get(
    "/v1/admin/jobs/{job_id}",
    response_model=JobOut,
    responses=ERRORS,
    summary="A job's state and progress",
)
async def get_job(
    _: AuthDep, rollouts: RolloutsDep, imports: ImportsDep, job_id: str = JobId
) -> dict:
    job = imports.get(job_id) or await asyncio.to_thread(rollouts.get, job_id)
    if job is None:
        raise APIError(404, "not_found", f"no job {job_id}")
    return job.public()


@router.post(
    "/v1/admin/jobs/{job_id}/swap",
    response_model=JobOut,
    responses={**ERRORS, 409: ERRORS[422]},
    summary="Serve a rollout's bundle now that its indexes are complete (state ready)",
)
async def swap_job(_: AuthDep, rollouts: RolloutsDep, job_id: str = JobId) -> dict:
    return await _act(rollouts, job_id, Rollout.swap, "not_ready")


@router.post(
    "/v1/admin/jobs/{job_id}/cancel",
    response_model=JobOut,
    responses={**ERRORS, 409: ERRORS[422]},
    summary="Stop a rollout (the served bundle is untouched; a later rollout starts afresh) or "
    "an import (after the batch being written; the batches written stay)",
)
async def cancel_job(
    _: AuthDep, rollouts: RolloutsDep, imports: ImportsDep, job_id: str = JobId
) -> dict:
    running = imports.active
    if running is not None and running.job.id == job_id:
        await running.end("cancelled")
        return running.job.public()
    return await _act(rollouts, job_id, Rollout.cancel, "not_active")


async def _act(
    rollouts: Rollouts, job_id: str, action: Callable[[Rollout], Awaitable[None]], code: str
) -> dict:
    """Run ``action`` on the running rollout ``job_id``: 404 unknown, 409 not running or
    refused."""
    rollout = _active(rollouts, job_id)
    try:
        await action(rollout)
    except RolloutError as exc:
        raise APIError(409, code, str(exc)) from exc
    return rollout.job.public()


def _active(rollouts: Rollouts, job_id: str) -> Rollout:
    rollout = rollouts.active
    if rollout is None or rollout.job.id != job_id:
        if rollouts.jobs.get(job_id) is None:
            raise APIError(404, "not_found", f"no job {job_id}")
        raise APIError(409, "not_active", f"job {job_id} is not running")
    return rollout
