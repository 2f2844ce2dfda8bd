"""Grades labelled pairs with the Qwen2.5-Math evaluation grader, the way its evaluate.py does.

Runs in benchmarks/.venv-qwen-grader (benchmarks/peers/setup_qwen_grader.sh) with the fetched
source on sys.path. Per pair: the prediction's answer is `parser.extract_answer(text, "math")`
(last \\boxed{}, else "the answer is", else the last number; strip_string applied), the reference
goes through `parser.strip_string`, and the verdict is `grader.math_equal(pred, ref)`; as in their
evaluate.py a call that takes over 3 s counts as not equal. Reads JSONL {prediction, reference}
on stdin, writes JSONL {qwen_correct, qwen_answer, qwen_timeout} in the same order.

    benchmarks/.venv-qwen-grader/bin/python benchmarks/peers/qwen_grade.py < pairs.jsonl
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent / "src" / "qwen25-math-eval"
TIMEOUT_S = 3


class _Timeout(Exception):
    pass


def _alarm(*_: object) -> None:
    raise _Timeout


def main() -> int:
    sys.path.insert(0, str(SRC))
    from grader import math_equal
    from parser import extract_answer, strip_string

    signal.signal(signal.SIGALRM, _alarm)
    for line in sys.stdin:
        if not line.strip():
            continue
        row = json.loads(line)
        timed_out = False
        pred = ""
        try:
            signal.alarm(TIMEOUT_S)
            pred = extract_answer(row["prediction"], "math")
            ok = bool(math_equal(pred, strip_string(row["reference"])))
        except _Timeout:
            ok, timed_out = False, True
        except Exception:  # the reference pipeline counts a crash of the grader as not equal
            ok = False
        finally:
            signal.alarm(0)
        print(json.dumps({"qwen_correct": ok, "qwen_answer": pred, "qwen_timeout": timed_out}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
