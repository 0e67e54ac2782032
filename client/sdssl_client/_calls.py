"""Requests as data: each public method builds a :class:`Call` (what to send, how to read the
answer) that the sync and async clients send the same way, with the same retries."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from sdssl_client.errors import SDSSLError, error_for
from sdssl_client.images import ImageLike, many, to_bytes
from sdssl_client.results import BatchSearchResult, Embeddings, Item, SearchResult

RETRY_STATUSES = {429, 503}
# What a server that does not say (GET /v1/model's "limits") takes: its defaults.
DEFAULT_LIMITS = {"max_images": 64, "max_body_bytes": 20 * 2**20}
PART_OVERHEAD = 512  # bytes of multipart framing and text fields per image, at most


def split(sizes: list[int], limits: dict[str, int]) -> list[slice]:
    """Consecutive runs of images (their encoded ``sizes``) that fit one request: at most
    ``max_images`` of them and ``max_body_bytes`` together. An image too large on its own goes
    alone (the server then says why)."""
    most, budget = limits["max_images"], int(limits["max_body_bytes"] * 0.95)
    out, start, used = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= most or used + size + PART_OVERHEAD > budget):
            out.append(slice(start, i))
            start, used = i, 0
        used += size + PART_OVERHEAD
    if sizes:
        out.append(slice(start, len(sizes)))
    return out


def limits() -> Call:
    return Call("GET", "/v1/model", lambda r: {**DEFAULT_LIMITS, **(r.json().get("limits") or {})})


@dataclass
class Call:
    method: str
    path: str
    parse: Callable[[httpx.Response], Any]
    params: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None
    files: list | None = None
    json: Any = None
    write: bool = False  # needs the admin key


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _json(r: httpx.Response) -> Any:
    return r.json()


def _vector_b64(vector: Any) -> str:
    """A vector as base64 little-endian float32: exact, and a third of a JSON list's size."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode()


def _files(name: str, images: list[bytes]) -> list:
    return [(name, (f"{i}.img", b, "application/octet-stream")) for i, b in enumerate(images)]


def _form(fields: dict[str, Any]) -> dict[str, Any]:
    """Multipart text fields: JSON documents as text, numbers as strings, lists as repeats."""
    out: dict[str, Any] = {}
    for k, v in _drop_none(fields).items():
        if isinstance(v, dict):  # a JSON document (filter, metadata)
            out[k] = json.dumps(v)
        elif isinstance(v, bool):
            out[k] = "true" if v else "false"
        elif isinstance(v, list):
            out[k] = [json.dumps(x) if not isinstance(x, str) else x for x in v]
        else:
            out[k] = str(v)
    return out


def embed(
    images: ImageLike | list[ImageLike],
    exit_depth: int | None,
    budget_ms: float | None,
    space: str = "gallery",
) -> Call:
    fields = {"exit_depth": exit_depth, "budget_ms": budget_ms, "encoding": "base64"}
    data = _form({**fields, "space": None if space == "gallery" else space})
    return Call(
        "POST",
        "/v1/embeddings",
        lambda r: Embeddings.parse(r.json()),
        data=data,
        files=_files("images", many(images)),
    )


def embed_parts(
    blobs: list[bytes],
    limits: dict[str, int],
    exit_depth: int | None,
    budget_ms: float | None,
    space: str = "gallery",
) -> list[tuple[Call, int]]:
    """:func:`embed` calls for ``blobs`` split under ``limits``, each with its image count."""
    return [(embed(blobs[part], exit_depth, budget_ms, space), part.stop - part.start)
            for part in split([len(b) for b in blobs], limits)]  # fmt: skip


def search(
    image: ImageLike | None,
    vector: Any,
    exit_depth: int | None,
    budget_ms: float | None,
    k: int,
    filter: dict | None,
    metadata: bool = True,
) -> Call:
    parse = lambda r: SearchResult.parse(r.json())  # noqa: E731
    leave_out = None if metadata else False  # the server's default is true: send only false
    if (image is None) == (vector is None):
        raise ValueError("give an image or a vector")
    if vector is not None:  # in the gallery's space, as embed() returns it
        body = _drop_none({"vector": _vector_b64(vector), "exit_depth": exit_depth, "k": k,
                           "filter": filter, "metadata": leave_out})  # fmt: skip
        return Call("POST", "/v1/search", parse, json=body)
    data = _form({"exit_depth": exit_depth, "budget_ms": budget_ms, "k": k, "filter": filter,
                  "metadata": leave_out})  # fmt: skip
    return Call("POST", "/v1/search", parse, data=data, files=_files("image", [to_bytes(image)]))


def search_batch(
    images: list[ImageLike] | None,
    vectors: Any,
    exit_depth: int | None,
    budget_ms: float | None,
    k: int,
    filter: dict | None,
    metadata: bool = True,
) -> Call:
    parse = lambda r: BatchSearchResult.parse(r.json())  # noqa: E731
    leave_out = None if metadata else False
    if (images is None) == (vectors is None):
        raise ValueError("give images or vectors")
    if vectors is not None:  # in the gallery's space, as embed() returns them
        body = _drop_none(
            {
                "vectors": [_vector_b64(v) for v in vectors],
                "exit_depth": exit_depth,
                "k": k,
                "filter": filter,
                "metadata": leave_out,
            }
        )
        return Call("POST", "/v1/search/batch", parse, json=body)
    data = _form({"exit_depth": exit_depth, "budget_ms": budget_ms, "k": k, "filter": filter,
                  "metadata": leave_out})  # fmt: skip
    return Call("POST", "/v1/search/batch", parse, data=data, files=_files("images", many(images)))


def items(
    images: ImageLike | list[ImageLike], ids: str | list[str], metadata: Any | list[Any] | None
) -> tuple[list[bytes], list[str], list[Any] | None]:
    """Images, ids and metadata of an add, checked to line up (one id, and none or one JSON
    document, per image)."""
    blobs = many(images)
    ids = [ids] if isinstance(ids, str) else list(ids)
    if len(ids) != len(blobs):
        raise ValueError(f"{len(blobs)} images need {len(ids)} ids")
    metas = None
    if metadata is not None:
        metas = metadata if isinstance(metadata, list) and len(blobs) > 1 else [metadata]
        if len(metas) != len(blobs):
            raise ValueError(f"{len(blobs)} images need {len(blobs)} metadata documents or none")
    return blobs, ids, metas


def add(blobs: list[bytes], ids: list[str], metadata: list[Any] | None) -> Call:
    data: dict[str, Any] = {"ids": ids}
    if metadata is not None:
        data["metadata"] = [json.dumps(m) for m in metadata]
    return Call("POST", "/v1/items", _json, data=data, files=_files("images", blobs), write=True)


def add_parts(
    images: ImageLike | list[ImageLike], ids: str | list[str], metadata: Any, limits: dict[str, int]
) -> list[tuple[Call, int]]:
    """:func:`add` calls for the images split under ``limits``, each with its image count."""
    blobs, ids, metas = items(images, ids, metadata)
    return [(add(blobs[part], ids[part], None if metas is None else metas[part]),
             part.stop - part.start)
            for part in split([len(b) for b in blobs], limits)]  # fmt: skip


def join_adds(parts: list[dict]) -> dict:
    """The answers to one add split over several requests, as one."""
    return {**parts[-1], "items": [i for p in parts for i in p["items"]]}


def get(item_id: str, vector: bool) -> Call:
    params = {"vector": "true", "encoding": "base64"} if vector else {}
    return Call(
        "GET", f"/v1/items/{_quote(item_id)}", lambda r: Item.parse(r.json()), params=params
    )


def delete(item_id: str) -> Call:
    return Call("DELETE", f"/v1/items/{_quote(item_id)}", _json, write=True)


def page(limit: int, cursor: str | None, filter: dict | None) -> Call:
    params = _drop_none(
        {"limit": limit, "cursor": cursor, "filter": None if filter is None else json.dumps(filter)}
    )
    return Call("GET", "/v1/items", _json, params=params)


def admin(method: str, path: str, body: Any = None) -> Call:
    return Call(method, path, _json, json=body, write=True)


def _quote(item_id: str) -> str:
    from urllib.parse import quote

    return quote(item_id, safe="")


# ---- answers and retries ---------------------------------------------------------------------
def check(r: httpx.Response) -> None:
    """Raise the typed error of a non-2xx answer."""
    if r.is_success:
        return
    try:
        err = r.json()["error"]
        code, message = err["code"], err["message"]
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", r.text[:200] or r.reason_phrase
    raise error_for(r.status_code, code, message, retry_after(r))


def retry_after(r: httpx.Response) -> float | None:
    try:
        return float(r.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def backoff(attempt: int, error: SDSSLError | None, cap: float) -> float:
    """Seconds to wait before the next try: the server's Retry-After when it gave one, else
    exponential with jitter."""
    if error is not None and error.retry_after is not None:
        return min(cap, error.retry_after)
    return min(cap, 0.1 * 2**attempt) * (0.5 + random.random() / 2)


def retryable(exc: Exception) -> bool:
    if isinstance(exc, SDSSLError):
        return exc.status in RETRY_STATUSES
    return isinstance(exc, httpx.TransportError)
