"""Grades labelled pairs with the Qwen2.5-Math evaluation grader, the way its evaluate.py does.

Runs in benchmarks/.venv-qwen-grader (benchmarks/peers/setup_qwen_grader.sh) with the fetched
source on sys.path. Per pair: the prediction's answer is `parser.extract_answer(text, "math")`
(last \\boxed{}, else "the answer is", else the last number; strip_string applied), the reference
goes through `parser.strip_string`, and the verdict is `grader.math_equal(pred, ref)`; as in their
evaluate.py (a pebble process pool, 3 s per call) a call that takes over 3 s counts as not equal:
its worker process is killed and replaced, so a hang inside sympy or regex cannot stall the run.
Reads JSONL {prediction, reference} on stdin, writes JSONL {qwen_correct, qwen_answer,
qwen_timeout} in the same order (progress on stderr).

    benchmarks/.venv-qwen-grader/bin/python benchmarks/peers/qwen_grade.py < pairs.jsonl
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

SRC = Path(__file__).resolve().parent / "src" / "qwen25-math-eval"
TIMEOUT_S = 3.0


def _worker(conn: Connection) -> None:
    sys.path.insert(0, str(SRC))
    from grader import math_equal
    from parser import extract_answer, strip_string

    while True:
        prediction, reference = conn.recv()
        pred = ""
        try:
            pred = extract_answer(prediction, "math")
            ok = bool(math_equal(pred, strip_string(reference)))
        except Exception:  # the reference pipeline counts a crash of the grader as not equal
            ok = False
        conn.send((ok, pred))


class Judge:
    """One worker process; a call over TIMEOUT_S kills it (as pebble does in evaluate.py) and starts another."""

    def __init__(self) -> None:
        self._start()

    def _start(self) -> None:
        self.conn, child = mp.Pipe()
        self.proc = mp.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()

    def __call__(self, prediction: str, reference: str) -> tuple[bool, str, bool]:
        self.conn.send((prediction, reference))
        if self.conn.poll(TIMEOUT_S):
            ok, pred = self.conn.recv()
            return ok, pred, False
        self.proc.kill()
        self.proc.join()
        self._start()
        return False, "", True


def main() -> int:
    judge = Judge()
    t0 = time.monotonic()
    n = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        row = json.loads(line)
        ok, pred, timed_out = judge(row["prediction"], row["reference"])
        print(json.dumps({"qwen_correct": ok, "qwen_answer": pred, "qwen_timeout": timed_out}), flush=True)
        n += 1
        if n % 100 == 0:
            print(f"qwen_grade: {n} pairs in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    judge.proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
