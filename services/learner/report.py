"""Plots and a Markdown summary of a run, from its metrics.jsonl.

Writes reward.png, accuracy.png, tool_use.png, response_length.png (per step, with a moving
average) and summary.md with the before/after figures the README quotes: the first and last few
steps' means and the held-out evaluation before training and at the end.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PLOTS = (
    ("reward_mean", "mean reward", "reward.png"),
    ("accuracy", "accuracy (training samples)", "accuracy.png"),
    ("tool_use_rate", "tool-use rate", "tool_use.png"),
    ("response_tokens", "response length (tokens)", "response_length.png"),
)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _moving(values: Sequence[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def _mean(rows: Sequence[dict[str, Any]], key: str) -> float:
    vals = [float(r[key]) for r in rows if key in r]
    return statistics.fmean(vals) if vals else float("nan")


def summarize(rows: Sequence[dict[str, Any]], edge: int = 5) -> dict[str, Any]:
    """First/last `edge` steps' means, and the first/last held-out evaluation."""
    steps = [r for r in rows if "reward_mean" in r]
    evals = [r for r in rows if "eval_accuracy" in r]
    out: dict[str, Any] = {"steps": len(steps)}
    for key in ("reward_mean", "accuracy", "tool_use_rate", "response_tokens", "step_seconds"):
        out[f"{key}_first"] = _mean(steps[:edge], key)
        out[f"{key}_last"] = _mean(steps[-edge:], key)
    if evals:
        for key in ("eval_accuracy", "eval_reward_mean", "eval_tool_use_rate"):
            out[f"{key}_before"] = float(evals[0].get(key, float("nan")))
            out[f"{key}_after"] = float(evals[-1].get(key, float("nan")))
        out["eval_steps"] = [int(e["step"]) for e in evals]
    if steps:
        out["total_step_seconds"] = sum(float(r.get("step_seconds", 0.0)) for r in steps)
    return out


def write_report(run_dir: Path, edge: int = 5) -> Path:
    """Plots + summary.md under run_dir/report; returns the summary path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir / "metrics.jsonl")
    steps = [r for r in rows if "reward_mean" in r]
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    xs = [int(r["step"]) for r in steps]
    for key, label, name in PLOTS:
        ys = [float(r[key]) for r in steps]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(xs, ys, alpha=0.35, label="per step")
        ax.plot(xs, _moving(ys, 5), label="moving average (5)")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
    s = summarize(rows, edge)
    lines = [
        f"# Run summary: {run_dir.name}",
        "",
        f"Steps: {s['steps']}; total step time {s.get('total_step_seconds', 0.0):.0f} s.",
        "",
        f"| figure | first {edge} steps | last {edge} steps |",
        "|---|---|---|",
    ]
    for key, label in (("reward_mean", "mean reward"), ("accuracy", "accuracy"),
                       ("tool_use_rate", "tool-use rate"), ("response_tokens", "response tokens"),
                       ("step_seconds", "step seconds")):
        lines.append(f"| {label} | {s[f'{key}_first']:.3f} | {s[f'{key}_last']:.3f} |")
    if "eval_accuracy_before" in s:
        lines += [
            "",
            f"Held-out evaluation (steps {s['eval_steps'][0]} → {s['eval_steps'][-1]}):",
            "",
            "| figure | before | after |",
            "|---|---|---|",
            f"| accuracy | {s['eval_accuracy_before']:.3f} | {s['eval_accuracy_after']:.3f} |",
            f"| mean reward | {s['eval_reward_mean_before']:.3f} | {s['eval_reward_mean_after']:.3f} |",
            f"| tool-use rate | {s['eval_tool_use_rate_before']:.3f} | {s['eval_tool_use_rate_after']:.3f} |",
        ]
    lines += ["", *[f"![{label}]({name})" for _, label, name in PLOTS], ""]
    path = out / "summary.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(s, indent=2), encoding="utf-8")
    return path
