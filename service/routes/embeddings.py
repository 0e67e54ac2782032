"""POST /v1/embeddings: images → embeddings at an exit depth chosen by depth or budget."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.deps import DecoderDep, MetricsDep, RuntimeDep, SettingsDep
from service.routes.common import (
    depth_or_budget,
    plan,
    read_payload,
    run_batched,
    timed_response,
)
from service.schemas import ERRORS, EmbeddingsOut, image_request_body

router = APIRouter(tags=["embeddings"])
OPTIONS = {
    "exit_depth": {"type": "integer", "description": "blocks to run (1..L)"},
    "budget_ms": {"type": "number", "description": "latency budget; the server picks the depth"},
}


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingsOut,
    responses=ERRORS,
    summary="Embed images at an exit depth, or at the deepest that fits a latency budget",
    description='Send images as multipart files `images` or JSON `{"images": [base64, ...]}`. '
    "Give `exit_depth` **or** `budget_ms` (query or body field); neither means full depth. "
    "The response and the headers `X-Exit-Depth` / `X-Elapsed-Ms` say what was done.",
    openapi_extra=image_request_body("images", True, OPTIONS),
)
async def embeddings(
    request: Request,
    runtime: RuntimeDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    decoder: DecoderDep,
) -> JSONResponse:
    payload = await read_payload(request, settings, "images")
    exit_depth, budget = depth_or_budget(request, payload, runtime)
    images = await decoder.prepare(payload.images, runtime.manifest.preprocess)
    timing = plan(request, runtime, settings, exit_depth, budget, len(images))
    vectors = await run_batched(runtime.embed(timing.exit_depth, images), metrics)
    body = {"dim": int(vectors.shape[1]), "embeddings": vectors.tolist()}
    return timed_response(body, timing, runtime, metrics)
