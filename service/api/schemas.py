"""Response and request models: what /docs shows (examples included)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.collection.bulk import BATCH, MAX_BATCH, MAX_SOURCE_NAME


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


TIMING_EXAMPLE = {"budget_ms": 20.0, "predicted_ms": 4.1, "elapsed_ms": 5.3, "budget_met": True,
                  "batch_size": 3}  # fmt: skip


class EmbeddingsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "9d2f…",
                    "exit_depth": 6,
                    "gallery_depth": 12,
                    "space": "gallery",
                    "dim": 128,
                    "encoding": "json",
                    "embeddings": [[0.031, -0.12, 0.088]],
                    "timing": TIMING_EXAMPLE,
                }
            ]
        }
    )
    model: str = Field(description="bundle id (sha256 of its manifest)")
    exit_depth: int = Field(description="the depth the images ran to")
    gallery_depth: int = Field(description="the depth whose space the rows are bridged into")
    space: str = Field("gallery", description="gallery (bridged, searchable) or raw")
    dim: int
    encoding: str = Field("json", description="json, base64 (float32 LE) or base64-f16")
    embeddings: list[list[float]] | list[str] = Field(
        description="L2-normalised, one row per image: numbers, or base64 per row. Computed at "
        "`exit_depth`; with space=gallery (the default) bridged into the space of the bundle's "
        "gallery depth — the space items are stored and searched in, so a row can be sent to "
        "`/v1/search` as a vector; with space=raw the exit's own embedding"
    )
    timing: TimingOut


class Hit(BaseModel):
    id: str
    score: float = Field(description="cosine similarity")
    metadata: Any = None


class SearchOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "9d2f…",
                    "exit_depth": 6,
                    "gallery_depth": 12,
                    "results": [{"id": "cat-1", "score": 0.93, "metadata": {"label": "cat"}}],
                    "timing": TIMING_EXAMPLE,
                }
            ]
        }
    )
    model: str
    exit_depth: int = Field(
        description="the query's: the depth its image ran to (for a vector: the one it named, "
        "else the gallery depth)"
    )
    gallery_depth: int = Field(description="the items': the space the search ran in")
    results: list[Hit]
    timing: TimingOut


class BatchSearchOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "9d2f…",
                    "exit_depth": 6,
                    "gallery_depth": 12,
                    "results": [
                        [{"id": "cat-1", "score": 0.93, "metadata": {"label": "cat"}}],
                        [{"id": "dog-4", "score": 0.88, "metadata": None}],
                    ],
                    "timing": TIMING_EXAMPLE,
                }
            ]
        }
    )
    model: str
    exit_depth: int = Field(description="the queries': the depth their images were embedded at")
    gallery_depth: int = Field(description="the items': the space the search ran in")
    results: list[list[Hit]] = Field(description="one list of hits per query, in order")
    timing: TimingOut


class ItemOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "cat-1",
                    "metadata": {"label": "cat"},
                    "created_at": 1796190000.5,
                    "exit_depth": 6,
                    "encoding": "base64",
                    "vector": "AACAPwAAAAA…",
                }
            ]
        }
    )
    id: str
    metadata: Any = None
    created_at: float = Field(description="UNIX time of the last upsert")
    exit_depth: int | None = Field(
        None, description="of `vector`, when asked for: the gallery depth, whose space it is in"
    )
    encoding: str | None = Field(None, description="of `vector`: json, base64 or base64-f16")
    vector: list[float] | str | None = Field(None, description="the stored embedding")


class ItemPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "9d2f…",
                    "count": 5000,
                    "next_cursor": "bjEwMA",
                    "items": [
                        {"id": "cat-1", "metadata": {"label": "cat"}, "created_at": 1796190000.5}
                    ],
                }
            ]
        }
    )
    model: str
    items: list[ItemOut]
    count: int = Field(description="items the filter selects (all without one)")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: done")


class ItemResult(BaseModel):
    id: str
    replaced: bool


class ItemsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "9d2f…", "items": [{"id": "cat-1", "replaced": False}], "count": 5001}
            ]
        }
    )
    model: str
    items: list[ItemResult]
    count: int = Field(description="items in the index after this request")


class DeletedOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"id": "cat-1", "deleted": True}]})
    id: str
    deleted: bool = True


class LatencyRow(BaseModel):
    exit_depth: int | None = Field(description="null for the all-exits graph")
    graph: str = Field(description="exit_01 … exit_LL, or all_exits", examples=["exit_03"])
    batch_size: int
    mean_ms: float = Field(description="mean of the recent measurements")
    median_ms: float = Field(description="their median: the typical time the scheduler plans with")
    predicted_ms: float = Field(description="what the scheduler predicts: their robust p99")
    samples: int


class AccuracyRow(BaseModel):
    exit_depth: int
    knn_top1: float | None = Field(description="k-NN top-1 at this depth (training's evaluation)")
    linear_top1: float | None
    knn_bridged: float | None = Field(
        None,
        description="k-NN top-1 of this depth's bridged queries against a gallery embedded at "
        "the bundle's gallery depth (measured at export, on images disjoint from the fit)",
    )
    knn_bridged_se: float | None = Field(None, description="its standard error")
    recall_at_10: float | None = Field(
        None, description="share of the gallery-depth query's 10 nearest items found"
    )
    predicted_ms_batch1: float


class LimitsOut(BaseModel):
    """The request limits a client splits its work under (docs/limits.md has them all)."""

    max_images: int = Field(description="images (or vectors) per request", examples=[64])
    max_body_bytes: int = Field(description="bytes of one request body", examples=[20971520])
    max_pixels: int = Field(description="pixels of one image", examples=[40000000])
    max_request_pixels: int = Field(
        description="pixels of all images of one request", examples=[120000000]
    )
    max_search_results: int = Field(description="queries x k per search", examples=[10000])
    max_metadata_bytes: int = Field(description="an item's metadata as JSON", examples=[16384])


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
    limits: LimitsOut = Field(description="what one request may hold (clients split under it)")


class ReloadIn(BaseModel):
    bundle: str = Field(description="path of the bundle directory, as the server sees it",
                        examples=["bundles/new"])  # fmt: skip


class SnapshotOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "9d2f0c1e7a3b-20261202T061500123Z.tar",
                    "model": "9d2f…",
                    "bundles": {"9d2f…": 100000},
                    "items": 100000,
                    "bytes": 641728512,
                    "seconds": 4.2,
                }
            ]
        }
    )
    name: str = Field(description="download it from /v1/admin/snapshots/{name}")
    model: str = Field(description="the bundle served when it was taken")
    bundles: dict[str, int] = Field(description="items per bundle id in the snapshot")
    items: int = Field(description="items in the snapshot, all bundles together")
    bytes: int
    seconds: float


class SnapshotFile(BaseModel):
    name: str = Field(examples=["9d2f0c1e7a3b-20261202T061500123Z.tar"])
    bytes: int
    created_at: float = Field(description="Unix time")


class SnapshotsOut(BaseModel):
    snapshots: list[SnapshotFile] = Field(description="newest first")
    keep: int = Field(description="how many are kept (SDSSL_SNAPSHOT_KEEP; 0: all)")


class RolloutIn(BaseModel):
    bundle: str = Field(description="path of the new bundle directory, as the server sees it",
                        examples=["bundles/new"])  # fmt: skip
    swap: bool = Field(
        True,
        description="serve the new bundle as soon as its indexes are complete; false: wait "
        "(writes stay mirrored) for POST /v1/admin/jobs/{id}/swap",
    )
    batch: int = Field(64, ge=1, le=1024, description="items re-embedded per step")
    pause_ms: float = Field(
        0.0, ge=0, le=60_000, description="pause between steps, to leave the CPU to requests"
    )


class ImportIn(BaseModel):
    source: str = Field(
        description="a folder (vectors.npy, ids.txt or ids.npy, metadata.jsonl), an .npz or a "
        ".parquet (columns id, vector, metadata), as a path relative to the server's import "
        "folder (SDSSL_IMPORT_DIR)",
        examples=["catalogue-2026-12"],
        max_length=MAX_SOURCE_NAME,
    )
    resume: bool = Field(
        False,
        description="skip ids already stored (go on after an interrupted import) instead of "
        "replacing them",
    )
    batch: int = Field(BATCH, ge=1, le=MAX_BATCH, description="rows per durable write")
    pause_ms: float = Field(
        0.0, ge=0, le=60_000, description="pause between batches, to leave the CPU to requests"
    )


class JobOut(BaseModel):
    id: str = Field(examples=["3f9c0a1b2d4e5f60"])
    kind: str = Field(description="rollout or import", examples=["rollout"])
    state: str = Field(
        description="rollout: loading (the new bundle warms up), copying, ready (complete; "
        "writes are mirrored until the swap), swapped, failed, cancelled; import: loading, "
        "copying, done, failed, cancelled",
        examples=["copying"],
    )
    bundle: str = Field(description="rollout: the new bundle's path; import: the id of the "
                        "bundle written to")  # fmt: skip
    source: str = Field(description="rollout: the bundle id serving when the job began; import: "
                        "the source's name in the import folder")  # fmt: skip
    target: str | None = Field(description="the new bundle's id (null while loading)")
    swap: bool
    batch: int
    pause_ms: float
    cursor: int = Field(description="the last item (insertion number) re-embedded")
    done: int = Field(description="items the job has visited (import: rows read)",
                      examples=[1200])  # fmt: skip
    total: int = Field(description="items to visit, as last counted (import: the source's rows)",
                       examples=[5000])  # fmt: skip
    progress: float = Field(description="done / total", examples=[0.24])
    items_per_s: float | None = Field(description="items (rows) visited per second so far")
    copied: int = Field(description="items re-embedded from their kept input")
    mirrored: int = Field(description="client writes made during the job, written to both")
    skipped: int = Field(description="rollout: items changed or deleted while the job read "
                         "them; import with resume: rows whose id was already stored")  # fmt: skip
    imported: int = Field(
        0, description="import: rows written (an id repeated in the source counts each time)"
    )
    refused: int = Field(0, description="import: rows that failed the API's checks (skipped)")
    reasons: list[str] = Field(
        default_factory=list, description="import: why rows were refused (the first 20)"
    )
    resume: bool = Field(False, description="import: started with resume")
    removed: int = Field(description="items only the new index held (an earlier attempt's)")
    missing: list[str] = Field(
        description="ids without a kept input: re-upload them (the first 1000)"
    )
    missing_count: int
    seconds: float
    error: str | None
    created_at: float
    updated_at: float
    finished_at: float | None


class JobsOut(BaseModel):
    jobs: list[JobOut] = Field(description="newest first")


class ReloadOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "9d2f…",
                    "previous": "41ab…",
                    "exit_depths": [1, 2, 3, 4],
                    "gallery_depth": 4,
                    "items": 5000,
                }
            ]
        }
    )
    model: str
    previous: str | None
    exit_depths: list[int]
    gallery_depth: int = Field(description="the depth items are embedded at")
    items: int


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": desc}
    for code, desc in {
        400: "malformed request or image",
        401: "missing or wrong API key",
        404: "unknown item",
        408: "headers or body too slow (SDSSL_HEADER_TIMEOUT_S, SDSSL_BODY_TIMEOUT_S)",
        413: "body, image or image count over the limits",
        415: "unsupported media type or image format",
        422: "invalid parameters",
        431: "request line and headers over SDSSL_MAX_HEADER_BYTES",
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
