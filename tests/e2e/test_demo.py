"""The README's first command: the full local training demo (tiny model kit, pretraining, GRPO) must
finish and converge: mean reward and tool-use rate rise from the first to the last steps, and the
last 5 steps reach sampled accuracy >= 0.8 and mean reward >= +0.6 (issue 16's target, 0.85 / +0.7, was
met on both machines measured in docs/demo.md; it is reported there, not asserted: results vary by machine)."""

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
    # Measured on idle 2-core VMs: 753 s for kit, pretraining and RL on one, ~1,150 s (before the last
    # pretraining stages were added) on a slower one (docs/demo.md); the bound is not the 12-minute goal.
    assert seconds < 30 * 60
    report = tmp_path / "demo" / "learner" / "report"
    for name in ("reward.png", "accuracy.png", "tool_use.png", "response_length.png", "summary.md"):
        assert (report / name).is_file()
    s = json.loads((report / "summary.json").read_text())
    assert s["steps"] >= 60
    assert s["reward_mean_last"] > s["reward_mean_first"] + 0.3
    assert s["tool_use_rate_last"] > s["tool_use_rate_first"] + 0.2
    # Converged. Issue 16's target is 0.85 / +0.7; measured 0.97 / +0.93 and 0.92 / +0.83 on two VMs
    # (docs/demo.md). The pretrained model differs from machine to machine (2-thread float order), and
    # on the slower VM the recipe without its last two stages ended at 0.81 / +0.61, so the bar here is
    # set under the target with room for that spread; the target itself is reported, not asserted.
    assert s["accuracy_last"] >= 0.8, s
    assert s["reward_mean_last"] >= 0.6, s
