"""Pretraining benchmark: CPU cost of the demo's pretraining and how right the model's tool responses are.

Pretrains the demo's tiny model with the default PretrainSpec (from the kit's tokenizer/config, fresh
weights, into a fresh directory so no cache is reused), reports CPU seconds (time.process_time) per
step and in total, wall seconds and the load average, then probes the result on held-out problems
(the learner's arith eval set, default 128): one response per problem through the ToRL loop at
C = 1 (torl.learner.pretrain.probe), greedy and at temperature 1, split by outcome: right, no tool,
wrong code copy (problem -> program), wrong answer copy (output -> \\boxed{}).
`--model DIR` skips training and probes DIR (e.g. a demo checkpoint). Writes
benchmarks/results/pretrain.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_pretrain.py
    .venv/bin/python benchmarks/bench_pretrain.py --model runs/demo/learner/hf/step_60
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from torl.learner.datasets import ArithDataset
from torl.learner.pretrain import STAMP, PretrainSpec, build_base, pretrain, probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="Probe this model directory instead of pretraining one.")
    ap.add_argument("--problems", type=int, default=128, help="Held-out problems (learner seed 0's eval set).")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/pretrain.json"))
    args = ap.parse_args()
    result: dict[str, object] = {"load_average_start": os.getloadavg()[0]}
    if args.model is None:
        base = build_base()
        with tempfile.TemporaryDirectory() as tmp:
            model = pretrain(base, Path(tmp) / "model", PretrainSpec(), progress=print)
            result["pretrain"] = json.loads((model / STAMP).read_text())
            result["probe"] = run_probe(model, args.problems)
    else:
        result["model"] = str(args.model)
        result["probe"] = run_probe(args.model, args.problems)
    result["load_average_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


def run_probe(model: Path, n: int) -> list[dict[str, object]]:
    held = [(p.problem, p.answer) for p in ArithDataset(0, 0, n).eval()]
    rows: list[dict[str, object]] = []
    for temperature in (0.0, 1.0):
        cpu = time.process_time()
        r = probe(model, held, temperature)
        print(f"probe {r.line()} ({time.process_time() - cpu:.1f} CPU s)")
        rows.append({"temperature": temperature, "samples": r.samples, "accuracy": r.accuracy,
                     "tool_use_rate": r.tool_use_rate, "tool_accuracy": r.tool_accuracy, **r.counts})
    return rows


if __name__ == "__main__":
    main()
