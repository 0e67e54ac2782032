"""Response and request models: what /docs shows (examples included)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(examples=["unknown_exit_depth"])
    message: str = Field(examples=["exit_depth 13 is not served (available: [1, ..., 12])"])


class ErrorOut(BaseModel):
    error: ErrorDetail


class TimingOut(BaseModel):
    budget_ms: float | None = Field(description="the client's budget, if it gave one")
    predicted_ms: float | None = Field(
        description="the scheduler's prediction when the depth was chosen (null: no estimate)"
    )
    elapsed_ms: float = Field(description="server-side time from arrival to response ready")
    budget_met: bool | None = Field(
        description="predicted and elapsed both within budget (null without a budget)"
    )
    batch_size: int | None = Field(
        None, description="images in the batch this request's images ran in (null: none ran)"
    )


class EmbeddingsOut(BaseModel):
    model: str = Field(description="bundle id (sha256 of its manifest)")
    exit_depth: int
    dim: int
    encoding: str = Field("json", description="json, base64 (float32 LE) or base64-f16")
    embeddings: list[list[float]] | list[str] = Field(
        description="L2-normalised, one row per image: numbers, or base64 per row"
    )
    timing: TimingOut


class Hit(BaseModel):
    id: str
    score: float = Field(description="cosine similarity")
    metadata: Any = None


class SearchOut(BaseModel):
    model: str
    exit_depth: int
    results: list[Hit]
    timing: TimingOut


class BatchSearchOut(BaseModel):
    model: str
    exit_depth: int
    results: list[list[Hit]] = Field(description="one list of hits per query, in order")
    timing: TimingOut


class ItemOut(BaseModel):
    id: str
    metadata: Any = None
    created_at: float = Field(description="UNIX time of the last upsert")
    exit_depth: int | None = Field(None, description="of `vector`, when asked for")
    encoding: str | None = Field(None, description="of `vector`: json, base64 or base64-f16")
    vector: list[float] | str | None = Field(None, description="the stored embedding")


class ItemPage(BaseModel):
    model: str
    items: list[ItemOut]
    count: int = Field(description="items the filter selects (all without one)")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: done")


class ItemResult(BaseModel):
    id: str
    replaced: bool


class ItemsOut(BaseModel):
    model: str
    items: list[ItemResult]
    count: int = Field(description="items in the index after this request")


class DeletedOut(BaseModel):
    id: str
    deleted: bool = True


class LatencyRow(BaseModel):
    exit_depth: int | None = Field(description="null for the all-exits graph")
    graph: str = Field(description="exit_01 … exit_LL, or all_exits", examples=["exit_03"])
    batch_size: int
    mean_ms: float = Field(description="mean of the recent measurements")
    predicted_ms: float = Field(description="what the scheduler predicts: their robust p99")
    samples: int


class AccuracyRow(BaseModel):
    exit_depth: int
    knn_top1: float | None
    linear_top1: float | None
    predicted_ms_batch1: float


class ModelOut(BaseModel):
    model: str
    bundle: str
    device: str = Field(description="where the graphs run: cuda or cpu")
    providers: dict[str, list[str]] = Field(
        description="onnxruntime providers each graph's session really runs on, by file"
    )
    index_device: str = Field(description="where FAISS searches run: gpu or cpu")
    items: int
    manifest: dict[str, Any]
    latency: list[LatencyRow]
    calibration: dict[str, Any] = Field(
        description="what the scheduler adds to its raw predictions now, per route and load"
    )
    curve: list[AccuracyRow] = Field(description="accuracy against predicted latency per depth")


class ReloadIn(BaseModel):
    bundle: str = Field(description="path of the bundle directory, as the server sees it",
                        examples=["artifacts/bundles/new"])  # fmt: skip


class SnapshotOut(BaseModel):
    name: str = Field(description="download it from /v1/admin/snapshots/{name}")
    model: str
    items: int
    bytes: int
    seconds: float


class ReloadOut(BaseModel):
    model: str
    previous: str | None
    exit_depths: list[int]
    items: int


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": desc}
    for code, desc in {
        400: "malformed request or image",
        401: "missing or wrong API key",
        404: "unknown item",
        413: "body, image or image count over the limits",
        415: "unsupported media type or image format",
        422: "invalid parameters",
        503: "loading, or overloaded (see Retry-After)",
    }.items()
}


def image_request_body(field: str, many: bool, extra: dict[str, Any]) -> dict[str, Any]:
    """openapi_extra for routes that take images as multipart files or base64 JSON."""
    files = (
        {"type": "array", "items": {"type": "string", "format": "binary"}}
        if many
        else {"type": "string", "format": "binary"}
    )
    b64 = (
        {"type": "array", "items": {"type": "string", "format": "byte"}}
        if many
        else {"type": "string", "format": "byte"}
    )
    png = (  # a 1x1 grey PNG
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
    )
    example = {field: [png] if many else png, "budget_ms": 20}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {field: files, **extra}}
                },
                "application/json": {
                    "schema": {"type": "object", "properties": {field: b64, **extra}},
                    "example": example,
                },
            },
        }
    }
