"""What every inference route shares: reading images and fields from multipart or base64 JSON,
and the response with its timing block. Decoding is :mod:`service.inference.decoding`'s,
choosing the depth the scheduler's (:mod:`service.inference`)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from fastapi import Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.encoding import npy_response
from service.api.responses import FastJSONResponse
from service.errors import APIError
from service.inference import Overloaded, Served
from service.jsonio import loads_strict
from service.lifecycle.runtime import Runtime
from service.metrics import Metrics
from service.settings import Settings

T = TypeVar("T")
SCAN_THREADS = 2
_scans: ThreadPoolExecutor | None = None
MULTIPART = "multipart/form-data"
INLINE_JSON_BYTES = 256 * 1024  # larger JSON bodies are parsed on a worker thread
JSON = "application/json"


@dataclass
class Payload:
    """Image bytes and the other fields of a request, whatever its encoding."""

    images: list[bytes] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)
    multipart: bool = False  # fields are text (multipart) rather than parsed JSON values


async def read_payload(request: Request, settings: Settings, image_field: str) -> Payload:
    """Parse multipart (files under ``image_field``) or JSON (base64 strings) into a Payload."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    payload = Payload(multipart=ctype == MULTIPART)
    if ctype == MULTIPART:
        try:
            async with request.form(  # the context closes the uploads' spooled temp files
                max_files=settings.max_images,
                max_fields=form_fields(settings),
                max_part_size=settings.max_body_bytes,
            ) as form:
                for key, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        if key != image_field:
                            raise APIError(422, "invalid_request", f"unexpected file field {key!r}")
                        payload.images.append(await value.read())
                    else:
                        payload.lists.setdefault(key, []).append(value)
                        payload.fields[key] = value
        except StarletteHTTPException as exc:
            raise _form_limit(exc, settings) from exc
        return payload
    if ctype == JSON:
        raw_body = await request.body()
        if len(raw_body) > INLINE_JSON_BYTES:  # parsing and base64 of megabytes: off the loop
            return await asyncio.to_thread(_json_payload, raw_body, image_field, payload)
        return _json_payload(raw_body, image_field, payload)
    raise APIError(
        415, "unsupported_media_type", f"send {MULTIPART} or {JSON}, not {ctype or 'nothing'}"
    )


def form_fields(settings: Settings) -> int:
    """Text fields a multipart request may have: an id and a metadata document per image, and
    room for the route's own fields."""
    return 4 * settings.max_images + 16


def _form_limit(exc: StarletteHTTPException, settings: Settings) -> Exception:
    """Starlette's multipart refusals (a 400 naming its own counters) as ours: 413 naming the
    limit the client can act on."""
    text = str(exc.detail)
    if exc.status_code != 400:
        return exc  # e.g. the body cap's 413, already ours
    if text.startswith("Too many files"):
        return APIError(413, "too_many_images", f"at most {settings.max_images} images per "
                        "request (SDSSL_MAX_IMAGES)")  # fmt: skip
    if text.startswith("Too many fields"):
        return APIError(413, "too_many_fields", f"at most {form_fields(settings)} form fields "
                        "per request (4 per image, SDSSL_MAX_IMAGES, and 16 more)")  # fmt: skip
    return APIError(400, "malformed_multipart", f"malformed multipart body: {text[:200]}")


def _json_payload(raw_body: bytes, image_field: str, payload: Payload) -> Payload:
    """A JSON body: strict JSON, images as base64 strings under ``image_field``."""
    body = loads_strict(raw_body)
    if not isinstance(body, dict):
        raise APIError(422, "invalid_request", "JSON body must be an object")
    raw = body.pop(image_field, None)
    items = raw if isinstance(raw, list) else ([] if raw is None else [raw])
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise APIError(422, "invalid_request", f"{image_field}[{i}] must be a base64 string")
        try:
            payload.images.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise APIError(422, "invalid_base64", f"{image_field}[{i}] is not base64") from exc
    payload.fields = body
    return payload


def fields(request: Request, payload: Payload) -> dict[str, Any]:
    """The request's non-image fields: the body's, overridden by the query string's."""
    return {**payload.fields, **request.query_params}


def check_depth(exit_depth: int | None, runtime: Runtime) -> None:
    if exit_depth is not None and exit_depth not in runtime.exit_depths:
        raise APIError(
            422,
            "unknown_exit_depth",
            f"exit_depth {exit_depth} is not served (available: {runtime.exit_depths})",
        )


def timed_response(
    request: Request,
    body: dict[str, Any],
    served: Served,
    runtime: Runtime,
    metrics: Metrics,
    route: str,
    npy: np.ndarray | None = None,
) -> Response:
    """The response of an inference route: ``body`` + model, exit depth and timing (the
    scheduler learns from it), with the depth and elapsed time in ``X-Exit-Depth`` /
    ``X-Elapsed-Ms`` too (the intake middleware's per-depth latency metric reads the former) —
    or, given ``npy`` rows, those rows as one .npy body with the rest
    in headers."""
    timing = runtime.scheduler.answered(served, route=route)
    if served.budget_ms is not None:
        metrics.budget.labels("met" if timing["budget_met"] else "missed").inc()
    headers = {"X-Exit-Depth": str(served.exit_depth),
               "X-Elapsed-Ms": f"{timing['elapsed_ms']:.3f}"}  # fmt: skip
    if npy is not None:
        headers |= {"X-Model": runtime.bundle_id, "X-Gallery-Depth": str(runtime.gallery_depth),
                    "X-Predicted-Ms": str(timing["predicted_ms"]),
                    "X-Budget-Met": str(timing["budget_met"]).lower()}  # fmt: skip
        return npy_response(npy, headers)
    content = {"model": runtime.bundle_id, "exit_depth": served.exit_depth, **body,
               "timing": timing}  # fmt: skip
    return FastJSONResponse(content, headers=headers)


async def run_batched(coro: Awaitable[T], metrics: Metrics) -> T:
    """Await a scheduler run; overload becomes 503 with Retry-After."""
    try:
        return await coro
    except Overloaded as exc:
        metrics.overloaded.inc()
        raise APIError(
            503, "overloaded", str(exc), {"Retry-After": str(exc.retry_after_s)}
        ) from exc


async def scan(fn: Callable[..., T], *args: Any) -> T:
    """Run an index read that scans (a metadata filter, a count, a listing page) on the scan
    threads: however many such reads queue up, item writes, plain searches and health checks
    keep the default executor's threads to themselves."""
    global _scans
    if _scans is None:
        _scans = ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="scan")
    return await asyncio.get_running_loop().run_in_executor(_scans, functools.partial(fn, *args))
