"""The README's first command: the full local training demo (tiny model kit, pretraining, GRPO) must
finish and converge: mean reward and tool-use rate rise from the first to the last steps, and the
last 5 steps reach issue 16's target (sampled accuracy >= 0.85, mean reward >= +0.7)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, require_binary

pytestmark = [pytest.mark.slow, pytest.mark.gvisor, pytest.mark.timeout(2500)]


def test_demo_runs_end_to_end_and_learns(tmp_path: Path) -> None:
    require_binary("redis-server")
    t0 = time.monotonic()
    # The demo exactly as `make demo` runs it, but in a run dir of its own (runs/demo is the user's).
    proc = subprocess.Popen(["bash", "scripts/demo.sh", "--run-dir", str(tmp_path / "demo")], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        stdout, stderr = proc.communicate(timeout=2300)
    finally:
        if proc.poll() is None:  # timed out or the test was interrupted: stop torl train and its services
            proc.send_signal(signal.SIGTERM)  # `torl train` (exec'd by the script) stops every child
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    # Measured from a fresh clone on an idle 2-core machine: 753 s for kit, pretraining and RL (docs/demo.md);
    # the bound leaves room for a slower CI machine, it is not the 12-minute goal.
    assert seconds < 25 * 60
    report = tmp_path / "demo" / "learner" / "report"
    for name in ("reward.png", "accuracy.png", "tool_use.png", "response_length.png", "summary.md"):
        assert (report / name).is_file()
    s = json.loads((report / "summary.json").read_text())
    assert s["steps"] >= 60
    assert s["reward_mean_last"] > s["reward_mean_first"] + 0.3
    assert s["tool_use_rate_last"] > s["tool_use_rate_first"] + 0.2
    # Converged: measured 0.97 / +0.93 (fresh clone) and 0.96 / +0.93, 0.94 / +0.89 (docs/demo.md).
    assert s["accuracy_last"] >= 0.85, s
    assert s["reward_mean_last"] >= 0.7, s
