#!/usr/bin/env bash
# Lays out a local SandboxFusion server (github.com/bytedance/SandboxFusion) for
# bench_executor_peers.py, never committed, by hand and outside CI:
#   benchmarks/peers/src/sandboxfusion/            a conda-shaped root (see below)
#     SandboxFusion/                               the source at COMMIT
#     envs/sandbox/                                a venv with the server's pins (poetry.lock)
#     envs/sandbox-runtime/bin/python              the interpreter user code runs with
# SandboxFusion's python runner finds a conda root by walking up from the server's interpreter to
# a directory holding `condabin/`, then runs `source ROOT/bin/activate sandbox-runtime` to find the
# runtime's python. conda itself is not installable from the package registries here, so this
# script writes a two-line `bin/activate` that puts envs/<name>/bin first on PATH, which is all
# the runner asks of it. The server runs with its own sandbox/configs/local.yaml, which sets
# `isolation: none`: code runs as a plain subprocess, no namespace or overlay isolation.
#   SF_MIRROR=/path/to/SandboxFusion.git bash benchmarks/peers/setup_sandboxfusion.sh [COMMIT]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
MIRROR="${SF_MIRROR:-/work/.mirror/bytedance+SandboxFusion/repo}"
COMMIT="${1:-469de0845cb7d665bc68044d541aa3aa28c5b30a}"
SF="$ROOT/benchmarks/peers/src/sandboxfusion"
git --git-dir="$MIRROR" cat-file -e "$COMMIT^{commit}" || { echo "commit $COMMIT not in $MIRROR" >&2; exit 1; }
mkdir -p "$SF/condabin" "$SF/bin" "$SF/envs/sandbox-runtime/bin"
rm -rf "$SF/SandboxFusion" && mkdir -p "$SF/SandboxFusion"
# only the server code and its config (the mirror may lack large data files)
git --git-dir="$MIRROR" archive "$COMMIT" sandbox pyproject.toml LICENSE 2>/dev/null \
  | tar -x -C "$SF/SandboxFusion" --exclude='sandbox/tests/datasets/*'
echo "$COMMIT" > "$SF/SandboxFusion/COMMIT"
# the server mounts its built docs site at start-up; an empty one is enough to serve the API
mkdir -p "$SF/SandboxFusion/docs/build" && echo "<html></html>" > "$SF/SandboxFusion/docs/build/index.html"
# local.yaml loads its evaluation datasets from here (left out above); /run_code needs none
mkdir -p "$SF/SandboxFusion/sandbox/tests/datasets/samples"
cat > "$SF/bin/activate" <<SH
# stand-in for conda's activate: put envs/\$1/bin first on PATH
export PATH="$SF/envs/\$1/bin:\$PATH"
SH
# the project's interpreter (sympy, numpy), as torl's sandboxes use; a wrapper, not a symlink, so
# its venv is found
rm -f "$SF/envs/sandbox-runtime/bin/python"
printf '#!/bin/sh\nexec %s "$@"\n' "$ROOT/.venv/bin/python" > "$SF/envs/sandbox-runtime/bin/python"
chmod +x "$SF/envs/sandbox-runtime/bin/python"
BASE_PY="$("$ROOT/.venv/bin/python" -c 'import sys; print(sys.base_prefix)')/bin/python3"
[ -x "$SF/envs/sandbox/bin/python" ] || "$BASE_PY" -m venv "$SF/envs/sandbox"
# versions from SandboxFusion's poetry.lock at that commit
"$SF/envs/sandbox/bin/python" -m pip install -q "pydantic==2.6.4" "fastapi==0.103.2" "starlette==0.27.0" \
  "uvicorn[standard]==0.25.0" "structlog==23.3.0" "psutil==5.9.8" "aiofiles==23.2.1" "aiohttp==3.10.6" \
  "tenacity==8.5.0" "databases[aiosqlite]==0.9.0" "aiosqlite==0.20.0" "pyyaml==6.0.2" "transformers==4.45.0"
echo "SandboxFusion $COMMIT laid out under $SF"
echo "run: cd $SF/SandboxFusion && $SF/envs/sandbox/bin/python -m uvicorn sandbox.server.server:app --port 8080"
