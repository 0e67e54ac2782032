"""POST /v1/search: nearest items to an image (or a vector) at one exit depth."""

from __future__ import annotations

import asyncio
import math

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.deps import AdmissionDep, DecoderDep, MetricsDep, RuntimeDep, SettingsDep
from service.errors import APIError
from service.jsonio import loads_field
from service.routes.common import check_depth, fields, read_payload, run_batched, timed_response
from service.routes.params import SearchParams, parse, schema
from service.schemas import ERRORS, SearchOut, image_request_body

router = APIRouter(tags=["search"])
ROUTE = "search"


def _vector(raw, dim: int) -> np.ndarray:
    if isinstance(raw, str):  # multipart: a JSON list in a text field
        raw = loads_field(raw, "vector", "invalid_vector")
    if not isinstance(raw, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in raw
    ):
        raise APIError(422, "invalid_vector", "vector must be a list of numbers")
    if len(raw) != dim:
        raise APIError(422, "invalid_vector", f"vector has {len(raw)} values; expected {dim}")
    try:
        vec = np.asarray(raw, dtype=np.float64)
    except OverflowError as exc:  # an integer too large for a float
        raise APIError(422, "invalid_vector", "vector values must be finite numbers") from exc
    if not np.isfinite(vec).all():
        raise APIError(422, "invalid_vector", "vector contains NaN or infinity")
    norm = float(np.linalg.norm(vec))
    if norm == 0.0 or not math.isfinite(norm):
        raise APIError(422, "invalid_vector", "vector must have a non-zero, finite norm")
    return (vec / norm).astype(np.float32)[None]


@router.post(
    "/v1/search",
    response_model=SearchOut,
    responses=ERRORS,
    summary="Find the k nearest items to an image or a vector",
    description="One image (multipart `image` or JSON base64 `image`) embedded at `exit_depth` "
    "or within `budget_ms`; or a `vector` with its `exit_depth`. Scores are cosine similarity.",
    openapi_extra=image_request_body("image", False, schema(SearchParams)),
)
async def search(
    request: Request,
    admission: AdmissionDep,
    runtime: RuntimeDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    decoder: DecoderDep,
) -> JSONResponse:
    payload = await read_payload(request, settings, "image")
    params = parse(SearchParams, fields(request, payload))
    check_depth(params.exit_depth, runtime)
    arrival = request.scope["state"]["arrival"]
    if params.vector is not None:
        if payload.images:
            raise APIError(422, "invalid_request", "send an image or a vector, not both")
        if params.exit_depth is None:
            raise APIError(422, "invalid_request", "a vector needs the exit_depth it came from")
        query = _vector(params.vector, runtime.manifest.model.dim)
        served = runtime.scheduler.without_compute(
            admission=admission, route=f"{ROUTE}:vector", arrival=arrival,
            exit_depth=params.exit_depth,
        )  # fmt: skip
    else:
        if len(payload.images) != 1:
            raise APIError(422, "invalid_request", "send exactly one image (or a vector)")
        images = await decoder.prepare(payload.images, runtime.manifest.preprocess)
        served = await run_batched(
            runtime.scheduler.run(images, admission=admission, route=ROUTE, arrival=arrival,
                                  exit_depth=params.exit_depth, budget_ms=params.budget_ms),
            metrics,
        )  # fmt: skip
        query = served.output
    hits = (await asyncio.to_thread(runtime.index.search, served.exit_depth, query, params.k))[0]
    results = [{"id": h.id, "score": h.score, "metadata": h.metadata} for h in hits]
    route = ROUTE if served.ran is not None else f"{ROUTE}:vector"
    return timed_response(request, {"results": results}, served, runtime, metrics, route)
