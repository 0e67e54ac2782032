"""What the client returns: numpy vectors and small dataclasses, with the server's timing."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def decode_rows(rows: list, encoding: str) -> np.ndarray:
    """Rows as the server sent them (JSON numbers, base64 float32 or float16) → float32 [N, D]."""
    if encoding == "json":
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
    dtype = "<f2" if encoding == "base64-f16" else "<f4"
    out = [np.frombuffer(base64.b64decode(r), dtype=dtype) for r in rows]
    return np.stack(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32 [N, D], L2-normalised, in the gallery depth's space (or raw)
    exit_depth: int  # the depth the images ran to (split over requests: the shallowest)
    model: str
    timing: dict[str, Any] = field(default_factory=dict)  # split: the last request's
    gallery_depth: int | None = None  # whose space the vectors are in (search takes them)
    space: str = "gallery"  # or "raw": the exit's own embedding, before the bridge
    exit_depths: list[int] = field(default_factory=list)  # per row

    @classmethod
    def parse(cls, body: dict) -> Embeddings:
        vectors = decode_rows(body["embeddings"], body.get("encoding", "json"))
        return cls(vectors, body["exit_depth"], body["model"], body.get("timing", {}),
                   body.get("gallery_depth"), body.get("space", "gallery"),
                   [body["exit_depth"]] * len(vectors))  # fmt: skip

    @classmethod
    def join(cls, parts: list[Embeddings]) -> Embeddings:
        """The answers to one input split over several requests, as one."""
        if len(parts) == 1:
            return parts[0]
        last = parts[-1]
        return cls(np.concatenate([p.vectors for p in parts]),
                   min(p.exit_depth for p in parts), last.model, last.timing, last.gallery_depth,
                   last.space, [d for p in parts for d in p.exit_depths])  # fmt: skip


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # cosine similarity
    metadata: Any = None


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    exit_depth: int  # the query's depth
    model: str
    timing: dict[str, Any] = field(default_factory=dict)
    gallery_depth: int | None = None  # the items' depth: the space the search ran in

    @classmethod
    def parse(cls, body: dict) -> SearchResult:
        return cls(
            [Hit(**h) for h in body["results"]],
            body["exit_depth"],
            body["model"],
            body.get("timing", {}),
            body.get("gallery_depth"),
        )


@dataclass(frozen=True)
class BatchSearchResult:
    results: list[list[Hit]]  # one list per query, in order
    exit_depth: int
    model: str
    timing: dict[str, Any] = field(default_factory=dict)
    gallery_depth: int | None = None

    @classmethod
    def parse(cls, body: dict) -> BatchSearchResult:
        results = [[Hit(**h) for h in hits] for hits in body["results"]]
        return cls(results, body["exit_depth"], body["model"], body.get("timing", {}),
                   body.get("gallery_depth"))  # fmt: skip


@dataclass(frozen=True)
class Item:
    id: str
    metadata: Any
    created_at: float
    exit_depth: int | None = None  # the gallery depth, whose space ``vector`` is in
    vector: np.ndarray | None = None  # the stored embedding, when asked for

    @classmethod
    def parse(cls, body: dict) -> Item:
        vector = body.get("vector")
        if vector is not None:
            vector = decode_rows([vector], body.get("encoding") or "json")[0]
        return cls(
            body["id"], body.get("metadata"), body["created_at"], body.get("exit_depth"), vector
        )
