"""The one error path: whatever goes wrong, the client gets the documented JSON shape."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from service.api.error_handlers import install_handlers
from service.errors import APIError, StorageError


def app_that_fails() -> FastAPI:
    app = FastAPI()
    install_handlers(app)

    @app.get("/bug")
    async def bug() -> dict:
        raise KeyError("a bug we did not foresee")

    @app.get("/api-error")
    async def api_error() -> dict:
        raise APIError(418, "teapot", "short and stout", {"X-Why": "tea"})

    @app.get("/full")
    async def full() -> dict:
        raise StorageError("no space", full=True)

    return app


def test_unexpected_exceptions_answer_json_without_details() -> None:
    asyncio.run(_exercise())


async def _exercise() -> None:
    transport = httpx.ASGITransport(app=app_that_fails(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/bug")
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        assert r.json()["error"]["code"] == "internal_error"
        assert "foresee" not in r.text  # the cause goes to the log, not to the client
        r = await c.get("/api-error")
        assert r.status_code == 418 and r.json()["error"] == {
            "code": "teapot", "message": "short and stout"
        }  # fmt: skip
        assert r.headers["x-why"] == "tea"
        r = await c.get("/full")
        assert r.status_code == 507 and r.json()["error"]["code"] == "storage_full"
        assert r.headers["retry-after"]
        r = await c.get("/nowhere")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
