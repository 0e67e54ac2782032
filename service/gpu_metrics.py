"""GPU metrics on /metrics when the machine has an NVIDIA GPU: memory used and total, and
utilisation, per device, read from NVML at each scrape.

NVML comes from ``nvidia-ml-py`` (in the GPU image only) and the driver's ``libnvidia-ml``; where
either is missing — the CPU image, a machine without a GPU — the collector reports nothing and
costs nothing (one failed import or init, at start).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


def _nvml() -> Any | None:
    """The initialised NVML module, or None (no package, no driver, no device)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
    except Exception as exc:  # pynvml.NVMLError and its many subclasses; a missing library
        log.debug("no NVML: %s", exc)
        return None
    return pynvml


class GPUCollector(Collector):
    """``sdssl_gpu_memory_used_bytes``, ``sdssl_gpu_memory_total_bytes`` and
    ``sdssl_gpu_utilization_ratio`` labelled by device index and name."""

    def __init__(self) -> None:
        self.nvml = _nvml()

    @property
    def present(self) -> bool:
        return self.nvml is not None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.nvml is None:
            return
        nv, labels = self.nvml, ["gpu", "name"]
        used = GaugeMetricFamily("sdssl_gpu_memory_used_bytes", "GPU memory in use", labels=labels)
        total = GaugeMetricFamily("sdssl_gpu_memory_total_bytes", "GPU memory", labels=labels)
        busy = GaugeMetricFamily(
            "sdssl_gpu_utilization_ratio",
            "Share of the last sample period a kernel ran on the GPU (NVML)",
            labels=labels,
        )
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                name = nv.nvmlDeviceGetName(handle)
                name = name.decode() if isinstance(name, bytes) else str(name)
                memory = nv.nvmlDeviceGetMemoryInfo(handle)
                rates = nv.nvmlDeviceGetUtilizationRates(handle)
                used.add_metric([str(i), name], float(memory.used))
                total.add_metric([str(i), name], float(memory.total))
                busy.add_metric([str(i), name], rates.gpu / 100.0)
        except Exception as exc:  # a scrape never fails for a GPU that went away
            log.warning("GPU metrics unavailable: %s", exc)
            return
        yield from (used, total, busy)
