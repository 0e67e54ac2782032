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
\$SDSSL_API_KEY). BUNDLE_PATH is the path as the server sees it (in compose: /bundles/<name>).
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

# Python's standard library only: works on the host and in the serving image (no curl there).
exec "$PYTHON" - "$url" "$bundle" "$key" <<'PY'
import json, sys, urllib.error, urllib.request

url, bundle, key = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
req = urllib.request.Request(
    f"{url}/v1/admin/reload",
    data=json.dumps({"bundle": bundle}).encode(),
    headers={"Content-Type": "application/json", **({"X-API-Key": key} if key else {})},
    method="POST",
)
try:
    with urllib.request.urlopen(req, timeout=600) as resp:
        body = json.load(resp)
except urllib.error.HTTPError as exc:
    reason = json.load(exc).get("error", {}).get("message", exc.reason)
    print(f"error: reload failed ({exc.code}): {reason}", file=sys.stderr)
    sys.exit(1)
except urllib.error.URLError as exc:
    print(f"error: cannot reach {url}: {exc.reason}", file=sys.stderr)
    sys.exit(1)
n = body["items"]
print(f"now serving {body['model']} (was {body['previous']}); {n} item{'s' * (n != 1)} indexed")
PY
