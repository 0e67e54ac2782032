#!/usr/bin/env bash
# Retrain → export → verify → roll out to a running server → wait until it serves the new bundle.
set -euo pipefail
# shellcheck source=scripts/common.bash
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

usage() {
    cat <<USAGE
usage: scripts/rollout.sh --bundle DIR [--checkpoint DIR [--config FILE [--set K=V ...]]]
                          [--server-bundle PATH] [--url URL] [--api-key KEY]
                          [--batch N] [--pause-ms MS] [--no-swap]

One step from a config to a server answering with the new model:
  1. with --config: train into --checkpoint            (scripts/retrain.sh)
  2. with --checkpoint: export it into --bundle         (scripts/export.sh)
  3. verify the bundle                                  (python -m export verify)
  4. POST /v1/admin/rollout: the server re-embeds every item from its kept inputs into the new
     bundle's indexes while it keeps serving, then swaps
  5. follow the job with a progress bar until the new bundle serves (with --no-swap: until it
     is ready; swap later with POST /v1/admin/jobs/{id}/swap)
Items the server kept no input for are printed at the end: re-upload them.

  --bundle DIR          the new bundle (written by step 2, else it must exist)
  --checkpoint DIR      checkpoint to export (and to train into with --config)
  --config FILE         train first (see scripts/retrain.sh); --set overrides its fields
  --server-bundle PATH  the bundle's path as the server sees it (default: DIR; in compose
                        /bundles/<name>)
  --url URL             the server (default \$SDSSL_URL, else http://127.0.0.1:\$SDSSL_PORT, 8000)
  --api-key KEY         admin key (default \$SDSSL_API_KEY, better: a flag shows in \`ps\`)
  --batch N             items re-embedded per step (default 64)
  --pause-ms MS         pause between steps, to leave the CPU to requests (default 0)
  --no-swap             stop at ready; the old bundle serves (writes reach both) until a swap
Exit status: 0 done, 1 the rollout failed or was cancelled (the old bundle keeps serving),
2 bad usage.
USAGE
}

bundle="" checkpoint="" config="" server_bundle="" batch=64 pause=0 swap=true
sets=()
url="${SDSSL_URL:-http://127.0.0.1:${SDSSL_PORT:-8000}}"
key="${SDSSL_API_KEY:-}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --bundle) bundle="${2:?--bundle needs a directory}"; shift 2 ;;
        --checkpoint) checkpoint="${2:?--checkpoint needs a directory}"; shift 2 ;;
        --config) config="${2:?--config needs a file}"; shift 2 ;;
        --set) sets+=(--set "${2:?--set needs key=value}"); shift 2 ;;
        --server-bundle) server_bundle="${2:?--server-bundle needs a path}"; shift 2 ;;
        --url) url="${2:?--url needs a value}"; shift 2 ;;
        --api-key) key="${2:?--api-key needs a value}"; shift 2 ;;
        --batch) batch="${2:?--batch needs a number}"; shift 2 ;;
        --pause-ms) pause="${2:?--pause-ms needs a number}"; shift 2 ;;
        --no-swap) swap=false; shift ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ -n "$bundle" ]] || { usage >&2; die "--bundle is required"; }
[[ -z "$config" || -n "$checkpoint" ]] || die "--config needs --checkpoint (where to train)"
[[ ${#sets[@]} -eq 0 || -n "$config" ]] || die "--set needs --config"
[[ "$batch" =~ ^[0-9]+$ ]] || die "--batch must be a number"
[[ "$pause" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--pause-ms must be a number"

here="$(dirname "${BASH_SOURCE[0]}")"
if [[ -n "$config" ]]; then
    echo "== 1/5 train $config -> $checkpoint" >&2
    "$here/retrain.sh" --config "$config" --out "$checkpoint" "${sets[@]}"
fi
if [[ -n "$checkpoint" ]]; then
    echo "== 2/5 export $checkpoint -> $bundle" >&2
    "$here/export.sh" "$checkpoint" "$bundle" --force >/dev/null
fi
echo "== 3/5 verify $bundle" >&2
if [[ -f "$REPO_ROOT/export/__main__.py" ]]; then
    "$PYTHON" -m export verify "$bundle" >&2
else  # the serving image has the manifest checks only: every file's hash
    "$PYTHON" -c 'import sys; from pathlib import Path; from export.manifest import load_verified
load_verified(Path(sys.argv[1])); print("bundle intact")' "$bundle" >&2
fi
echo "== 4/5 roll out to $url, 5/5 follow the job" >&2
opts=(--batch "$batch" --pause-ms "$pause")
[[ "$swap" == true ]] || opts+=(--no-swap)
# The Python client (client/: installed in .venv, copied into the serving image); the key goes
# in its environment, never on its command line.
SDSSL_API_KEY="$key" exec "$PYTHON" -m sdssl_client --url "$url" rollout \
    "${server_bundle:-$bundle}" "${opts[@]}"
