"""The fields the inference routes take besides images: one pydantic model per route, which is
both the validation (of query parameters, multipart fields and JSON bodies alike) and the
OpenAPI schema of those fields."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from service.errors import APIError

MAX_K = 1000  # neighbours per query


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic's lax mode would read true as 1
        raise ValueError("must be a number, not a boolean")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]


class DepthOrBudget(BaseModel):
    """``exit_depth`` or ``budget_ms``, never both; neither means the deepest exit."""

    model_config = ConfigDict(extra="ignore")

    exit_depth: Int | None = Field(
        None, description="blocks to run, 1..L (see GET /v1/model for the served exits)"
    )
    budget_ms: Float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="server-side latency budget: the deepest exit predicted to fit is served",
    )

    @model_validator(mode="after")
    def _one_of(self) -> DepthOrBudget:
        if self.exit_depth is not None and self.budget_ms is not None:
            raise ValueError("give exit_depth or budget_ms, not both")
        return self


class EmbedParams(DepthOrBudget):
    encoding: Literal["json", "base64", "base64-f16"] = Field(
        "json",
        description="embeddings as JSON lists, or one base64 string per row of little-endian "
        "float32 (exact) or float16; or send Accept: application/x-npy for one .npy body",
    )
    space: Literal["gallery", "raw"] = Field(
        "gallery",
        description="gallery: rows bridged into the gallery's space (searchable: send one to "
        "/v1/search as `vector`); raw: the exit's own embedding, before the bridge (features "
        "for your own models; not comparable across depths, nor with the gallery)",
    )


METADATA = "false: leave each hit's metadata out (a smaller, faster answer)"


class SearchParams(DepthOrBudget):
    k: Int = Field(10, ge=1, le=MAX_K, description="how many neighbours")
    metadata: bool = Field(True, description=METADATA)
    filter: Any = Field(
        None,
        description='only items whose metadata matches: {"label": "7"}, {"label": {"in": '
        '["1", "7"]}}, {"score": {"gte": 0.5}} (JSON text in multipart or the query)',
        json_schema_extra={"type": "object"},
    )
    vector: Any = Field(
        None,
        description="instead of an image: an embedding in the gallery's space (what "
        "/v1/embeddings answers, or an item's stored vector) — a JSON list of numbers, or "
        "base64 of little-endian float32 (or float16) values",
        json_schema_extra={"type": "array", "items": {"type": "number"}},
    )


CODES = {"budget_ms": "invalid_budget", "k": "invalid_k"}


def parse(model: type[BaseModel], fields: dict[str, Any]) -> Any:
    """Validate ``fields`` (query parameters over body fields) with ``model``; 422 with the
    field's error code otherwise."""
    try:
        return model.model_validate({k: v for k, v in fields.items() if v not in (None, "")})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        message = err["msg"].removeprefix("Value error, ")
        raise APIError(
            422, CODES.get(field, "invalid_request"), f"{field}: {message}" if field else message
        ) from exc


def schema(model: type[BaseModel]) -> dict[str, Any]:
    """The fields' OpenAPI schema (properties), for the routes' request bodies."""
    return model.model_json_schema()["properties"]


class BatchSearchParams(DepthOrBudget):
    k: Int = Field(
        10, ge=1, le=MAX_K, description="how many neighbours per query (queries × k is capped "
        "by SDSSL_MAX_SEARCH_RESULTS)",
    )  # fmt: skip
    metadata: bool = Field(True, description=METADATA)
    filter: Any = Field(None, description="as for /v1/search", json_schema_extra={"type": "object"})
    vectors: Any = Field(
        None,
        description="instead of images: embeddings in the gallery's space (JSON lists or "
        "base64 float32/float16)",
        json_schema_extra={"type": "array", "items": {}},
    )
