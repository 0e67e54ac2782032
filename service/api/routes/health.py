"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import DecoderDep, HolderDep, MetricsDep, ReadDep
from service.errors import error_body

router = APIRouter(tags=["health"])
# /readyz's storage check runs on a thread of its own: never queued behind index work
_health = ThreadPoolExecutor(1, thread_name_prefix="health")


@router.get("/livez", summary="The process is up")
async def livez() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Bundle loaded, every depth warmed, indexes loaded, storage writable (else 503)",
    description="503 while loading, and while the data dir is missing, read-only or below "
    "`SDSSL_MIN_FREE_BYTES` free (writes would fail); 200 again once it recovers.",
)
async def readyz(request: Request, holder: HolderDep) -> JSONResponse:
    runtime = holder.current
    if runtime is None or request.app.state.warming:
        error = request.app.state.load_error
        message = f"failed to load: {error}" if error else "loading"
        return JSONResponse(error_body("not_ready", message), 503, headers={"Retry-After": "5"})
    problem = await asyncio.get_running_loop().run_in_executor(_health, runtime.index.health)
    if problem is not None:
        body = error_body("storage_unavailable", problem)
        return JSONResponse(body, 503, headers={"Retry-After": "30"})
    body = {"status": "ready", "model": runtime.bundle_id, "device": runtime.engine.device}
    return JSONResponse(body | {"index_device": runtime.index.device})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Needs the read key when one is set (a scraper's `authorization` credentials).",
    response_class=Response,
)
async def metrics(_: ReadDep, holder: HolderDep, m: MetricsDep, decoder: DecoderDep) -> Response:
    if holder.current is not None:
        m.queue_depth.set(holder.current.scheduler.batcher.queued_images)
    m.decode_pending.set(decoder.pending_pixels)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
