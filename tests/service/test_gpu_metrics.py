"""GPU metrics: nothing (and no error) without NVML; with it, memory and utilisation per device.

NVML is the NVIDIA driver's library, not ours: where no GPU is lent, a stand-in module with
NVML's calls checks what the collector makes of their answers."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

from service.gpu_metrics import GPUCollector
from service.metrics import Metrics


def test_without_nvml_metrics_have_no_gpu_lines() -> None:
    m = Metrics()
    text = generate_latest(m.registry).decode()
    if not m.gpu.present:  # this machine: no GPU (or no nvidia-ml-py)
        assert "sdssl_gpu_" not in text
    assert "process_resident_memory_bytes" in text


def test_with_nvml_each_device_reports_memory_and_utilisation(monkeypatch) -> None:
    nvml = types.ModuleType("pynvml")
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetCount = lambda: 2
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA H100" if h == 0 else "NVIDIA H200"
    nvml.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=(h + 1) * 2**30, total=80 * 2**30)
    nvml.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=37 * (h + 1))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    registry = CollectorRegistry()
    collector = GPUCollector()
    assert collector.present
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'sdssl_gpu_memory_used_bytes{gpu="0",name="NVIDIA H100"} 1.073741824e+09' in text
    assert 'sdssl_gpu_memory_total_bytes{gpu="1",name="NVIDIA H200"} 8.589934592e+10' in text
    assert 'sdssl_gpu_utilization_ratio{gpu="1",name="NVIDIA H200"} 0.74' in text


def test_a_failing_nvml_never_fails_a_scrape(monkeypatch) -> None:
    nvml = types.ModuleType("pynvml")
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetCount = lambda: 1

    def gone(i):
        raise RuntimeError("GPU is lost")

    nvml.nvmlDeviceGetHandleByIndex = gone
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    registry = CollectorRegistry()
    registry.register(GPUCollector())
    assert "sdssl_gpu_" not in generate_latest(registry).decode()
