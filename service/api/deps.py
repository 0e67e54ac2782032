"""Typed dependencies: settings, metrics, the decode pool, the current runtime, the API-key check.

All are ``async def``: FastAPI runs plain ``def`` dependencies in a thread pool, a thread hop per
dependency per request that showed up in profiles of the request path.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from service.api.middleware import intake
from service.errors import APIError
from service.inference import Admission
from service.inference.decoding import DecodePool
from service.lifecycle.imports import Imports
from service.lifecycle.rollouts import Rollouts
from service.lifecycle.runtime import Runtime, RuntimeHolder
from service.metrics import Metrics
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_decoder(request: Request) -> DecodePool:
    return request.app.state.decoder


async def get_holder(request: Request) -> RuntimeHolder:
    return request.app.state.holder


async def get_rollouts(request: Request) -> Rollouts:
    return request.app.state.rollouts


async def get_imports(request: Request) -> Imports:
    return request.app.state.imports


async def get_runtime(request: Request) -> AsyncIterator[Runtime]:
    """The runtime serving now, pinned (kept open) for the whole request."""
    runtime = request.app.state.holder.current
    if runtime is None:
        raise APIError(503, "not_ready", "the model is still loading", {"Retry-After": "5"})
    runtime.active += 1
    try:
        yield runtime
    finally:
        runtime.active -= 1


async def admit_inference(
    runtime: Annotated[Runtime, Depends(get_runtime)],
) -> AsyncIterator[Admission]:
    """An inference request is in flight (for the batcher's company rule) from its arrival —
    this runs before the body is read — until it reaches the scheduler or ends; admitted by
    the very runtime the request is pinned to (FastAPI resolves ``get_runtime`` once)."""
    admission = runtime.scheduler.admit(arrival=intake().arrival)
    try:
        yield admission
    finally:
        admission.close()


# Declared as FastAPI security schemes so that OpenAPI and /docs' Authorize know them; the
# checks stay ours (auto_error=False): one error shape, keys compared in constant time.
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", scheme_name="APIKey", auto_error=False,
    description="the admin key (SDSSL_API_KEY), or the read key on read routes",
)  # fmt: skip
BEARER = HTTPBearer(
    scheme_name="Bearer", auto_error=False,
    description="Authorization: Bearer <key> — the same keys as X-API-Key",
)  # fmt: skip
HeaderKey = Annotated[str | None, Security(API_KEY_HEADER)]
BearerKey = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]


def _matches(given: str, key: SecretStr | None) -> bool:
    return key is not None and hmac.compare_digest(given.encode(), key.get_secret_value().encode())


def _check(given: str | None, keys: list[SecretStr | None]) -> None:
    """Pass when no key is configured, or the request carries one of ``keys``; else 401."""
    if all(k is None for k in keys):
        return
    if not given:
        raise APIError(401, "unauthorized", "API key required", {"WWW-Authenticate": "Bearer"})
    if not any(_matches(given, k) for k in keys):
        raise APIError(401, "unauthorized", "invalid API key", {"WWW-Authenticate": "Bearer"})


def _given(header: str | None, bearer: HTTPAuthorizationCredentials | None) -> str | None:
    return header if header is not None else (bearer.credentials.strip() if bearer else None)


async def require_api_key(request: Request, header: HeaderKey, bearer: BearerKey) -> None:
    """Writes and admin routes, when ``SDSSL_API_KEY`` is set: ``Authorization: Bearer <key>``
    or ``X-API-Key: <key>``."""
    _check(_given(header, bearer), [request.app.state.settings.api_key])


async def require_read_key(request: Request, header: HeaderKey, bearer: BearerKey) -> None:
    """Reads (embeddings, search, items), when ``SDSSL_READ_KEY`` is set: it or the admin key."""
    s = request.app.state.settings
    if s.read_key is not None:
        _check(_given(header, bearer), [s.read_key, s.api_key])


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
HolderDep = Annotated[RuntimeHolder, Depends(get_holder)]
RolloutsDep = Annotated[Rollouts, Depends(get_rollouts)]
ImportsDep = Annotated[Imports, Depends(get_imports)]
DecoderDep = Annotated[DecodePool, Depends(get_decoder)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
AuthDep = Annotated[None, Depends(require_api_key)]
ReadDep = Annotated[None, Depends(require_read_key)]
AdmissionDep = Annotated[Admission, Depends(admit_inference)]
