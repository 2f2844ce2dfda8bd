"""`torl grade`: grade JSONL from stdin, outside training.

Each input line is `{"prediction": str, "reference": str}` (a full response or a bare answer);
each output line is `{"correct": bool, "reward": float, "reason": str}`, one per input line, in
order, plus `"answer"` (what was extracted). A line that is not such an object still gets its
output line, with `"reason": "invalid_input"` and an `"error"` naming the problem, and the
command then exits with status 1. Lines are graded in chunks so memory stays bounded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, TextIO

from torl.reward.config import GraderSettings
from torl.reward.grader import Grader, Mode, ScoreItem

CHUNK_LINES = 256


def _parse_line(line: str, lineno: int) -> ScoreItem | str:
    """A ScoreItem, or an error message naming what is wrong with the line."""
    try:
        obj: Any = json.loads(line)
    except json.JSONDecodeError as e:
        return f"line {lineno}: not valid JSON ({e.msg})"
    if not isinstance(obj, dict):
        return f"line {lineno}: expected a JSON object"
    missing = [k for k in ("prediction", "reference") if k not in obj]
    if missing:
        return f"line {lineno}: missing field(s) {', '.join(missing)}"
    pred, ref = obj["prediction"], obj["reference"]
    if isinstance(ref, int | float) and not isinstance(ref, bool):
        ref = str(ref)
    if isinstance(pred, int | float) and not isinstance(pred, bool):
        pred = str(pred)
    if not isinstance(pred, str) or not isinstance(ref, str):
        return f"line {lineno}: prediction and reference must be strings"
    return ScoreItem(response=pred, reference=ref, id=str(lineno))


def _grade_chunk(grader: Grader, parsed: list[ScoreItem | str], mode: Mode, out: TextIO) -> int:
    items = [
        ScoreItem(p.response, p.reference, mode, id=p.id) for p in parsed if isinstance(p, ScoreItem)
    ]
    results = iter(grader.score_batch(items))
    errors = 0
    for p in parsed:
        if isinstance(p, str):
            errors += 1
            row: dict[str, Any] = {"correct": False, "reward": -1.0, "reason": "invalid_input", "error": p}
        else:
            r = next(results)
            row = {"correct": r.correct, "reward": r.reward, "reason": r.reason.value, "answer": r.extracted_answer}
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
    out.flush()
    return errors


def run_grade(lines: Iterable[str], out: TextIO, settings: GraderSettings, mode: Mode) -> int:
    """Grade every line; returns the number of invalid input lines."""
    errors = 0
    with Grader(settings) as grader:
        chunk: list[ScoreItem | str] = []
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            chunk.append(_parse_line(line, lineno))
            if len(chunk) >= CHUNK_LINES:
                errors += _grade_chunk(grader, chunk, mode, out)
                chunk = []
        if chunk:
            errors += _grade_chunk(grader, chunk, mode, out)
    return errors
