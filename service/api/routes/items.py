"""Items: add (upsert) images under client ids, read and delete them. Adding embeds each image
once, at the bundle's gallery depth (the space every depth's bridged queries search), and is
durable once answered."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from service.api.deps import (
    AdmissionDep,
    AuthDep,
    DecoderDep,
    MetricsDep,
    ReadDep,
    RuntimeDep,
    SettingsDep,
)
from service.api.encoding import encode_rows
from service.api.routes.common import read_payload, run_batched, scan
from service.api.schemas import ERRORS, DeletedOut, ItemOut, ItemPage, ItemsOut, image_request_body
from service.collection.cursors import MAX_CURSOR
from service.collection.ids import ID_RULE, MAX_ID, valid_id
from service.errors import APIError
from service.inference.engine import ALL_EXITS, gallery_graph, gallery_rows
from service.jsonio import loads_field, metadata_problem
from service.lifecycle.rollout import mirrored
from service.settings import Settings

router = APIRouter(tags=["items"])
ROUTE = "items"
MAX_PAGE = 1000
MAX_FILTER_QUERY = 16384  # characters of a listing's filter (within SDSSL_MAX_HEADER_BYTES)
ItemId = Path(
    min_length=1, max_length=MAX_ID, description="the client's item id", examples=["cat-1"]
)
OPTIONS = {
    "ids": {"type": "array", "items": {"type": "string"}, "description": "one id per image"},
    "metadata": {
        "type": "array",
        "items": {"type": "string"},
        "description": "optional: one JSON document per image (multipart: as JSON text)",
    },
}


def _ids(raw: object, n: int) -> list[str]:
    ids = [raw] if isinstance(raw, str) else (raw if raw is not None else [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise APIError(422, "invalid_ids", "ids must be strings, one per image")
    if len(ids) != n:
        raise APIError(422, "invalid_ids", f"{n} images need {n} ids, got {len(ids)}")
    for item_id in ids:
        if not valid_id(item_id):
            raise APIError(422, "invalid_ids", f"ids must be {ID_RULE}")
    if len(set(ids)) != len(ids):
        raise APIError(422, "invalid_ids", "ids repeat within the request")
    return ids


def _metadata(raw: object, n: int, from_text: bool, settings: Settings) -> list[Any]:
    """One document per image, each strict JSON within the depth and size limits.
    Multipart sends JSON text per image; JSON bodies send the documents themselves."""
    if raw is None or raw == []:
        return [None] * n
    if isinstance(raw, str) and from_text:
        raw = [raw]
    if not isinstance(raw, list) or (from_text and not all(isinstance(m, str) for m in raw)):
        raise APIError(422, "invalid_metadata", "metadata must be JSON documents, one per image")
    if len(raw) != n:
        raise APIError(422, "invalid_metadata", f"{n} images need {n} metadata fields or none")
    docs = [
        loads_field(m, f"metadata[{i}]", "invalid_metadata") if from_text else m
        for i, m in enumerate(raw)
    ]
    for i, doc in enumerate(docs):
        why = metadata_problem(doc, settings.max_metadata_depth, settings.max_metadata_bytes)
        if why is not None:
            raise APIError(422, "invalid_metadata", f"metadata[{i}] {why}")
    return docs


@router.post(
    "/v1/items",
    response_model=ItemsOut,
    responses=ERRORS,
    summary="Add or replace items (multipart: files `images`, one `ids` field per image)",
    description="Each image is embedded once, at the bundle's gallery depth (queries of every "
    "exit depth are bridged into that space), and stored under its id with optional JSON "
    "`metadata`. Same id replaces. Durable once answered.",
    openapi_extra=image_request_body("images", True, OPTIONS),
)
async def add_items(
    request: Request,
    _: AuthDep,
    admission: AdmissionDep,
    runtime: RuntimeDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    decoder: DecoderDep,
) -> dict:
    payload = await read_payload(request, settings, "images")
    ids_raw = payload.lists.get("ids", payload.fields.get("ids"))
    multipart = payload.multipart
    meta_raw = payload.lists.get("metadata") if multipart else payload.fields.get("metadata")
    ids = _ids(ids_raw, len(payload.images))
    metadata = _metadata(meta_raw, len(payload.images), multipart, settings)
    rollout = runtime.mirror
    keep = settings.keep_inputs
    side = settings.keep_input_side if keep or rollout is not None else None
    images, pngs = await decoder.prepare_kept(payload.images, runtime.manifest.preprocess, side)
    graph = gallery_graph(runtime.manifest)  # items are embedded once, at the gallery depth
    served = await run_batched(
        runtime.scheduler.run(images, admission=admission, route=ROUTE,
                              **({"all_exits": True} if graph is ALL_EXITS else
                                 {"exit_depth": graph})),
        metrics,
    )  # fmt: skip
    vectors = gallery_rows(runtime.manifest, served.output)
    # During a rollout the new bundle embeds the same inputs, outside the write lock.
    mirror_vectors = await rollout.embed(pngs) if rollout and pngs and rollout.target else None
    async with mirrored(runtime) as mirror:
        replaced = await asyncio.to_thread(
            runtime.index.upsert, ids, metadata, vectors, pngs if keep else None
        )
        if mirror is not None:
            if mirror is not rollout or mirror_vectors is None:  # the rollout began meanwhile
                mirror_vectors = await mirror.embed(pngs) if pngs else None
            await mirror.mirror_upsert(ids, metadata, mirror_vectors, pngs, keep)
    runtime.scheduler.answered(served, route=ROUTE)
    metrics.items.set(runtime.index.indexed())
    return {
        "model": runtime.bundle_id,
        "items": [{"id": i, "replaced": r} for i, r in zip(ids, replaced, strict=True)],
        "count": await asyncio.to_thread(runtime.index.count),
    }


@router.get(
    "/v1/items",
    response_model=ItemPage,
    responses=ERRORS,
    summary="List and count items, in id order, optionally filtered by metadata",
    description="`limit` items after `cursor` (the previous page's `next_cursor`), in id order: "
    "a scroll gives every item that exists throughout exactly once, and a replaced item at most "
    "once, whatever is written meanwhile and across a rollout. A cursor works only with the "
    "filter it was given with. A page stops short of `SDSSL_MAX_REPLY_BYTES`. `filter` is a "
    'JSON object on top-level metadata fields: `{"label": "7"}`, `{"label": {"in": '
    '["1", "7"]}}`, `{"score": {"gte": 0.5, "lt": 2}}`, `{"label": {"ne": "7"}}`. `count` '
    "is the number of items the filter selects (all items without one).",
)
async def list_items(
    request: Request,
    _: ReadDep,
    runtime: RuntimeDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=0, le=MAX_PAGE, examples=[100])] = 100,
    cursor: Annotated[
        str | None,
        Query(max_length=MAX_CURSOR, description="a page's next_cursor", examples=["bjEwMA"]),
    ] = None,
    filter: Annotated[
        str | None,
        Query(
            max_length=MAX_FILTER_QUERY,
            description="JSON object (URL-encoded)",
            examples=['{"label": {"in": ["3", "8"]}}'],
        ),
    ] = None,
) -> dict:
    spec = loads_field(filter, "filter", "invalid_filter") if filter else None
    cursors = request.app.state.cursors
    after = cursors.decode(cursor, spec) if cursor else None
    index = runtime.index
    items, last = await scan(index.page, limit, after, spec, settings.max_reply_bytes)
    count = await scan(index.count, spec)
    return {"model": runtime.bundle_id, "items": items, "count": count,
            "next_cursor": None if last is None else cursors.encode(last, spec)}  # fmt: skip


@router.get(
    "/v1/items/{item_id}/input",
    responses={**ERRORS, 200: {"content": {"image/png": {}}, "description": "the kept PNG"}},
    response_class=Response,
    summary="An item's kept input image (what a rollout re-embeds; the demo's thumbnails)",
)
async def get_item_input(_: ReadDep, runtime: RuntimeDep, item_id: str = ItemId) -> Response:
    png = await asyncio.to_thread(runtime.index.input_of, item_id)
    if png is None:
        raise APIError(404, "not_found", f"no kept input for item {item_id!r}")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})


@router.get(
    "/v1/items/{item_id:path}",
    response_model=ItemOut,
    responses=ERRORS,
    summary="One item (with its stored embedding, if asked)",
    description="`vector=true` adds the stored embedding: the item's one vector, in the space "
    "of the bundle's gallery depth (`exit_depth` in the answer), the space `/v1/embeddings` "
    "answers in and `/v1/search` takes vectors in.",
)
async def get_item(
    request: Request,
    _: ReadDep,
    runtime: RuntimeDep,
    item_id: str = ItemId,
    vector: Annotated[
        bool, Query(description="include the stored embedding", examples=[True])
    ] = False,
    encoding: Annotated[
        Literal["json", "base64", "base64-f16"], Query(examples=["base64"])
    ] = "json",
) -> dict:
    if "exit_depth" in request.query_params:  # items hold one vector now: say so, not ignore it
        raise APIError(422, "invalid_request", "an item holds one vector, in the gallery's space "
                       f"(depth {runtime.gallery_depth}): ask for it with vector=true")  # fmt: skip
    item = await asyncio.to_thread(runtime.index.get, item_id)
    if item is None:
        raise APIError(404, "not_found", f"no item {item_id!r}")
    if vector:
        stored = await asyncio.to_thread(runtime.index.vector, item_id)
        if stored is not None:
            item |= {"exit_depth": runtime.gallery_depth, "encoding": encoding,
                     "vector": encode_rows(stored[None], encoding)[0]}  # fmt: skip
    return item


@router.delete(
    "/v1/items/{item_id:path}",
    response_model=DeletedOut,
    responses=ERRORS,
    summary="Delete an item",
)
async def delete_item(
    _: AuthDep, runtime: RuntimeDep, metrics: MetricsDep, item_id: str = ItemId
) -> dict:
    async with mirrored(runtime) as mirror:
        deleted = await asyncio.to_thread(runtime.index.delete, item_id)
        if mirror is not None:
            await mirror.mirror_delete(item_id)
    if not deleted:
        raise APIError(404, "not_found", f"no item {item_id!r}")
    metrics.items.set(runtime.index.indexed())
    return {"id": item_id, "deleted": True}
