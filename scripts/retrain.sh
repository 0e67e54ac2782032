#!/usr/bin/env bash
# Train a model from a config into a checkpoint directory (then evaluate it at every exit depth).
set -euo pipefail
# shellcheck source=scripts/common.bash
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

usage() {
    cat <<USAGE
usage: scripts/retrain.sh --config FILE --out DIR [--set section.key=value ...] [--resume]

Train (SDSSL or baseline, as the config says) into the checkpoint directory DIR, evaluate every
exit depth (DIR/metrics.json) unless --no-eval. Runs on the host (.venv) or in the trainer
container:  docker compose run --rm trainer scripts/retrain.sh --config configs/default.yaml --out runs/new

  --config FILE     YAML/JSON config (configs/default.yaml, configs/tiny.yaml, ...)
  --out DIR         checkpoint directory to write
  --set K=V         override one config field (repeatable), e.g. --set train.epochs=50
  --resume          continue the checkpoint in --out
  --no-eval         skip the per-depth evaluation
  -h, --help        this help
USAGE
}

args=()
config="" out=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --config) config="${2:?--config needs a file}"; shift 2 ;;
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        --set) args+=(--set "${2:?--set needs key=value}"); shift 2 ;;
        --resume) args+=(--resume); shift ;;
        --no-eval) args+=(--no-eval); shift ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ -n "$out" ]] || { usage >&2; die "--out is required"; }
if [[ " ${args[*]-} " != *" --resume "* ]]; then
    [[ -n "$config" ]] || { usage >&2; die "--config is required (unless --resume)"; }
    args+=(--config "$config")
fi

exec "$PYTHON" -m training train --out "$out" "${args[@]}"
