#!/usr/bin/env bash
# Ask a running server to swap to another bundle (atomically; the old one serves until then).
set -euo pipefail
# shellcheck source=scripts/common.bash
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

usage() {
    cat <<USAGE
usage: scripts/reload.sh BUNDLE_PATH [--url URL] [--api-key KEY]

POST /v1/admin/reload {"bundle": BUNDLE_PATH} to the server at URL (default \$SDSSL_URL,
else http://127.0.0.1:\$SDSSL_PORT, port 8000 if unset) with the API key (default
\$SDSSL_API_KEY, which is better: a flag shows in \`ps\`). BUNDLE_PATH is the path as the
server sees it (in compose: /bundles/<name>).
On failure the server keeps its old bundle and this exits 1 with its reason.
USAGE
}

[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && { usage; exit 0; }
[[ $# -ge 1 ]] || { usage >&2; die "BUNDLE_PATH is required"; }
bundle="$1"
shift
url="${SDSSL_URL:-http://127.0.0.1:${SDSSL_PORT:-8000}}"
key="${SDSSL_API_KEY:-}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --url) url="${2:?--url needs a value}"; shift 2 ;;
        --api-key) key="${2:?--api-key needs a value}"; shift 2 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# The Python client (client/: installed in .venv, copied into the serving image); the key goes
# in its environment, never on its command line.
SDSSL_API_KEY="$key" exec "$PYTHON" -m sdssl_client --url "$url" reload "$bundle"
