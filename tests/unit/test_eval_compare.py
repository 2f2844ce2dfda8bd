"""The demo's arith set as an eval dataset, and the before/after comparison of `torl eval` runs."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.conftest import REPO
from torl.common.datasets import DatasetError
from torl.evaluation.cli import load_problems, parse_arith
from torl.evaluation.runner import EvalOptions, read_run, write_outputs
from torl.evaluation.scoring import DatasetSummary, EvalRun, comparison_table
from torl.learner.config import DataSettings
from torl.learner.datasets import load_dataset


def test_arith_is_the_learners_held_out_set() -> None:
    # The exact problems `data.dataset: arith` evaluates on in training (configs/demo-cpu.yaml: seed 0, 64).
    held = load_dataset(DataSettings(dataset="arith", seed=0, arith_eval_size=64)).eval()
    mine = load_problems(["arith"], 0, None)
    assert [(p.problem, p.answer) for p in mine] == [(p.problem, p.answer) for p in held]
    assert {p.dataset for p in mine} == {"arith"}
    assert len(load_problems(["arith:3:10"], 4, None)) == 4
    other = load_problems(["arith:3:10"], 0, None)
    assert [p.problem for p in other] != [p.problem for p in mine[:10]]


@pytest.mark.parametrize("name", ["arith:1", "arith:x:4", "arith:1:0", "arith:1:2:3"])
def test_bad_arith_spec_is_a_dataset_error(name: str) -> None:
    with pytest.raises(DatasetError, match="arith:SEED:SIZE"):
        parse_arith(name)
    assert parse_arith("arithmetic.jsonl") is None


def summary(ds: str, acc: float, pass_k: float, calls: float, err: float, tokens: float) -> DatasetSummary:
    return DatasetSummary(ds, 64, 8, acc, pass_k, tokens, calls, err, 0)


def test_comparison_table_side_by_side_with_change() -> None:
    before = EvalRun("pretrained", 8, 1.0, [summary("arith", 0.25, 0.75, 0.5, 0.1, 40.0)])
    after = EvalRun("rl", 8, 1.0, [summary("arith", 0.625, 0.875, 1.0, 0.05, 60.5), summary("gsm8k", 0, 0, 0, 0, 1)])
    table = comparison_table([before, after])
    lines = table.splitlines()
    assert lines[0] == (
        "| dataset | model | problems | avg@8 % | pass@8 % | tool calls / response | code error rate % "
        "| avg response tokens |"
    )
    assert "| arith | pretrained | 64 | 25.0 | 75.0 | 0.50 | 10.0 | 40.0 |" in lines
    assert "| arith | rl | 64 | 62.5 | 87.5 | 1.00 | 5.0 | 60.5 |" in lines
    assert "| arith | change pretrained → rl | | +37.5 | +12.5 | +0.50 | -5.0 | +20.5 |" in lines
    assert "gsm8k" not in table  # only datasets every run has


def test_comparison_refuses_incomparable_runs() -> None:
    a = EvalRun("a", 8, 1.0, [summary("arith", 0.1, 0.2, 0, 0, 1)])
    with pytest.raises(ValueError, match="not comparable"):
        comparison_table([a, EvalRun("b", 1, 0.0, a.summaries)])
    with pytest.raises(ValueError, match="no dataset in common"):
        comparison_table([a, EvalRun("b", 8, 1.0, [summary("gsm8k", 0, 0, 0, 0, 1)])])
    with pytest.raises(ValueError, match="at least 2"):
        comparison_table([a])


def test_eval_compare_cli_reads_written_runs(tmp_path: Path) -> None:
    for name, acc in (("before", 0.25), ("after", 0.5)):
        write_outputs(tmp_path / name, [], [summary("arith", acc, 0.75, 1.0, 0.0, 50.0)],
                      EvalOptions(k=8, temperature=1.0), name)  # fmt: skip
    assert read_run(tmp_path / "after").label == "after"
    table_file = tmp_path / "cmp.md"
    r = subprocess.run(
        [sys.executable, "-m", "torl.cli.main", "eval-compare", str(tmp_path / "before"), str(tmp_path / "after"),
         "--labels", "pre,post", "--out", str(table_file)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "| arith | change pre → post | | +25.0 | +0.0 |" in r.stdout
    assert table_file.read_text().strip() == r.stdout.strip()
    # A directory without a summary, and a malformed summary: exit 2 with the path named, no traceback.
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text(
        json.dumps({"model": "x", "datasets": [asdict(summary("a", 0, 0, 0, 0, 0))]})
    )
    for other in ("missing", "bad"):
        r = subprocess.run(
            [sys.executable, "-m", "torl.cli.main", "eval-compare", str(tmp_path / "before"), str(tmp_path / other)],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )  # fmt: skip
        assert r.returncode == 2
        assert str(tmp_path / other) in r.stderr and "Traceback" not in r.stderr
