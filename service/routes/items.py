"""Items: add (upsert) images under client ids, read and delete them. Adding embeds every exit
depth in one pass of the all-exits graph and is durable once answered."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Path, Request

from service.deps import AuthDep, MetricsDep, RuntimeDep, SettingsDep
from service.errors import APIError
from service.routes.common import prepare_images, read_payload, run_batched
from service.schemas import ERRORS, DeletedOut, ItemOut, ItemsOut, image_request_body

router = APIRouter(tags=["items"])
MAX_ID = 256
ItemId = Path(min_length=1, max_length=MAX_ID, description="the client's item id")
OPTIONS = {
    "ids": {"type": "array", "items": {"type": "string"}, "description": "one id per image"},
    "metadata": {
        "type": "array",
        "items": {"type": "string"},
        "description": "optional: one JSON document per image",
    },
}


def _ids(raw: object, n: int) -> list[str]:
    ids = [raw] if isinstance(raw, str) else (raw if raw is not None else [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise APIError(422, "invalid_ids", "ids must be strings, one per image")
    if len(ids) != n:
        raise APIError(422, "invalid_ids", f"{n} images need {n} ids, got {len(ids)}")
    for item_id in ids:
        if not item_id or len(item_id) > MAX_ID or not item_id.isprintable():
            raise APIError(422, "invalid_ids", f"ids must be 1..{MAX_ID} printable characters")
    if len(set(ids)) != len(ids):
        raise APIError(422, "invalid_ids", "ids repeat within the request")
    return ids


def _metadata(raw: object, n: int) -> list:
    if raw is None or raw == []:
        return [None] * n
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(m, str) for m in raw):
        raise APIError(422, "invalid_metadata", "metadata must be JSON documents, one per image")
    if len(raw) != n:
        raise APIError(422, "invalid_metadata", f"{n} images need {n} metadata fields or none")
    out = []
    for i, text in enumerate(raw):
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError as exc:
            raise APIError(422, "invalid_metadata", f"metadata[{i}] is not JSON: {exc}") from exc
    return out


@router.post(
    "/v1/items",
    response_model=ItemsOut,
    responses=ERRORS,
    summary="Add or replace items (multipart: files `images`, one `ids` field per image)",
    description="Each image is embedded at every exit depth in one pass and stored under its "
    "id with optional JSON `metadata`. Same id replaces. Durable once answered.",
    openapi_extra=image_request_body("images", True, OPTIONS),
)
async def add_items(
    request: Request,
    _: AuthDep,
    runtime: RuntimeDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> dict:
    payload = await read_payload(request, settings, "images")
    ids_raw = payload.lists.get("ids", payload.fields.get("ids"))
    meta_raw = payload.lists.get("metadata", payload.fields.get("metadata"))
    if payload.lists == {} and isinstance(meta_raw, list):
        # JSON bodies send metadata documents directly rather than as JSON strings.
        meta_raw = [json.dumps(m) for m in meta_raw]
    ids = _ids(ids_raw, len(payload.images))
    metadata = _metadata(meta_raw, len(payload.images))
    images = await prepare_images(payload.images, runtime, settings)
    vectors = await run_batched(runtime.embed_all(images), metrics)  # [L, N, D]
    replaced = await asyncio.to_thread(
        runtime.index.upsert, ids, metadata, vectors.transpose(1, 0, 2)
    )
    for d, n in runtime.index.index_sizes().items():
        metrics.items.labels(str(d)).set(n)
    return {
        "model": runtime.bundle_id,
        "items": [{"id": i, "replaced": r} for i, r in zip(ids, replaced, strict=True)],
        "count": await asyncio.to_thread(runtime.index.count),
    }


@router.get("/v1/items/{item_id}", response_model=ItemOut, responses=ERRORS, summary="One item")
async def get_item(runtime: RuntimeDep, item_id: str = ItemId) -> dict:
    item = await asyncio.to_thread(runtime.index.get, item_id)
    if item is None:
        raise APIError(404, "not_found", f"no item {item_id!r}")
    return item


@router.delete(
    "/v1/items/{item_id}", response_model=DeletedOut, responses=ERRORS, summary="Delete an item"
)
async def delete_item(
    _: AuthDep, runtime: RuntimeDep, metrics: MetricsDep, item_id: str = ItemId
) -> dict:
    if not await asyncio.to_thread(runtime.index.delete, item_id):
        raise APIError(404, "not_found", f"no item {item_id!r}")
    for d, n in runtime.index.index_sizes().items():
        metrics.items.labels(str(d)).set(n)
    return {"id": item_id, "deleted": True}
