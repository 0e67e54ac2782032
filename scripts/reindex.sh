#!/usr/bin/env bash
# Embed image folders (or lists of paths/ids) into a bundle's indexes; resumable.
set -euo pipefail
# shellcheck source=scripts/common.bash
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

usage() {
    cat <<USAGE
usage: scripts/reindex.sh BUNDLE_DIR SOURCE... [--data-dir DIR] [--batch-size N] [--quiet]

Embed every image of the sources once, at the bundle's gallery depth, into the bundle's
gallery under DATA_DIR/<bundle id>/ (default: \$SDSSL_DATA_DIR or artifacts/data).
SOURCE is an image folder (id = file stem, label = parent folder) or a text file of
'path<TAB>id' lines. Ids already indexed are skipped, so an interrupted run resumes.
Index a bundle before serving it (or before 'scripts/reload.sh' swaps to it).
USAGE
}

[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && { usage; exit 0; }
[[ $# -ge 2 ]] || { usage >&2; die "BUNDLE_DIR and at least one SOURCE are required"; }
exec "$PYTHON" -m service.lifecycle.reindex "$@"
