"""CLI start-up: `torl --help` and `torl config show executor` must answer in < 0.5 s.

Baseline measured in the same run: a bare `python -c pass` (interpreter start-up), so the ratio
shows what torl itself adds. Writes benchmarks/results/cli.json.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORL = [sys.executable, "-m", "torl.cli.main"]
CASES = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "torl --help": [*TORL, "--help"],
    "torl config show executor": [*TORL, "config", "show", "executor"],
    "torl config show rollout": [*TORL, "config", "show", "rollout"],
}


def timed(cmd: list[str], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        out.append(time.perf_counter() - t0)
    return out


def main(repeats: int = 15) -> int:
    results = {}
    for name, cmd in CASES.items():
        timed(cmd, 2)  # warm the page cache
        samples = timed(cmd, repeats)
        results[name] = {"p50_s": statistics.median(samples), "max_s": max(samples)}
    base = results["python -c pass (baseline)"]["p50_s"]
    ok = True
    print(f"{'command':<30} {'p50 s':>7} {'max s':>7} {'x baseline':>10}")
    for name, r in results.items():
        r["ratio_to_baseline"] = r["p50_s"] / base
        print(f"{name:<30} {r['p50_s']:7.3f} {r['max_s']:7.3f} {r['ratio_to_baseline']:10.1f}")
        if name != "python -c pass (baseline)" and r["p50_s"] >= 0.5:
            ok = False
    out = ROOT / "benchmarks" / "results" / "cli.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"repeats": repeats, "results": results, "target_p50_s": 0.5, "ok": ok}, indent=2))
    print("target p50 < 0.5 s:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
