#!/usr/bin/env bash
# Builds benchmarks/.venv-trl: TRL's GRPOTrainer for bench_vs_trl.py, beside (never inside) the
# project's .venv. The new venv sees .venv's packages through a .pth file, so torch, transformers
# and vllm are the very same installs torl runs on (nothing of them is downloaded or upgraded);
# only what TRL adds (trl, accelerate, datasets and their dependencies) lands in .venv-trl.
# `pip install --dry-run trl==1.16.0 -c requirements/constraints-cpu.txt` against .venv showed it
# would add accelerate, datasets, multiprocess, pandas, pyarrow, trl and xxhash and change no pin;
# a separate venv keeps those out of the services' environment all the same.
#   bash benchmarks/peers/setup_trl.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="$ROOT/benchmarks/.venv-trl"
MAIN_SITE="$("$ROOT/.venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
BASE_PY="$("$ROOT/.venv/bin/python" -c 'import sys; print(sys.base_prefix)')/bin/python3"
if [ ! -x "$VENV/bin/python" ]; then
  "$BASE_PY" -m venv "$VENV"
fi
SITE="$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
# Appended after the venv's own site-packages: TRL's packages win, .venv supplies the rest (its own
# .pth files too, so the editable `torl` install resolves here as well).
echo "import site; site.addsitedir('$MAIN_SITE')" > "$SITE/zz-torl-main-venv.pth"
"$VENV/bin/python" -m pip install -q -c "$ROOT/requirements/constraints-cpu.txt" \
  -r "$ROOT/benchmarks/peers/requirements-trl.txt"
"$VENV/bin/python" - <<'PY'
import torch, transformers, trl
print(f"trl {trl.__version__}, torch {torch.__version__} ({torch.__file__}), transformers {transformers.__version__}")
PY
