#!/usr/bin/env bash
# GPU smoke run on one machine with an NVIDIA GPU and no cluster: installs the GPU extras into a venv,
# then runs scripts/gpu_smoke.py (tiny model and a random Qwen2-0.5B through a few `torl train` steps
# on CUDA vLLM + CUDA DeepSpeed, then one weight push over gRPC and over NCCL). Unattended; each
# phase has its own time limit and the whole run is capped at TORL_SMOKE_BUDGET seconds (600).
#
#   scripts/gpu_smoke.sh              # the run (needs a GPU)
#   scripts/gpu_smoke.sh --dry-run    # check the generated configs only (no GPU, nothing started)
#   TORL_SMOKE_VENV=/path/venv TORL_SMOKE_SKIP_INSTALL=1 scripts/gpu_smoke.sh --phases push
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TORL_SMOKE_VENV:-$ROOT/.venv-gpu}"
BUDGET="${TORL_SMOKE_BUDGET:-600}"
DRY_RUN=0
for arg in "$@"; do
  [[ "$arg" == "--dry-run" ]] && DRY_RUN=1
done

if [[ "$DRY_RUN" == 1 ]]; then
  PY="${TORL_SMOKE_PYTHON:-$ROOT/.venv/bin/python}"
  exec "$PY" "$ROOT/scripts/gpu_smoke.py" "$@"
fi

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_smoke: no NVIDIA GPU (nvidia-smi -L failed); use --dry-run to check the configs" >&2
  exit 2
fi
nvidia-smi -L
# torl train starts a local Redis and sandboxes tool code (gVisor or bubblewrap): say what is missing now
command -v redis-server >/dev/null || { echo "gpu_smoke: needs redis-server on PATH (apt-get install redis-server)" >&2; exit 2; }
command -v runsc >/dev/null || command -v bwrap >/dev/null \
  || { echo "gpu_smoke: needs runsc (gVisor) or bwrap (apt-get install bubblewrap) for the executor" >&2; exit 2; }

if [[ "${TORL_SMOKE_SKIP_INSTALL:-0}" != 1 ]]; then
  start=$(date +%s)
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  CONSTRAINTS=()
  [[ -f "$ROOT/requirements/constraints-gpu.txt" ]] && CONSTRAINTS=(-c "$ROOT/requirements/constraints-gpu.txt")
  # the GPU extras (CUDA torch, vLLM, DeepSpeed) plus the CPU-side services torl train starts
  "$VENV/bin/pip" install -q "${CONSTRAINTS[@]}" -e "$ROOT[rollout-gpu,learner-gpu,executor,reward]" \
    "grpcio-tools>=1.70"
  "$VENV/bin/python" "$ROOT/scripts/gen_protos.py"
  echo "gpu_smoke: install took $(( $(date +%s) - start ))s"
fi

# TORL_CACHE_DIR keeps the tiny model between runs; nothing is downloaded at run time.
export TORL_CACHE_DIR="${TORL_CACHE_DIR:-$ROOT/.cache/torl}"
exec timeout --signal=TERM --kill-after=30 "$BUDGET" "$VENV/bin/python" "$ROOT/scripts/gpu_smoke.py" "$@"
