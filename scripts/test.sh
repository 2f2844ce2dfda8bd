#!/usr/bin/env bash
# Run pytest in the project's venv. Exit code 5 (no tests collected) counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" = "5" ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
