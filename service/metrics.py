"""Prometheus metrics, one registry per app (so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from service.gpu_metrics import GPUCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # process_* (resident memory, CPU seconds, open files…, from /proc) and python_info;
        # sdssl_gpu_* where NVML finds a GPU (the GPU image)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.gpu = GPUCollector()
        if self.gpu.present:
            r.register(self.gpu)
        self.requests = Counter("sdssl_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram(
            "sdssl_request_seconds",
            "Server-side request latency",
            ["route", "exit_depth"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "sdssl_batch_size", "Images per executed batch", ["exit_depth"],
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "sdssl_batch_seconds", "Compute time per batch", ["exit_depth"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("sdssl_queue_images", "Images waiting to run", registry=r)
        self.decode_pending = Gauge(
            "sdssl_decode_pending_pixels", "Pixels being decoded or waiting to be", registry=r
        )
        self.budget = Counter(
            "sdssl_budget_requests", "Budgeted requests by outcome", ["outcome"], registry=r
        )
        self.items = Gauge(
            "sdssl_index_items", "Vectors in the gallery's index (one per item)", registry=r
        )
        self.sessions = Gauge(
            "sdssl_engine_sessions",
            "onnxruntime sessions of the served bundle by the provider they run on",
            ["device", "provider"],
            registry=r,
        )
        self.overloaded = Counter("sdssl_overloaded", "Requests refused with 503", registry=r)
        self.rollout_items = Counter(
            "sdssl_rollout_items",
            "Items a rollout wrote into the new bundle's index: copied (re-embedded by the job), "
            "mirrored (client writes during the job), skipped (changed meanwhile), missing (no "
            "kept input)",
            ["outcome"],
            registry=r,
        )
        self.rollout_progress = Gauge(
            "sdssl_rollout_progress", "Fraction of items the running rollout has done", registry=r
        )
        self.rollout_failures = Counter(
            "sdssl_rollout_failures", "Rollouts that failed", registry=r
        )
        self.import_rows = Counter(
            "sdssl_import_rows",
            "Rows of POST /v1/admin/import sources: stored, refused (failed the API's checks), "
            "present (skipped by resume: already stored)",
            ["outcome"],
            registry=r,
        )
        self.reloads = Counter(
            "sdssl_reloads", "Bundle reloads by outcome", ["outcome"], registry=r
        )
