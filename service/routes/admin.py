"""POST /v1/admin/reload: load a new bundle beside the old one and swap atomically."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from export.manifest import BundleIntegrityError
from service import snapshots
from service.deps import AuthDep, HolderDep, MetricsDep, RuntimeDep, SettingsDep
from service.errors import APIError, StorageError
from service.index import IndexMismatch, WriterLockHeld
from service.runtime import load_runtime, report_device
from service.schemas import ERRORS, ReloadIn, ReloadOut, SnapshotOut

router = APIRouter(tags=["admin"])
SNAPSHOT_NAME = re.compile(r"^[0-9a-f]{12}-\d{8}T\d{6}Z\.tar$")
log = logging.getLogger(__name__)


def _reason(exc: Exception) -> str:
    """What the client may know: the bundle's own problem, never paths or errno text of the
    server's filesystem (those go to the log)."""
    if isinstance(exc, BundleIntegrityError | IndexMismatch):
        return str(exc)
    if isinstance(exc, WriterLockHeld):
        return f"its index is held by another writer (pid {exc.pid})"
    if isinstance(exc, StorageError):
        return str(exc)
    return f"it could not be loaded ({type(exc).__name__}; details in the server log)"


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
    async with holder.reload_lock:
        # Bundles swapped out earlier must have closed (and released their index's writer
        # lock): reloading one of them again would otherwise find its index still locked.
        await asyncio.gather(*request.app.state.background, return_exceptions=True)
        old = holder.current
        path = Path(body.bundle)
        try:
            new = await load_runtime(settings, path, metrics, current=old)
        except Exception as exc:  # whatever failed, the old bundle keeps serving
            metrics.reloads.labels("failed").inc()
            log.warning("reload of %s failed: %r", path, exc)
            raise APIError(409, "reload_failed", f"bundle refused: {_reason(exc)}") from exc
        same = old is not None and new.index is old.index
        holder.current = new
        report_device(new, metrics)
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
            "items": await asyncio.to_thread(new.index.count),
        }


@router.post(
    "/v1/admin/snapshot",
    response_model=SnapshotOut,
    responses=ERRORS,
    summary="Write a consistent snapshot of the served bundle's items (one tar file)",
    description="SQLite's `VACUUM INTO` on a connection of its own: writers are not blocked and "
    "the snapshot holds every item acknowledged before this request. Download it from "
    "`GET /v1/admin/snapshots/{name}`; restore with `python -m service.restore FILE`.",
)
async def snapshot(_: AuthDep, runtime: RuntimeDep, settings: SettingsDep) -> dict:
    made = await asyncio.to_thread(
        snapshots.create, runtime.index.root, runtime.bundle_id, settings.data_dir / "snapshots"
    )
    return {"name": made.path.name, "model": made.bundle_id, "items": made.items,
            "bytes": made.bytes, "seconds": round(made.seconds, 3)}  # fmt: skip


@router.get(
    "/v1/admin/snapshots/{name}",
    responses={**ERRORS, 200: {"content": {"application/x-tar": {}}}},
    response_class=FileResponse,
    summary="Download a snapshot",
)
async def download_snapshot(_: AuthDep, settings: SettingsDep, name: str) -> FileResponse:
    if not SNAPSHOT_NAME.match(name):
        raise APIError(404, "not_found", "no such snapshot")
    path = settings.data_dir / "snapshots" / name
    if not path.is_file():
        raise APIError(404, "not_found", "no such snapshot")
    return FileResponse(path, media_type="application/x-tar", filename=name)
