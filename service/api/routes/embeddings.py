"""POST /v1/embeddings: images → embeddings at an exit depth chosen by depth or budget."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import AdmissionDep, DecoderDep, MetricsDep, ReadDep, RuntimeDep, SettingsDep
from service.api.encoding import encode_rows, wants_npy
from service.api.routes.common import check_depth, fields, read_payload, run_batched, timed_response
from service.api.routes.params import EmbedParams, parse, schema
from service.api.schemas import ERRORS, EmbeddingsOut, image_request_body

router = APIRouter(tags=["embeddings"])
ROUTE = "embeddings"


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingsOut,
    responses=ERRORS,
    summary="Embed images at an exit depth, or at the deepest that fits a latency budget",
    description='Send images as multipart files `images` or JSON `{"images": [base64, ...]}`. '
    "Give `exit_depth` **or** `budget_ms` (query or body field); neither means full depth. "
    "The response and the headers `X-Exit-Depth` / `X-Elapsed-Ms` say what was done. Rows "
    "are in the space of the bundle's gallery depth (`gallery_depth`): the graph bridges its "
    "exit's embedding there, so a row searches the gallery as `/v1/search`'s `vector`; "
    "`space=raw` answers the exit's own embedding instead (before the bridge). "
    "`encoding=base64` (float32) or `base64-f16` makes the rows compact; "
    "`Accept: application/x-npy` answers one .npy file with the timing in headers.",
    openapi_extra=image_request_body("images", True, schema(EmbedParams)),
)
async def embeddings(
    request: Request,
    _: ReadDep,
    admission: AdmissionDep,
    runtime: RuntimeDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    decoder: DecoderDep,
) -> Response:
    payload = await read_payload(request, settings, "images")
    params = parse(EmbedParams, fields(request, payload))
    check_depth(params.exit_depth, runtime)
    images = await decoder.prepare(payload.images, runtime.manifest.preprocess)
    served = await run_batched(
        runtime.scheduler.run(images, admission=admission, route=ROUTE,
                              exit_depth=params.exit_depth, budget_ms=params.budget_ms),
        metrics,
    )  # fmt: skip
    rows = np.ascontiguousarray(served.raw if params.space == "raw" else served.output)
    if wants_npy(request.headers.get("accept")):
        return timed_response(request, {}, served, runtime, metrics, ROUTE, npy=rows)
    body = {"gallery_depth": runtime.gallery_depth, "space": params.space,
            "dim": int(rows.shape[1]), "encoding": params.encoding,
            "embeddings": encode_rows(rows, params.encoding)}  # fmt: skip
    return timed_response(request, body, served, runtime, metrics, ROUTE)
