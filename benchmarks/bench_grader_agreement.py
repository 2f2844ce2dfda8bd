"""Grading agreement: torl's reward library against the Qwen2.5-Math evaluation grader's `math_equal`.

Both grade the labelled pairs of tests/data/grading_pairs.jsonl (full ToRL-style responses against
reference answers, each with a human label `expected`):

- torl: torl.reward.grader.Grader (the library behind the reward service), each pair in its
  labelled mode (training = last \\boxed{} only; eval = with fallbacks), 2 verifier workers;
- Qwen: benchmarks/peers/qwen_grade.py in benchmarks/.venv-qwen-grader: Qwen's own
  `extract_answer(text, "math")` + `strip_string` + `math_equal`, 3 s per pair as in its
  evaluate.py (source fetched by benchmarks/peers/setup_qwen_grader.sh, never committed).

Prints and writes (benchmarks/results/grader_agreement.json): accuracy of each against the labels,
the agreement between the two, the disagreements by family, and both grading rates.

    bash benchmarks/peers/setup_qwen_grader.sh   # once
    nice .venv/bin/python benchmarks/bench_grader_agreement.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT / "tests" / "data" / "grading_pairs.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "grader_agreement.json"
QWEN_PY = ROOT / "benchmarks" / ".venv-qwen-grader" / "bin" / "python"
QWEN_SRC = ROOT / "benchmarks" / "peers" / "src" / "qwen25-math-eval"


def grade_torl(rows: list[dict[str, Any]]) -> tuple[list[bool], float]:
    from torl.reward.config import GraderSettings
    from torl.reward.grader import Grader, Mode, ScoreItem

    with Grader(GraderSettings(workers=2)) as g:
        t0 = time.perf_counter()
        res = g.score_batch([ScoreItem(r["prediction"], r["reference"], Mode(r["mode"])) for r in rows])
        return [x.correct for x in res], time.perf_counter() - t0


def grade_qwen(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
    if not QWEN_PY.is_file() or not (QWEN_SRC / "grader.py").is_file():
        raise SystemExit("Qwen grader missing: run `bash benchmarks/peers/setup_qwen_grader.sh` first")
    payload = "".join(json.dumps({"prediction": r["prediction"], "reference": r["reference"]}) + "\n" for r in rows)
    t0 = time.perf_counter()
    proc = subprocess.run([str(QWEN_PY), str(ROOT / "benchmarks" / "peers" / "qwen_grade.py")], input=payload,
                          stdout=subprocess.PIPE, text=True, check=True)
    seconds = time.perf_counter() - t0
    out = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if len(out) != len(rows):
        raise RuntimeError(f"Qwen grader returned {len(out)} verdicts for {len(rows)} pairs")
    return out, seconds


def main() -> int:
    rows = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines() if line.strip()]
    torl, torl_s = grade_torl(rows)
    qwen_rows, qwen_s = grade_qwen(rows)
    qwen = [q["qwen_correct"] for q in qwen_rows]
    labels = [bool(r["expected"]) for r in rows]
    n = len(rows)
    disagree = [i for i in range(n) if torl[i] != qwen[i]]
    by_family: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    for i in disagree:
        r = rows[i]
        side = "torl right" if torl[i] == labels[i] else "qwen right"
        by_family[f"{r['family']} ({side})"] += 1
        if len(examples) < 40:
            examples.append({"family": r["family"], "reference": r["reference"],
                             "qwen_answer": qwen_rows[i]["qwen_answer"], "label": labels[i],
                             "torl": torl[i], "qwen": qwen[i], "mode": r["mode"]})
    result = {
        "pairs": n,
        "commit": (QWEN_SRC / "COMMIT").read_text().strip(),
        "torl_accuracy_vs_labels": sum(a == b for a, b in zip(torl, labels, strict=True)) / n,
        "qwen_accuracy_vs_labels": sum(a == b for a, b in zip(qwen, labels, strict=True)) / n,
        "agreement": 1 - len(disagree) / n,
        "disagreements": len(disagree),
        "torl_right_in_disagreements": sum(1 for i in disagree if torl[i] == labels[i]),
        "qwen_right_in_disagreements": sum(1 for i in disagree if qwen[i] == labels[i]),
        "qwen_timeouts": sum(1 for q in qwen_rows if q["qwen_timeout"]),
        "by_family": dict(by_family.most_common()),
        "examples": examples,
        "torl_pairs_per_second": n / torl_s,
        "qwen_pairs_per_second": n / qwen_s,
    }
    print(f"{n} labelled pairs (Qwen2.5-Math grader at {result['commit'][:12]})")
    print(f"accuracy vs labels: torl {result['torl_accuracy_vs_labels']:.3f}, "
          f"Qwen math_equal {result['qwen_accuracy_vs_labels']:.3f}")
    print(f"agreement torl vs Qwen: {result['agreement']:.3f} ({len(disagree)} disagreements: torl right in "
          f"{result['torl_right_in_disagreements']}, Qwen right in {result['qwen_right_in_disagreements']})")
    for fam, c in by_family.most_common():
        print(f"  {c:4d}  {fam}")
    print(f"rate: torl {result['torl_pairs_per_second']:.0f} pairs/s (2 workers), "
          f"Qwen {result['qwen_pairs_per_second']:.0f} pairs/s (one process, incl. start-up)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
