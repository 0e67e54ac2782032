"""``create_app``: the FastAPI application, its routers, and the lifespan that loads the model."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from service.api.error_handlers import install_handlers
from service.api.middleware import IntakeMiddleware
from service.api.routes import admin, embeddings, health, items, model, search
from service.collection.cursors import Cursors
from service.errors import Refusal
from service.inference.decoding import DecodePool
from service.lifecycle.imports import Imports
from service.lifecycle.reasons import public_reason
from service.lifecycle.rollouts import Rollouts
from service.lifecycle.runtime import RuntimeHolder, load_runtime
from service.lifecycle.serving import bundle_to_serve, note_other_indexes
from service.lifecycle.warmup import warm_request_paths
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)
DEMO = Path(__file__).with_name("demo")

DESCRIPTION = """Early-exit image embeddings from an SDSSL-trained ViT.

Every transformer block of the model yields a usable embedding, so the server can stop after
*exit depth* d blocks. Ask for a depth (`exit_depth`) or say how long you may wait
(`budget_ms`): the server runs the deepest exit predicted to fit, and every response reports
`exit_depth`, `predicted_ms`, `elapsed_ms` and `budget_met`. `GET /v1/model` shows the live
latency table and the accuracy of each depth, to help pick a budget.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def load() -> None:
            try:  # an import a stopped process left running is over: its record says so
                await app.state.imports.fail_stale()
            except OSError as exc:
                log.warning("cannot record the end of an interrupted import: %s", exc)
            try:
                bundle = await asyncio.to_thread(bundle_to_serve, settings)
                runtime = await load_runtime(settings, bundle, app.state.metrics)
                # A rollout a previous process left running loads its bundle before the first
                # request, so that every write from then on is mirrored to it.
                await app.state.rollouts.resume(runtime)
                await asyncio.to_thread(note_other_indexes, settings, runtime.bundle_id)
                app.state.holder.swap(runtime, app.state.metrics)  # /readyz: 503 while warming
                await warm_request_paths(app, runtime)
                app.state.warming = False
                log.info("ready: serving %s", settings.bundle)
            except Refusal as exc:  # waiting would not help: refuse to run at all
                app.state.refused = str(exc)
                log.error("refusing to start: %s", exc)
                app.state.stop_serving()
            except Exception as exc:  # not ready, and /readyz says why (no paths: it is open)
                app.state.load_error = public_reason(exc, "it could not be loaded")
                log.error("cannot load bundle %s: %r", settings.bundle, exc)

        loader = asyncio.get_running_loop().create_task(load())
        app.state.loader = loader  # a reload waits for it: two loads must not race
        yield
        loader.cancel()
        await app.state.imports.close()
        await app.state.rollouts.close()
        for task in list(app.state.background):
            await task
        runtime = app.state.holder.current
        if runtime is not None:
            await runtime.close()
        app.state.decoder.close()

    app = FastAPI(
        title="SDSSL early-exit embedding service",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.holder = RuntimeHolder()
    app.state.load_error = None
    app.state.warming = True  # the request paths are being warmed (not ready yet)
    app.state.refused = None  # a reason the process must not serve at all
    app.state.stop_serving = lambda: os.kill(os.getpid(), signal.SIGTERM)  # main() sets its own
    app.state.background = set()
    app.state.decoder = DecodePool(settings, app.state.metrics)
    app.state.cursors = Cursors(settings.data_dir)
    app.state.rollouts = Rollouts(
        settings, app.state.metrics, app.state.holder, app.state.background
    )
    app.state.imports = Imports(
        settings, app.state.metrics, app.state.holder, app.state.rollouts.jobs
    )
    install_handlers(app)
    for router in (embeddings, search, items, model, admin, health):
        app.include_router(router.router)
    # The demo page: static files calling the public API (and its keys) like any client.
    app.mount("/demo", StaticFiles(directory=DEMO, html=True), name="demo")
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
            allow_headers=["*"],
        )  # fmt: skip
    app.add_middleware(
        IntakeMiddleware, max_body_bytes=settings.max_body_bytes, metrics=app.state.metrics
    )
    return app
