"""POST /v1/search: nearest items to an image (or a vector). An image is embedded at the exit
depth its budget allows and that embedding, bridged into the gallery depth's space by the
graph itself, searches the one gallery every depth shares; a vector is taken as already in
that space (what ``/v1/embeddings`` answers)."""

from __future__ import annotations

import asyncio
import functools

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import AdmissionDep, DecoderDep, MetricsDep, ReadDep, RuntimeDep, SettingsDep
from service.api.encoding import decode_vector
from service.api.routes.common import (
    check_depth,
    fields,
    read_payload,
    run_batched,
    scan,
    timed_response,
)
from service.api.routes.params import BatchSearchParams, SearchParams, parse, schema
from service.api.schemas import ERRORS, BatchSearchOut, SearchOut, image_request_body
from service.collection.vectors import unit_rows
from service.errors import APIError
from service.inference import Admission, Served
from service.inference.decoding import DecodePool
from service.jsonio import loads_field, stored_json
from service.lifecycle.runtime import Runtime
from service.metrics import Metrics
from service.settings import Settings

router = APIRouter(tags=["search"])
ROUTE = "search"


def _vector(raw, dim: int) -> np.ndarray:
    decoded = decode_vector(raw, dim)  # base64 float32/float16
    if decoded is not None:
        raw = decoded.tolist()
    elif isinstance(raw, str):  # multipart: a JSON list in a text field
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
    unit, good = unit_rows(vec[None])
    if not good[0]:
        raise APIError(422, "invalid_vector", "vector must have a non-zero, finite norm")
    return unit


@router.post(
    "/v1/search",
    response_model=SearchOut,
    responses=ERRORS,
    summary="Find the k nearest items to an image or a vector",
    description="One image (multipart `image` or JSON base64 `image`) embedded at `exit_depth` "
    "or within `budget_ms`, then searched against the gallery (items are embedded once, at "
    "`gallery_depth`; the query is bridged into that space); or a `vector` in the gallery's "
    "space (as `/v1/embeddings` answers). Scores are cosine similarity; `filter` restricts the "
    "candidates by metadata (exact under the filter for Flat indexes).",
    openapi_extra=image_request_body("image", False, schema(SearchParams)),
)
async def search(
    request: Request,
    _: ReadDep,
    admission: AdmissionDep,
    runtime: RuntimeDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    decoder: DecoderDep,
) -> Response:
    payload = await read_payload(request, settings, "image")
    params = parse(SearchParams, fields(request, payload))
    vectors = None if params.vector is None else [params.vector]
    if vectors is None and len(payload.images) != 1:
        raise APIError(422, "invalid_request", "send exactly one image (or a vector)")
    served, results = await _search(request, payload.images, vectors, params, admission,
                                    runtime, metrics, decoder, settings)  # fmt: skip
    route = ROUTE if served.ran is not None else f"{ROUTE}:vector"
    body = {"gallery_depth": runtime.gallery_depth, "results": results[0]}
    return timed_response(request, body, served, runtime, metrics, route)


@router.post(
    "/v1/search/batch",
    response_model=BatchSearchOut,
    responses=ERRORS,
    summary="Many searches in one request: images or vectors, one budget for all",
    description="Images (multipart files `images` or JSON base64 `images`) embedded together at "
    "one exit depth chosen by `exit_depth` or `budget_ms` for the whole request; or `vectors` "
    "in the gallery's space (JSON lists or base64 strings). `results[i]` answers query i, the "
    "same as `/v1/search` would; `k` and `filter` apply to every query.",
    openapi_extra=image_request_body("images", True, schema(BatchSearchParams)),
)
async def search_batch(
    request: Request,
    _: ReadDep,
    admission: AdmissionDep,
    runtime: RuntimeDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    decoder: DecoderDep,
) -> Response:
    payload = await read_payload(request, settings, "images")
    params = parse(BatchSearchParams, fields(request, payload))
    vectors = params.vectors
    if isinstance(vectors, str):  # multipart or query: a JSON list of vectors
        vectors = loads_field(vectors, "vectors", "invalid_vector")
    if vectors is not None and (not isinstance(vectors, list) or not vectors):
        raise APIError(422, "invalid_vector", "vectors must be a non-empty list")
    if vectors is not None and len(vectors) > settings.max_images:
        raise APIError(
            413, "too_many_queries", f"at most {settings.max_images} queries (SDSSL_MAX_IMAGES)"
        )
    served, results = await _search(request, payload.images, vectors, params, admission,
                                    runtime, metrics, decoder, settings)  # fmt: skip
    route = f"{ROUTE}:batch" if served.ran is not None else f"{ROUTE}:vector"
    body = {"gallery_depth": runtime.gallery_depth, "results": results}
    return timed_response(request, body, served, runtime, metrics, route)


async def _search(
    request: Request,
    images: list[bytes],
    vectors: list | None,
    params: SearchParams | BatchSearchParams,
    admission: Admission,
    runtime: Runtime,
    metrics: Metrics,
    decoder: DecodePool,
    settings: Settings,
) -> tuple[Served, list[list[dict]]]:
    """Embed the images (or take the vectors) and search the gallery with each."""
    if vectors is None or params.exit_depth != runtime.gallery_depth:  # a vector may name it
        check_depth(params.exit_depth, runtime)
    queries = len(vectors) if vectors is not None else len(images)
    if queries * params.k > settings.max_search_results:
        raise APIError(
            422,
            "too_many_results",
            f"{queries} queries × k = {params.k} asks for {queries * params.k} hits; the limit "
            f"is {settings.max_search_results} per request (SDSSL_MAX_SEARCH_RESULTS)",
        )
    if vectors is not None:
        if images:
            raise APIError(422, "invalid_request", "send images or vectors, not both")
        if params.budget_ms is not None:
            raise APIError(422, "invalid_request", "budget_ms is for images: a vector runs no "
                           "graph (it is searched as it is, in the gallery's space)")  # fmt: skip
        dim = runtime.manifest.model.dim
        query = np.concatenate([_vector(v, dim) for v in vectors])
        served = runtime.scheduler.without_compute(
            admission=admission, route=f"{ROUTE}:vector",
            exit_depth=params.exit_depth or runtime.gallery_depth,
        )  # fmt: skip
    else:
        prepared = await decoder.prepare(images, runtime.manifest.preprocess)
        served = await run_batched(
            runtime.scheduler.run(prepared, admission=admission, route=ROUTE,
                                  exit_depth=params.exit_depth, budget_ms=params.budget_ms),
            metrics,
        )  # fmt: skip
        query = served.output
    spec = params.filter
    if isinstance(spec, str):  # multipart or query: JSON text
        spec = loads_field(spec, "filter", "invalid_filter")
    run = functools.partial(runtime.index.search, query, params.k, spec, params.metadata,
                            settings.max_reply_bytes)  # fmt: skip
    found = await (scan(run) if spec is not None else asyncio.to_thread(run))
    if not params.metadata:
        return served, [[{"id": h.id, "score": h.score} for h in hits] for hits in found]
    results = [[{"id": h.id, "score": h.score, "metadata": stored_json(h.metadata_json)}
                for h in hits] for hits in found]  # fmt: skip
    return served, results
