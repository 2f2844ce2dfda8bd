"""Sustained load on the executor from a second process (benchmarks/load_executor.py, short run):
every request answered and right (lost = hung = wrong = 0), the same number of sandboxes before
and after, no growth of the service's open files, memory flat, and the service still correct after.
The full-length figures are in docs/reliability.md (the same script, longer)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, require

pytestmark = [pytest.mark.timeout(400), pytest.mark.gvisor]


def test_sustained_load_from_a_second_process_loses_nothing_and_leaks_nothing(tmp_path: Path) -> None:
    require(shutil.which("runsc") is not None, "runsc")
    out = tmp_path / "load.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "load_executor.py"), "--seconds", "20", "--clients", "8",
         "--max-requests", "5000", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=360, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["requests"] >= 50, r  # enough load to mean something, even on a busy machine
    assert (r["lost"], r["hung"], r["wrong"]) == (0, 0, 0), r["failure_samples"]
    assert r["right"] == r["requests"]
    assert r["sandboxes_before"] == r["sandboxes_after"] >= 1
    assert r["service_after"]["open_fds"] - r["service_before"]["open_fds"] <= 16, (r["service_before"],
                                                                                    r["service_after"])
    assert r["rss_growth_ratio"] < 1.5, r
    assert r["held_ratio"] > 0.2, r["window_rps"]
