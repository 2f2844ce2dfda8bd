#!/usr/bin/env bash
# Lays out the Qwen2.5-Math evaluation grader for bench_grader_agreement.py, never committed:
#   benchmarks/peers/src/qwen25-math-eval/   grader.py, parser.py, utils.py, examples.py and the
#                                            vendored latex2sympy/ of QwenLM/Qwen2.5-Math evaluation/
#   benchmarks/.venv-qwen-grader/            the pins of that repo's evaluation/requirements.txt
#                                            (sympy 1.12, antlr4-python3-runtime 4.11.1) + its deps
# The source comes from a local git mirror of github.com/QwenLM/Qwen2.5-Math (this machine reaches
# only package registries; the mirror was made with the workspace's repository fetch tool).
#   QWEN_MIRROR=/path/to/Qwen2.5-Math.git bash benchmarks/peers/setup_qwen_grader.sh [COMMIT]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
MIRROR="${QWEN_MIRROR:-/work/.mirror/QwenLM+Qwen2.5-Math/repo}"
COMMIT="${1:-a45202bd16f1ec06f433442dc1152d0074773465}"
SRC="$ROOT/benchmarks/peers/src/qwen25-math-eval"
VENV="$ROOT/benchmarks/.venv-qwen-grader"
git --git-dir="$MIRROR" cat-file -e "$COMMIT^{commit}" || { echo "commit $COMMIT not in $MIRROR" >&2; exit 1; }
rm -rf "$SRC" && mkdir -p "$SRC"
git --git-dir="$MIRROR" archive "$COMMIT" evaluation/grader.py evaluation/parser.py evaluation/utils.py \
  evaluation/examples.py evaluation/latex2sympy evaluation/LICENSE | tar -x -C "$SRC" --strip-components=1
echo "$COMMIT" > "$SRC/COMMIT"
BASE_PY="$("$ROOT/.venv/bin/python" -c 'import sys; print(sys.base_prefix)')/bin/python3"
[ -x "$VENV/bin/python" ] || "$BASE_PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "sympy==1.12" "antlr4-python3-runtime==4.11.1" "word2number==1.1" \
  "regex==2026.11.19" "numpy==2.3.5"
"$VENV/bin/python" -m pip install -q --no-deps -e "$SRC/latex2sympy"
"$VENV/bin/python" -c "
import sys; sys.path.insert(0, '$SRC')
from grader import math_equal
assert math_equal('0.5', '\\\\frac{1}{2}') and not math_equal('2', '3')
print('Qwen2.5-Math grader ready at $COMMIT')"
