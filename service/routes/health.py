"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import DecoderDep, HolderDep, MetricsDep
from service.errors import error_body

router = APIRouter(tags=["health"])


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
    problem = await asyncio.to_thread(runtime.index.health)
    if problem is not None:
        body = error_body("storage_unavailable", problem)
        return JSONResponse(body, 503, headers={"Retry-After": "30"})
    body = {"status": "ready", "model": runtime.bundle_id, "device": runtime.engine.device}
    return JSONResponse(body | {"index_device": runtime.index.device})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(holder: HolderDep, m: MetricsDep, decoder: DecoderDep) -> Response:
    if holder.current is not None:
        m.queue_depth.set(holder.current.scheduler.batcher.queued_images)
    m.decode_pending.set(decoder.pending_pixels)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
