"""`torl grade`: JSONL in, one JSONL line out per input line, in order."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import REPO, torl_cmd


@pytest.mark.timeout(120)
def test_grade_reads_stdin_and_writes_one_line_per_input() -> None:
    lines = [
        json.dumps({"prediction": "so \\boxed{\\dfrac{1}{2}}", "reference": "0.5"}),
        "not json",
        json.dumps({"prediction": "The answer is 7.", "reference": "7"}),
        json.dumps({"prediction": "\\boxed{(1,2)}", "reference": "\\{1,2\\}"}),
        json.dumps({"prediction": 42, "reference": "42"}),
        json.dumps({"prediction": "x"}),
    ]
    proc = subprocess.run(
        torl_cmd("grade", "--workers", "1"),
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=100,
    )
    assert proc.returncode == 1, proc.stderr
    assert "2 invalid input line(s)" in proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["correct"], r["reward"], r["reason"]) for r in rows] == [
        (True, 1.0, "correct"),
        (False, -1.0, "invalid_input"),
        (True, 1.0, "correct"),
        (False, -1.0, "wrong"),
        (True, 1.0, "correct"),
        (False, -1.0, "invalid_input"),
    ]
    assert rows[1]["error"].startswith("line 2: not valid JSON")
    assert "missing field(s) reference" in rows[5]["error"]


@pytest.mark.timeout(120)
def test_grade_training_mode_needs_a_boxed_answer() -> None:
    proc = subprocess.run(
        torl_cmd("grade", "--mode", "training", "--workers", "1"),
        input=json.dumps({"prediction": "The answer is 7.", "reference": "7"}) + "\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"correct": False, "reward": -1.0, "reason": "no_answer", "answer": ""}
    bad = subprocess.run(torl_cmd("grade", "--mode", "nope"), input="", capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "--mode must be eval or training" in bad.stderr
