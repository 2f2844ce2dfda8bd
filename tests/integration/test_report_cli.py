"""`torl report RUN_DIR` through the installed command: plots, summary figures, and clear errors.

The metrics log is written here in the learner's row format (one row per step, evaluation rows
with eval_* keys), so the expected summary figures are known exactly.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

PLOTS = ("reward.png", "accuracy.png", "tool_use.png", "response_length.png")


def torl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "torl.cli.main", *args], capture_output=True, text=True, timeout=90)


def step_row(step: int) -> dict[str, float | int]:
    return {
        "step": step, "time": 1.7e9 + step, "responses": 64, "excluded": 0,
        "reward_mean": -1.0 + 0.1 * step, "accuracy": 0.05 * step, "tool_use_rate": min(1.0, 0.3 + 0.05 * step),
        "tool_calls_per_response": 0.5, "code_error_rate": 0.0, "response_tokens": 60.0 - step,
        "step_seconds": 2.0 + 0.1 * step, "wait_seconds": 1.0, "train_seconds": 0.5,
    }


def write_run(learner_dir: Path, steps: int = 12) -> None:
    learner_dir.mkdir(parents=True)
    rows: list[dict[str, float | int]] = [
        {"step": 0, "time": 1.7e9, "eval_accuracy": 0.125, "eval_reward_mean": -0.75, "eval_tool_use_rate": 0.25}
    ]
    rows += [step_row(s) for s in range(1, steps + 1)]
    rows.append({"step": steps, "eval_accuracy": 0.875, "eval_reward_mean": 0.75, "eval_tool_use_rate": 1.0})
    (learner_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def test_report_from_train_run_dir(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    write_run(run / "learner")
    res = torl("report", str(run), "--edge", "3")
    assert res.returncode == 0, res.stderr
    out = run / "learner" / "report"
    for name in PLOTS:
        w, h = png_size(out / name)
        assert (w, h) == (600, 350), f"{name}: {w}x{h}"
    summary = (out / "summary.md").read_text()
    # steps 1-3: reward -0.9,-0.8,-0.7 -> -0.8; steps 10-12: 0,0.1,0.2 -> 0.1; eval before/after.
    assert "Steps: 12" in summary
    assert "| mean reward | -0.800 | 0.100 |" in summary
    assert "| accuracy | 0.125 | 0.875 |" in summary
    assert "| response tokens | 58.000 | 49.000 |" in summary
    for name in PLOTS:
        assert f"]({name})" in summary
    data = json.loads((out / "summary.json").read_text())
    assert data["steps"] == 12 and data["eval_steps"] == [0, 12]
    assert "| mean reward | -0.800 | 0.100 |" in res.stdout


def test_report_accepts_the_learner_dir_itself(tmp_path: Path) -> None:
    write_run(tmp_path / "out", steps=4)
    res = torl("report", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert "Steps: 4" in (tmp_path / "out" / "report" / "summary.md").read_text()


def test_report_errors_name_what_is_wrong(tmp_path: Path) -> None:
    res = torl("report", str(tmp_path / "missing"))
    assert res.returncode == 2 and "no such run directory" in res.stderr and "Traceback" not in res.stderr

    (tmp_path / "empty").mkdir()
    res = torl("report", str(tmp_path / "empty"))
    assert res.returncode == 2 and "no metrics.jsonl" in res.stderr

    bad = tmp_path / "bad"
    write_run(bad, steps=3)
    with (bad / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "reward_mean": \n')
    res = torl("report", str(bad))
    assert res.returncode == 2 and "metrics.jsonl:6: not a JSON object" in res.stderr, res.stderr
    assert not (bad / "report").exists()

    evals_only = tmp_path / "evals"
    evals_only.mkdir()
    (evals_only / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval_accuracy": 0.5}) + "\n")
    res = torl("report", str(evals_only))
    assert res.returncode == 2 and "no training step rows" in res.stderr

    nan = tmp_path / "nan"
    nan.mkdir()
    (nan / "metrics.jsonl").write_text(json.dumps({**step_row(1), "reward_mean": "high"}) + "\n")
    res = torl("report", str(nan))
    assert res.returncode == 2 and "metrics.jsonl:1: reward_mean is 'high'" in res.stderr, res.stderr
