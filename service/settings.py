"""Server settings: one pydantic-settings class, environment prefix ``SDSSL_``, fail fast."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every option is also a ``python -m service`` flag (``--max-batch``: ``SDSSL_MAX_BATCH``)."""

    # hide_input_in_errors: a validation error's text never carries the values (keys included)
    # env_ignore_empty: an empty variable (``SDSSL_IMPORT_DIR=`` in a .env) means the default,
    # never the current directory
    model_config = SettingsConfigDict(
        env_prefix="SDSSL_", extra="ignore", hide_input_in_errors=True, env_ignore_empty=True
    )

    bundle: Path = Field(Path("bundles/default"), description="bundle directory to serve")
    data_dir: Path = Field(
        Path("artifacts/data"), description="indexes and item metadata, one folder per bundle"
    )
    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(8000, ge=0, le=65535, description="listen port (0: any free port)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="cuda: every graph on CUDA or refuse to start (exit 3); auto: CUDA when "
        "onnxruntime can run every graph there, else CPU with a warning; cpu",
    )
    threads: int = Field(
        0, ge=0, description="onnxruntime intra-op threads (0: all cores but one, at least 1)"
    )
    max_batch: int = Field(32, ge=1, le=1024, description="largest batch the batcher forms")
    max_wait_ms: float = Field(
        2.0, ge=0.0, le=1000.0, description="how long a batch waits for more requests"
    )
    queue_bound: int = Field(
        256, ge=1, description="images waiting to run before requests get 503 + Retry-After"
    )
    max_body_bytes: int = Field(20 * 2**20, ge=1024, description="request body cap (413 above it)")
    max_pixels: int = Field(
        40_000_000, ge=1, description="pixel cap per image, before and after resizing (413)"
    )
    max_images: int = Field(64, ge=1, description="images per request (413 above it)")
    max_request_pixels: int = Field(
        120_000_000, ge=1, description="pixels of all images of one request together (413)"
    )
    decode_threads: int = Field(
        0, ge=0, description="threads that decode images (0: half the cores, at least 1)"
    )
    decode_queue_pixels: int = Field(
        240_000_000,
        ge=1,
        description="pixels being decoded or waiting to be, over all requests, before new "
        "image requests get 503 + Retry-After",
    )
    max_metadata_bytes: int = Field(
        16384, ge=2, description="an item's metadata, as compact UTF-8 JSON (422 above it)"
    )
    max_metadata_depth: int = Field(
        16, ge=1, description="nesting of objects and arrays in an item's metadata (422 above it)"
    )
    max_search_results: int = Field(
        10_000,
        ge=1,
        description="hits one search request may ask for: queries × k (422 above it)",
    )
    max_reply_bytes: int = Field(
        32 * 2**20,
        ge=4096,
        description="a search answer's ids and metadata, in bytes (422 above it; ask with "
        "metadata=false to leave metadata out); a listing page stops short of it",
    )
    max_filter_work: int = Field(
        10_000_000,
        ge=1,
        description="items × filter conditions one metadata filter may check: a filter that "
        "would check more is refused (422) before it runs",
    )
    filter_timeout_s: float = Field(
        5.0,
        gt=0,
        allow_inf_nan=False,
        description="a metadata filter's scan is stopped after this long (503): what "
        "max_filter_work cannot foresee (large metadata, a busy machine)",
    )
    max_header_bytes: int = Field(
        65536, ge=1024, description="a request's request line and headers together (431 above it)"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request's headers must arrive within this (else closed)"
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="a request's body must arrive within this after its headers (408)"
    )
    min_free_bytes: int = Field(
        64 * 2**20,
        ge=0,
        description="free space the data dir's filesystem must keep: below it writes get 507 "
        "and /readyz 503",
    )
    index_factory: str = Field(
        "Flat",
        description="FAISS factory string for the gallery's index (inner product metric), e.g. "
        "IVF4096,PQ32 for millions of items; Flat is exact",
    )
    nprobe: int = Field(
        16, ge=1, le=65536, description="IVF indexes: lists a search visits (recall vs time)"
    )
    rerank: int = Field(
        16,
        ge=1,
        le=64,
        description="approximate indexes: a search takes k x this many candidates from FAISS "
        "and orders them by exact cosine from the stored vectors (1: no re-ranking)",
    )
    snapshot_every: int = Field(
        1000, ge=1, description="persist FAISS snapshots after this many item changes"
    )
    snapshot_keep: int = Field(
        10,
        ge=0,
        description="snapshots (POST /v1/admin/snapshot) kept in the data dir: a new one removes "
        "the oldest beyond this many (0: keep all)",
    )
    import_dir: Path | None = Field(
        None,
        description="the folder POST /v1/admin/import may read sources from (a request names a "
        "file or folder inside it); imports through the API are off when unset",
    )
    keep_inputs: bool = Field(
        True,
        description="keep a copy of each added image (lossless PNG, shorter side at most "
        "keep_input_side) so a rollout can re-embed it with a new bundle; off: items added "
        "meanwhile need re-upload after a rollout",
    )
    keep_input_side: int = Field(
        256, ge=8, le=8192, description="shorter side of kept inputs, in pixels (never enlarged)"
    )
    api_key: SecretStr | None = Field(
        None,
        description="the admin key: required on writes and admin routes when set (Bearer or "
        "X-API-Key); it also opens every read route. From the environment only (a flag would "
        "show in `ps`); or use api_key_file",
    )
    api_key_file: Path | None = Field(
        None, description="a file holding the admin key (e.g. a Docker or Kubernetes secret)"
    )
    read_key: SecretStr | None = Field(
        None,
        description="when set, embeddings, search, item reads and listing, /v1/model and "
        "/metrics need it (or the admin key); needs api_key too. From the environment only; or "
        "use read_key_file",
    )
    read_key_file: Path | None = Field(None, description="a file holding the read key")
    cors_origins: list[str] = Field(
        default_factory=list,
        description="allowed CORS origins, a JSON list; CORS is off unless set",
    )
    warmup_runs: int = Field(3, ge=1, description="timed runs per (exit depth, batch size)")
    retime_after_s: float = Field(
        30.0,
        ge=0,
        allow_inf_nan=False,
        description="a graph a budget passed over as too slow, and not run for this long, is "
        "re-timed (warmup_runs runs) when the server is idle, so one slow spell cannot keep a "
        "depth unchosen; 0: never",
    )
    anytime: Literal["auto", "on", "off"] = Field(
        "auto",
        description="on: requests with a budget run block by block (the bundle's segment graphs) "
        "and each leaves at its own deadline; off: one whole graph per chosen depth; auto: on "
        "when a block costs at least 1 ms at warm-up (below that, per-block overhead outweighs "
        "the gain)",
    )
    calibration: Literal["components", "global"] = Field(
        "components",
        description="how predictions absorb what the latency table cannot see: per part of a "
        "request (components) or the previous planner's one global pad (global, to compare)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text lines, or one JSON object per line (time, level, logger, message, "
        "request_id) for log collectors",
    )

    @field_validator("api_key", "read_key")
    @classmethod
    def _non_empty_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value():
            return None
        return v

    @model_validator(mode="after")
    def _keys(self) -> Settings:
        for name in ("api_key", "read_key"):
            path = getattr(self, f"{name}_file")
            if path is None:
                continue
            if getattr(self, name) is not None:
                raise ValueError(f"give SDSSL_{name.upper()} or {name}_file, not both")
            try:
                key = path.read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ValueError(f"cannot read {name}_file {path}: {reason}") from None
            if not key:
                raise ValueError(f"{name}_file {path} is empty")
            setattr(self, name, SecretStr(key))
        if self.read_key is not None and self.api_key is None:
            raise ValueError(
                "a read key is set but no admin key: writes and admin routes would be open to "
                "anyone; set SDSSL_API_KEY (or api_key_file) too"
            )
        return self

    @field_validator("import_dir", "api_key_file", "read_key_file", mode="before")
    @classmethod
    def _empty_path_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("index_factory")
    @classmethod
    def _known_factory(cls, v: str) -> str:
        import faiss

        try:
            faiss.index_factory(768, v, faiss.METRIC_INNER_PRODUCT)  # 768: most PQ splits
        except RuntimeError as exc:
            raise ValueError(f"FAISS cannot build {v!r}") from exc
        return v

    @model_validator(mode="after")
    def _admissible(self) -> Settings:
        if self.decode_queue_pixels < self.max_request_pixels:
            raise ValueError(
                "decode_queue_pixels must be >= max_request_pixels, or no full-size request "
                "could ever be decoded"
            )
        return self

    def warmup_batch_sizes(self) -> list[int]:
        """Powers of two up to max_batch, and max_batch itself: the latency table's columns."""
        sizes, b = [], 1
        while b < self.max_batch:
            sizes.append(b)
            b *= 2
        return [*sizes, self.max_batch]
