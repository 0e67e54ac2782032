"""The bundle's ``manifest.json``: pydantic models shared by export/ (writer) and service/ (reader).

This module imports no torch, so the service can depend on it alone. A bundle's identity is the
sha256 of its manifest file.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import stat
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

FORMAT_VERSION = 2  # 2: bridged graphs (``bridge``); 1: raw graphs, upgraded by ``export bridge``
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"  # sha256 of manifest.json, written last: edits are caught
INPUT_NAME = "images"  # uint8 [N, S, S, 3] RGB
EXIT_OUTPUT = "embedding"  # float32 [N, D], L2-normalised; bridged into the gallery's space (v2)
ALL_EXITS_OUTPUT = "embeddings"  # float32 [L, N, D]; bridged (v2)
RAW_EXIT_OUTPUT = "raw_embedding"  # v2: the exit's own embedding, before the bridge
RAW_ALL_EXITS_OUTPUT = "raw_embeddings"  # v2: the same for every exit, [L, N, D]
SEGMENT_INPUT = "hidden"  # a segment after the first: the hidden state [N, T, D]
SEGMENT_OUTPUT = "hidden_next"  # every segment: the hidden state after its last block
# A graph's file is a bare name inside the bundle: no folders, no "..", no absolute paths.
GRAPH_FILE = r"^[A-Za-z0-9][A-Za-z0-9._-]*\.onnx$"
MAX_MANIFEST_BYTES = 1 << 20
MAX_DIGEST_BYTES = 1 << 10
MAX_GRAPH_BYTES = 2 << 30  # protobuf's limit for a graph without external data
WEIGHTS_FILE = "weights.bin"  # every graph's large initializers, each stored once (export.weights)
MAX_WEIGHTS_BYTES = 64 << 30


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelInfo(_Strict):
    """The backbone the graphs were cut from."""

    arch: str = "vit"
    img_size: int = Field(gt=0)
    patch_size: int = Field(gt=0)
    dim: int = Field(gt=0)
    depth: int = Field(gt=0, description="L: the number of blocks (the deepest exit depth)")
    num_heads: int = Field(gt=0)
    parameters: int = Field(ge=0, description="backbone parameters")


class Preprocess(_Strict):
    """What the client-side of the graph must do: decode, resize the shorter side, centre-crop.
    Normalisation (÷255, mean/std, NHWC→NCHW) happens inside every graph; mean/std are
    informative."""

    resize: int = Field(gt=0, description="shorter side after resizing, before the crop")
    crop: int = Field(gt=0, description="S: the square input side")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class Retrieval(_Strict):
    """How this depth's bridged queries search a gallery embedded at the gallery depth, measured
    at export on images disjoint from the bridges' fit (k-NN needs labels; recall does not)."""

    queries: int = Field(gt=0)
    gallery: int = Field(gt=0)
    knn_same: float | None = Field(
        default=None, ge=0.0, le=1.0, description="k-NN top-1 with a gallery at this same depth"
    )
    knn_same_se: float | None = Field(default=None, ge=0.0)
    knn_bridged: float | None = Field(
        default=None, ge=0.0, le=1.0, description="k-NN top-1 against the gallery-depth gallery"
    )
    knn_bridged_se: float | None = Field(default=None, ge=0.0)
    recall_at_10: float = Field(
        ge=0.0, le=1.0, description="share of the gallery-depth query's 10 neighbours found"
    )
    recall_at_10_se: float = Field(ge=0.0)


class ExitEntry(_Strict):
    exit_depth: int = Field(gt=0)
    file: str = Field(pattern=GRAPH_FILE)
    dim: int = Field(gt=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    knn_top1: float | None = Field(default=None, ge=0.0, le=1.0)
    linear_top1: float | None = Field(default=None, ge=0.0, le=1.0)
    bridge_lambda: float | None = Field(default=None, ge=0.0, description="the ridge's λ")
    retrieval: Retrieval | None = None


class SegmentEntry(_Strict):
    """Blocks ``first``+1..``last``: input ``images`` (first 0) or ``hidden``; outputs
    ``hidden_next`` and the ``embedding`` at exit depth ``last``."""

    first: int = Field(ge=0)
    last: int = Field(gt=0)
    file: str = Field(pattern=GRAPH_FILE)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class AllExitsEntry(_Strict):
    file: str = Field(pattern=GRAPH_FILE)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class WeightsEntry(_Strict):
    """The graphs' shared external data: each distinct large tensor once, read by offset."""

    file: Literal["weights.bin"] = WEIGHTS_FILE
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Bridge(_Strict):
    """Every graph's ``embedding`` is bridged into the space of ``gallery_depth``: one gallery,
    embedded there, serves queries of every exit depth. The graph's own embedding is the
    ``raw_embedding`` (``raw_embeddings``) output."""

    gallery_depth: int = Field(gt=0)
    method: Literal["ridge"] = "ridge"
    dataset: str = Field(description="the dataset spec whose training split the bridges fit")
    test_fraction: float = Field(ge=0.0, lt=1.0)
    fit_images: int = Field(gt=0)
    gallery_images: int = Field(ge=0, description="the evaluation's gallery, disjoint from the fit")


class Manifest(_Strict):
    """Everything the service needs to know about a bundle."""

    format_version: Literal[1, 2] = FORMAT_VERSION
    model: ModelInfo
    preprocess: Preprocess
    exits: list[ExitEntry] = Field(min_length=1)
    all_exits: AllExitsEntry
    segments: list[SegmentEntry] = Field(
        default_factory=list, description="blocks in order, for anytime execution (optional)"
    )
    checkpoint_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    method: str
    distill: bool
    precision: Literal["fp32", "fp16"] = "fp32"
    opset: int
    created_at: datetime
    bridge: Bridge | None = Field(default=None, description="format 2: the bridges folded in")
    weights: WeightsEntry | None = Field(
        default=None, description="the graphs' shared weights; absent: each graph holds its own"
    )

    @field_validator("exits")
    @classmethod
    def _sorted_unique(cls, exits: list[ExitEntry]) -> list[ExitEntry]:
        depths = [e.exit_depth for e in exits]
        if depths != sorted(set(depths)):
            raise ValueError("exits must be sorted by exit_depth without repeats")
        return exits

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        for e in self.exits:
            if e.exit_depth > self.model.depth:
                raise ValueError(
                    f"exit_depth {e.exit_depth} exceeds model depth {self.model.depth}"
                )
            if e.dim != self.model.dim:
                raise ValueError(f"exit {e.exit_depth} dim {e.dim} != model dim {self.model.dim}")
        if (self.format_version == 2) != (self.bridge is not None):
            raise ValueError("format_version 2 bundles carry a bridge; format 1 bundles do not")
        if self.bridge is not None and self.bridge.gallery_depth > self.model.depth:
            raise ValueError(f"bridge.gallery_depth exceeds model depth {self.model.depth}")
        if self.preprocess.crop != self.model.img_size:
            raise ValueError("preprocess.crop must equal model.img_size")
        if self.segments:
            bounds = [(s.first, s.last) for s in self.segments]
            chained = all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
            ordered = all(first < last for first, last in bounds)
            if bounds[0][0] != 0 or bounds[-1][1] != self.model.depth or not chained or not ordered:
                raise ValueError("segments must chain blocks 1..L in order")
        return self

    @property
    def exit_depths(self) -> list[int]:
        return [e.exit_depth for e in self.exits]

    def exit(self, exit_depth: int) -> ExitEntry:
        for e in self.exits:
            if e.exit_depth == exit_depth:
                return e
        raise KeyError(exit_depth)

    @classmethod
    def read(cls, bundle: Path) -> Manifest:
        return cls.model_validate_json((bundle / MANIFEST).read_bytes())

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


def exit_row(all_exits: Any, exit_depth: int) -> Any:
    """Exit depth ``exit_depth``'s rows in an all-exits array ``[L, N, D]`` (the graph's
    ``embeddings`` output, or any array laid out like it): row ``exit_depth - 1``, the one
    place that rule is written."""
    if not 1 <= exit_depth <= len(all_exits):
        raise IndexError(f"exit depth {exit_depth} is not in 1..{len(all_exits)}")
    return all_exits[exit_depth - 1]


def segment_file_name(first: int, last: int) -> str:
    """``segment_00_01.onnx``: blocks first+1..last."""
    return f"segment_{first:02d}_{last:02d}.onnx"


def exit_file_name(exit_depth: int) -> str:
    """``exit_01.onnx`` … ``exit_12.onnx`` (two digits; three past 99)."""
    return f"exit_{exit_depth:02d}.onnx"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class BundleIntegrityError(ValueError):
    """A bundle that is missing, incomplete, or changed since export. The one-line reason names
    files by their name inside the bundle, never by a path outside it."""


def _regular_file(bundle: Path, name: str, max_bytes: int) -> Path:
    """``bundle/name`` if it is a regular file (not a link, device or fifo) of at most
    ``max_bytes``; BundleIntegrityError otherwise. Only such files are read or hashed."""
    path = bundle / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise BundleIntegrityError(f"{name} missing") from None
    except OSError:
        raise BundleIntegrityError(f"{name} cannot be read") from None
    if stat.S_ISLNK(st.st_mode):
        raise BundleIntegrityError(f"{name} is a symbolic link; bundles hold regular files only")
    if not stat.S_ISREG(st.st_mode):
        raise BundleIntegrityError(f"{name} is not a regular file")
    if st.st_size > max_bytes:
        raise BundleIntegrityError(f"{name} is larger than {max_bytes} bytes")
    return path


def bundle_id(bundle: Path) -> str:
    """A bundle's identity: the sha256 of its manifest file (a regular file of at most 1 MiB)."""
    return file_sha256(_regular_file(bundle, MANIFEST, MAX_MANIFEST_BYTES))


def load_verified(bundle: Path) -> Manifest:
    """The manifest of an intact bundle: digest sidecar and every graph's sha256 checked."""
    if not bundle.is_dir():
        raise BundleIntegrityError("not a directory")
    path = _regular_file(bundle, MANIFEST, MAX_MANIFEST_BYTES)
    digest = _regular_file(bundle, MANIFEST_DIGEST, MAX_DIGEST_BYTES)
    if digest.read_text(errors="replace").strip() != file_sha256(path):
        raise BundleIntegrityError(f"{MANIFEST} was modified after export (sha256 mismatch)")
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise BundleIntegrityError(f"invalid {MANIFEST}: {where}: {err['msg']}") from exc
    entries = [(e.file, e.sha256) for e in [*manifest.exits, *manifest.segments]]
    entries.append((manifest.all_exits.file, manifest.all_exits.sha256))
    for name, expected in entries:
        if file_sha256(_regular_file(bundle, name, MAX_GRAPH_BYTES)) != expected:
            raise BundleIntegrityError(f"{name} sha256 mismatch (corrupt or replaced)")
    if manifest.weights is not None:
        weights = _regular_file(bundle, manifest.weights.file, MAX_WEIGHTS_BYTES)
        if weights.stat().st_size != manifest.weights.bytes:
            raise BundleIntegrityError(f"{manifest.weights.file} has the wrong size (truncated?)")
        if file_sha256(weights) != manifest.weights.sha256:
            raise BundleIntegrityError(
                f"{manifest.weights.file} sha256 mismatch (corrupt or replaced)"
            )
    return manifest


def gallery_depth(manifest: Manifest) -> int:
    """The exit depth a bundle's gallery is embedded at (every graph's ``embedding`` output is
    bridged into its space); BundleIntegrityError for a format-1 bundle, which has no bridges."""
    if manifest.bridge is None:
        raise BundleIntegrityError(
            "the bundle has no bridges (manifest format 1): upgrade it with "
            "`python -m export bridge BUNDLE --dataset SPEC`"
        )
    return manifest.bridge.gallery_depth
