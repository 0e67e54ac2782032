"""What every inference route shares: reading images from multipart or base64 JSON, choosing
the exit depth (explicit, or from a latency budget), and the timing block of the response.
Decoding the images is :mod:`service.decoding`'s."""

from __future__ import annotations

import base64
import binascii
import math
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from service.batcher import Overloaded
from service.errors import APIError
from service.jsonio import loads_strict
from service.metrics import Metrics
from service.planner import choose_depth, predict_ms
from service.runtime import Runtime
from service.settings import Settings

MULTIPART = "multipart/form-data"
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
        async with request.form(  # the context closes the uploads' spooled temp files
            max_files=settings.max_images + 1,
            max_fields=4 * settings.max_images + 16,
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
        return payload
    if ctype == JSON:
        body = loads_strict(await request.body())
        if not isinstance(body, dict):
            raise APIError(422, "invalid_request", "JSON body must be an object")
        raw = body.pop(image_field, None)
        items = raw if isinstance(raw, list) else ([] if raw is None else [raw])
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise APIError(
                    422, "invalid_request", f"{image_field}[{i}] must be a base64 string"
                )
            try:
                payload.images.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise APIError(422, "invalid_base64", f"{image_field}[{i}] is not base64") from exc
        payload.fields = body
        return payload
    raise APIError(
        415, "unsupported_media_type", f"send {MULTIPART} or {JSON}, not {ctype or 'nothing'}"
    )


def parse_number(value: Any, name: str, kind: type) -> Any:
    """A query or body field as ``kind`` (int or float); None when absent; 422 otherwise."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise APIError(422, "invalid_request", f"{name} must be a number")
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(inf)
        raise APIError(422, "invalid_request", f"{name} must be {kind.__name__}") from exc
    if kind is int and isinstance(value, float) and value != number:
        raise APIError(422, "invalid_request", f"{name} must be an integer")
    return number


def depth_or_budget(
    request: Request, payload: Payload, runtime: Runtime
) -> tuple[int | None, float | None]:
    """``exit_depth`` or ``budget_ms`` from the query string or the body; never both."""
    q = request.query_params
    exit_depth = parse_number(
        q.get("exit_depth", payload.fields.get("exit_depth")), "exit_depth", int
    )
    budget = parse_number(q.get("budget_ms", payload.fields.get("budget_ms")), "budget_ms", float)
    if exit_depth is not None and budget is not None:
        raise APIError(422, "invalid_request", "give exit_depth or budget_ms, not both")
    if exit_depth is not None and exit_depth not in runtime.exit_depths:
        raise APIError(
            422,
            "unknown_exit_depth",
            f"exit_depth {exit_depth} is not served (available: {runtime.exit_depths})",
        )
    if budget is not None and (not math.isfinite(budget) or budget <= 0):
        raise APIError(422, "invalid_budget", "budget_ms must be a finite number > 0")
    return exit_depth, budget


@dataclass
class Timing:
    exit_depth: int
    budget_ms: float | None
    predicted_ms: float
    fits: bool
    arrival: float
    overhead_ms: float  # the calibration term included in predicted_ms

    def elapsed_ms(self) -> float:
        return 1000 * (time.perf_counter() - self.arrival)

    def block(self, runtime: Runtime, metrics: Metrics) -> dict[str, Any]:
        """The response's timing; also feeds the runtime's calibration."""
        elapsed = self.elapsed_ms()
        runtime.observe_residual(elapsed, self.predicted_ms - self.overhead_ms)
        met = self.fits and (self.budget_ms is None or elapsed <= self.budget_ms)
        if self.budget_ms is not None:
            metrics.budget.labels("met" if met else "missed").inc()
        return {
            "budget_ms": self.budget_ms,
            "predicted_ms": round(self.predicted_ms, 3),
            "elapsed_ms": round(elapsed, 3),
            "budget_met": met if self.budget_ms is not None else None,
        }


def plan(
    request: Request,
    runtime: Runtime,
    settings: Settings,
    exit_depth: int | None,
    budget: float | None,
    n: int,
) -> Timing:
    """Fix the exit depth for this request: explicit, planned from the budget, or the deepest."""
    arrival = request.scope["state"]["arrival"]
    elapsed = 1000 * (time.perf_counter() - arrival)
    depths = runtime.exit_depths
    queue = runtime.batcher.state()
    if budget is not None:
        p = choose_depth(
            runtime.latency, depths, budget, n, queue, settings.max_wait_ms, elapsed,
            runtime.overhead_ms,
        )  # fmt: skip
        timing = Timing(p.exit_depth, budget, p.predicted_ms, p.fits, arrival, runtime.overhead_ms)
    else:
        d = exit_depth if exit_depth is not None else depths[-1]
        predicted = predict_ms(
            runtime.latency, d, n, queue, settings.max_wait_ms, elapsed, runtime.overhead_ms
        )
        timing = Timing(d, None, predicted, True, arrival, runtime.overhead_ms)
    request.scope["state"]["exit_depth"] = timing.exit_depth
    return timing


def timed_response(
    body: dict[str, Any], timing: Timing, runtime: Runtime, metrics: Metrics
) -> JSONResponse:
    """The JSON response of an inference route: ``body`` + model, exit depth and timing, with
    the same depth and elapsed time in ``X-Exit-Depth`` / ``X-Elapsed-Ms``."""
    block = timing.block(runtime, metrics)
    content = {"model": runtime.bundle_id, "exit_depth": timing.exit_depth, **body, "timing": block}
    headers = {"X-Exit-Depth": str(timing.exit_depth), "X-Elapsed-Ms": f"{block['elapsed_ms']:.3f}"}
    return JSONResponse(content, headers=headers)


async def run_batched(coro, metrics: Metrics):
    """Await a batcher submission; overload becomes 503 with Retry-After."""
    try:
        return await coro
    except Overloaded as exc:
        metrics.overloaded.inc()
        raise APIError(
            503, "overloaded", str(exc), {"Retry-After": str(exc.retry_after_s)}
        ) from exc
