#!/usr/bin/env bash
# One script for a lent GPU machine (<= 8 minutes): SDSSL training step cost (bf16) for the
# default model and a ViT-S/16, whole-loop throughput against the step (CPU vs device
# augmentation), and depth scaling of the torch model on the GPU. Writes
# bench/results/<date>-gpu.md; skips cleanly (exit 0) where there is no GPU.
#   bash bench/gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON="$(command -v python3)"; fi
fi
export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
out="${1:-bench/results}"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "no CUDA GPU visible to torch: bench/gpu.sh skipped"
    exit 0
fi
mkdir -p "$out"
report="$out/$(date +%Y-%m-%d)-gpu.md"
{
    echo "# GPU benchmarks, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "Device: $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))'); command: \`bash bench/gpu.sh\`"
    echo
    echo "## Training step, bf16 (python -m bench.train_step --device cuda --bf16)"
    echo
    timeout 200 "$PYTHON" -m bench.train_step --device cuda --bf16 --config configs/default.yaml --methods simclr,mocov3 --batch-size 256
    echo
    echo "The same with the exits' heads stacked (heads.stacked: one batched matmul per layer):"
    echo
    timeout 200 "$PYTHON" -m bench.train_step --device cuda --bf16 --config configs/default.yaml --methods simclr,mocov3 --batch-size 256 --stacked-heads
    echo
    timeout 200 "$PYTHON" -m bench.train_step --device cuda --bf16 --config configs/vit_s16.yaml --methods mocov3 --batch-size 128 --repeats 5
    echo
    echo "## Whole training loop vs fixed-batch step, bf16 (python -m bench.train_throughput)"
    echo
    timeout 150 "$PYTHON" -m bench.train_throughput --device cuda --bf16 --batch-size 256 --workers 8 --steps 40
    echo
    echo "## Depth scaling of the torch model on the GPU (bf16, batch 1 and 256)"
    echo
    timeout 120 "$PYTHON" -m bench.torch_depth_scaling --device cuda
} | tee "$report"
echo "wrote $report"
