"""GET /v1/model: the manifest, the live latency table and the accuracy-vs-latency curve."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from service.api.deps import ReadDep, RuntimeDep, SettingsDep
from service.api.schemas import LimitsOut, ModelOut

router = APIRouter(tags=["model"])


@router.get(
    "/v1/model",
    response_model=ModelOut,
    summary="What is served: manifest, latency per (exit depth, batch size), accuracy per depth",
    description="Needs the read key when one is set.",
)
async def model(_: ReadDep, runtime: RuntimeDep, settings: SettingsDep) -> dict:
    m = runtime.manifest
    curve = [
        {
            "exit_depth": e.exit_depth,
            "knn_top1": e.knn_top1,
            "linear_top1": e.linear_top1,
            "knn_bridged": e.retrieval.knn_bridged if e.retrieval else None,
            "knn_bridged_se": e.retrieval.knn_bridged_se if e.retrieval else None,
            "recall_at_10": e.retrieval.recall_at_10 if e.retrieval else None,
            "predicted_ms_batch1": round(runtime.scheduler.latency.predict(e.exit_depth, 1), 3),
        }
        for e in m.exits
    ]
    return {
        "model": runtime.bundle_id,
        "bundle": str(runtime.bundle),
        "device": runtime.engine.device,
        "providers": runtime.engine.session_providers(),
        "index_device": runtime.index.device,
        "items": await asyncio.to_thread(runtime.index.count),
        "manifest": m.model_dump(mode="json"),
        "latency": runtime.scheduler.table(),
        "calibration": runtime.scheduler.calibration.report(),
        "curve": curve,
        "limits": {name: getattr(settings, name) for name in LimitsOut.model_fields},
    }
