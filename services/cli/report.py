"""`torl report RUN_DIR`: find a run's metrics log, check it, and hand it to the learner's report.

The plots and the summary are made by torl.learner.report (the same code `torl train` calls at the
end of a run); this module only resolves which directory holds metrics.jsonl (a learner output
dir, or a `torl train` run_dir whose learner wrote into `learner/`) and turns a missing, empty or
corrupt log into one clear error line instead of a traceback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
STEP_KEYS = ("step", "reward_mean", "accuracy", "tool_use_rate", "response_tokens")


class ReportError(Exception):
    """The run directory or its metrics log cannot be reported on; the message says why."""


def find_metrics_dir(run_dir: Path) -> Path:
    """The directory holding metrics.jsonl: run_dir itself or run_dir/learner."""
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run directory")
    for cand in (run_dir, run_dir / "learner"):
        if (cand / METRICS_FILE).is_file():
            return cand
    raise ReportError(f"{run_dir}: no {METRICS_FILE} here or in {run_dir / 'learner'} (is this a training run?)")


def check_metrics(path: Path) -> int:
    """Number of step rows in `path`; ReportError naming the line of the first bad one."""
    steps = 0
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ReportError(f"{path}:{n}: not a JSON object ({e.msg})") from None
            if not isinstance(row, dict):
                raise ReportError(f"{path}:{n}: not a JSON object")
            if "reward_mean" not in row:
                continue  # evaluation rows and others
            missing = [k for k in STEP_KEYS if k not in row]
            if missing:
                raise ReportError(f"{path}:{n}: step row lacks {', '.join(missing)}")
            for k in STEP_KEYS:
                v = row[k]
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise ReportError(f"{path}:{n}: {k} is {v!r}, not a finite number")
            steps += 1
    if steps == 0:
        raise ReportError(f"{path}: no training step rows (rows with reward_mean); nothing to plot")
    return steps


def run_report(run_dir: Path, edge: int = 5) -> Path:
    """Plots + summary.md under <metrics dir>/report; returns the summary path."""
    from torl.learner.report import write_report

    metrics_dir = find_metrics_dir(run_dir)
    check_metrics(metrics_dir / METRICS_FILE)
    return write_report(metrics_dir, edge)
