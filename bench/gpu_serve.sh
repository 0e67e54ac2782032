#!/usr/bin/env bash
# The serving engine on a lent GPU machine (<= 8 minutes): CUDA vs CPU parity for every graph of
# the default bundle in fp32 and fp16, latency per exit depth at batch 1 and 32 as a ratio to
# depth L, the planner's warm-up table, and FAISS GPU search against the CPU index. Writes
# bench/results/<date>-gpu-serve.md; skips cleanly (exit 0) where there is no GPU.
#   bash bench/gpu_serve.sh [OUT_DIR]
# Needs onnxruntime-gpu (and faiss-gpu-cuvs for the FAISS part) beside the export's packages;
# on a machine without them carry the wheels (DEVELOPERS.md: the 255 MB onnxruntime-gpu wheel
# travels in pieces) and put them on PYTHONPATH first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON="$(command -v python3)"; fi
fi
export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
out="${1:-bench/results}"

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "no NVIDIA GPU here: bench/gpu_serve.sh skipped"
    exit 0
fi
if ! "$PYTHON" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())'; then
    echo "error: this onnxruntime has no CUDA provider: install onnxruntime-gpu" >&2
    exit 2
fi
bundles=bundles
for precision in fp32 fp16; do
    dest="$bundles/default-$precision"
    if [[ ! -f "$dest/manifest.json" ]]; then
        flag=()
        [[ "$precision" == fp16 ]] && flag=(--fp16)
        timeout 240 "$PYTHON" -m export models/default "$dest" --force "${flag[@]}"
    fi
done
mkdir -p "$out"
report="$out/$(date +%Y-%m-%d)-gpu-serve.md"
{
    echo "# Serving on the GPU, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "Device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1); command: \`bash bench/gpu_serve.sh\`"
    echo
    timeout 300 "$PYTHON" -m bench.gpu_serve "$bundles/default-fp32" "$bundles/default-fp16"
    echo
    echo "## /metrics on this GPU (service.gpu_metrics, NVML from nvidia-ml-py)"
    echo
    "$PYTHON" - <<'PY'
from prometheus_client import CollectorRegistry, generate_latest

from service.gpu_metrics import GPUCollector

collector = GPUCollector()
if not collector.present:
    print("NVML not found (install nvidia-ml-py, as the GPU image does): no GPU lines")
else:
    registry = CollectorRegistry()
    registry.register(collector)
    lines = generate_latest(registry).decode().splitlines()
    print("\n".join("    " + line for line in lines if line.startswith("sdssl_gpu_")))
PY
} | tee "$report"
echo "wrote $report"
