"""The metrics sink: one row per step (and per evaluation) to metrics.jsonl, Prometheus, the trackers.

`trajectory_stats` reduces a step's groups to the reward, accuracy, tool-use and length figures,
`step_row` makes the step's row of them and of the step's timings and counters;
`MetricsSink.record` writes a row to metrics.jsonl (what `torl report` and the progress bar read),
sets the learner's Prometheus series, writes a few sample responses to samples.jsonl and, when
configured, forwards the scalars to TensorBoard and Weights & Biases.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torl.common.logging import get_logger
from torl.common.tool_status import code_error_rate
from torl.learner import metrics as m
from torl.learner.config import TrackingSettings
from torl.v1 import common_pb2, trajectory_pb2

if TYPE_CHECKING:
    from torl.learner.engine import StepResult
    from torl.learner.source import StepData

log = get_logger("torl.learner.sink")


def trajectory_stats(groups: list[trajectory_pb2.TrajectoryGroup]) -> dict[str, Any]:
    """Reward, accuracy, tool use and length figures over the usable responses of `groups`."""
    trajs = [t for g in groups for t in g.trajectories if not t.excluded]
    excluded = sum(1 for g in groups for t in g.trajectories if t.excluded)
    calls = [c for t in trajs for c in t.tool_calls]
    n = max(len(trajs), 1)
    reasons = Counter(common_pb2.RewardReason.Name(t.reward_reason).removeprefix("REWARD_REASON_").lower()
                      for t in trajs)
    return {
        "responses": len(trajs),
        "excluded": excluded,
        "reward_mean": sum(t.reward for t in trajs) / n,
        "accuracy": sum(1 for t in trajs if t.correct) / n,
        "tool_use_rate": sum(1 for t in trajs if len(t.tool_calls) > 0) / n,
        "tool_calls_per_response": len(calls) / n,
        "code_error_rate": code_error_rate(c.status for c in calls),
        "response_tokens": sum(len(t.token_ids) for t in trajs) / n,
        "reward_by_reason": dict(reasons),
    }


def step_row(step: int, version: common_pb2.WeightVersion, data: StepData, result: StepResult, trained_tokens: int,
             counters: dict[str, int], seconds: dict[str, float], *, push_failed: int, repushes: int,
             ranks: int) -> dict[str, Any]:
    """The metrics.jsonl row of one step (`seconds`: wait, train, weight_push, checkpoint, step)."""
    return {
        "step": step,
        "version": f"{version.incarnation}:{version.step}",
        "time": time.time(),
        **trajectory_stats(data.groups),
        "groups": len(data.groups),
        "sequences_trained": result.sequences,
        "trained_tokens": trained_tokens,
        "loss": result.loss,
        "grad_norm": result.grad_norm,
        **result.stats.summary(),
        "learner_ranks": ranks,
        "staleness_mean": statistics.fmean(data.staleness) if data.staleness else 0.0,
        "staleness_max": max(data.staleness, default=0),
        **{f"groups_{k}_total": v for k, v in counters.items()},
        "wait_seconds": seconds["wait"],
        "forward_backward_seconds": result.forward_backward_seconds,
        "optimizer_seconds": result.optimizer_seconds,
        "train_seconds": seconds["train"],
        "weight_push_seconds": seconds["weight_push"],
        "weight_push_failed_replicas": push_failed,
        "weight_repushes_total": repushes,
        "checkpoint_seconds": seconds["checkpoint"],
        "step_seconds": seconds["step"],
        "generation_seconds_mean": statistics.fmean([g.generation_seconds for g in data.groups]),
    }


class MetricsSink:
    """Where step and evaluation rows go."""

    def __init__(self, out: Path, tracking: TrackingSettings, samples_per_step: int, run_id: str) -> None:
        self.out = out
        self.samples_per_step = samples_per_step
        self._tb: Any = None
        self._wandb: Any = None
        if tracking.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out / "tb"))
        if tracking.wandb_project:
            import wandb  # optional; not a dependency of the learner extra

            self._wandb = wandb.init(project=tracking.wandb_project, name=run_id)

    def record(self, row: dict[str, Any], groups: list[trajectory_pb2.TrajectoryGroup]) -> None:
        with (self.out / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if "reward_mean" in row:
            self._set_gauges(row)
        if groups and self.samples_per_step:
            with (self.out / "samples.jsonl").open("a", encoding="utf-8") as f:
                for g in groups[: self.samples_per_step]:
                    t = g.trajectories[0]
                    f.write(json.dumps({"step": row["step"], "group_id": g.group_id, "problem": g.prompt.problem,
                                        "answer": g.prompt.answer, "reward": t.reward, "text": t.text,
                                        "tool_calls": len(t.tool_calls)}) + "\n")
        scalars = {k: v for k, v in row.items() if isinstance(v, int | float) and k not in ("step", "time")}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, row["step"])
        if self._wandb is not None:
            self._wandb.log(scalars, step=row["step"])

    @staticmethod
    def _set_gauges(row: dict[str, Any]) -> None:
        m.STEP.set(row["step"])
        m.REWARD_MEAN.set(row["reward_mean"])
        m.ACCURACY.set(row["accuracy"])
        m.TOOL_USE.set(row["tool_use_rate"])
        m.TOOL_CALLS_PER_RESPONSE.set(row["tool_calls_per_response"])
        m.CODE_ERROR.set(row["code_error_rate"])
        m.RESPONSE_TOKENS.set(row["response_tokens"])
        m.CLIP_FRACTION.set(row["clip_fraction"])
        m.IMPORTANCE_RATIO.labels(stat="mean").set(row["importance_ratio_mean"])
        m.IMPORTANCE_RATIO.labels(stat="max").set(row["importance_ratio_max"])
        for reason, n in row["reward_by_reason"].items():
            m.REWARDS_BY_REASON.labels(reason=reason).inc(n)
        m.GROUPS.labels(outcome="applied").inc(row["groups"])
        for phase in ("wait", "forward_backward", "optimizer", "weight_push", "checkpoint", "step"):
            m.STEP_SECONDS.labels(phase=phase).observe(row[f"{phase}_seconds"])
        log.info("step", step=row["step"], reward=round(row["reward_mean"], 3),
                 tool_use=round(row["tool_use_rate"], 3), seconds=round(row["step_seconds"], 2))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
