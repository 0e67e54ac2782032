#!/usr/bin/env bash
# Export a checkpoint to a bundle, then verify the bundle.
set -euo pipefail
# shellcheck source=scripts/common.bash
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

usage() {
    cat <<USAGE
usage: scripts/export.sh CHECKPOINT_DIR BUNDLE_DIR [--exit-depths all|1,2,..] [--fp16] [--force]

Write one ONNX graph per exit depth, the all-exits graph and the manifest into BUNDLE_DIR
(atomically: nothing appears unless every graph passed its checks), then run
'python -m export verify' on it. Prints the bundle id (sha256 of its manifest) last.
USAGE
}

[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && { usage; exit 0; }
[[ $# -ge 2 ]] || { usage >&2; die "CHECKPOINT_DIR and BUNDLE_DIR are required"; }
checkpoint="$1" bundle="$2"
shift 2

"$PYTHON" -m export "$checkpoint" "$bundle" "$@"
"$PYTHON" -m export verify "$bundle"
"$PYTHON" -c 'import sys; from pathlib import Path; from export.manifest import bundle_id; print(bundle_id(Path(sys.argv[1])))' "$bundle"
