# shellcheck shell=bash
# Shared by the scripts in this folder: find the repository and a Python that has the project.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

# On the host the project's .venv; inside the images the system python (set PYTHON to override).
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "${REPO_ROOT}/.venv/bin/python" ]]; then
        PYTHON="${REPO_ROOT}/.venv/bin/python"
    else
        PYTHON="$(command -v python3 || command -v python)"
    fi
fi
export PYTHON

die() {
    echo "error: $*" >&2
    exit 2
}
