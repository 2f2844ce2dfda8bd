"""Build the Grafana dashboards of the torl chart (deploy/helm/torl/dashboards/*.json).

Dashboards are code so that every panel has the same shape and every query can be checked:
tests/deploy/test_dashboards.py regenerates them, fails if the committed JSON differs, and fails
on any query that names a metric the services do not export.

    .venv/bin/python deploy/grafana/build_dashboards.py    # rewrite the JSON files
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parents[1] / "helm" / "torl" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


@dataclass
class Panel:
    title: str
    queries: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    stack: bool = False
    width: int = 12
    extra_defaults: dict[str, Any] = field(default_factory=dict)


def quantiles(metric: str, by: str = "", qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> list[tuple[str, str]]:
    """p50/p90/p99 of a histogram, optionally split by a label."""
    group = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return [
        (f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[{RATE}])))", f"p{round(q * 100)}{suffix}")
        for q in qs
    ]


def _panel_json(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    custom: dict[str, Any] = {"lineWidth": 1, "fillOpacity": 10}
    if panel.stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(panel.queries)
        ],
        "fieldConfig": {
            "defaults": {"unit": panel.unit, **({"custom": custom} if panel.kind == "timeseries" else {}),
                         **panel.extra_defaults},
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
        if panel.kind == "timeseries"
        else {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
    }


def dashboard(uid: str, title: str, description: str, panels: list[Panel]) -> dict[str, Any]:
    laid: list[dict[str, Any]] = []
    x = y = 0
    for pid, panel in enumerate(panels, start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        laid.append(_panel_json(panel, pid, x, y))
        x += panel.width
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["torl"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "utc",
        "templating": {
            "list": [
                {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
                 "current": {}, "hide": 0}
            ]
        },
        "annotations": {"list": []},
        "panels": laid,
    }


def training() -> dict[str, Any]:
    return dashboard("torl-training", "torl / training", "The learner's view of the run: reward, accuracy, tool "
                     "use, response length, staleness, where step time goes, the Redis buffer.", [
        Panel("Mean reward (last step)", [("torl_learner_reward_mean", "mean reward")],
              extra_defaults={"min": -1.5, "max": 1}),
        Panel("Accuracy: training responses and held-out eval", [
            ("torl_learner_accuracy_ratio", "train (last step)"),
            ("torl_learner_eval_accuracy_ratio", "held-out eval")], unit="percentunit"),
        Panel("Reward reasons of trained responses", [
            (f"sum by (reason) (rate(torl_learner_rewards_total[{RATE}]))", "{{reason}}")], unit="ops", stack=True),
        Panel("Tool-use rate and code error rate", [
            ("torl_learner_tool_use_ratio", "responses calling the tool"),
            ("torl_learner_code_error_ratio", "tool calls not ok")], unit="percentunit"),
        Panel("Tool calls per response", [("torl_learner_tool_calls_per_response", "mean")]),
        Panel("Response length (tokens, mean)", [("torl_learner_response_tokens", "tokens")]),
        Panel("Optimizer step", [("max(torl_learner_step)", "step")]),
        Panel("Staleness of applied groups (weight versions)",
              quantiles("torl_learner_staleness_versions", qs=(0.5, 0.9, 1.0))),
        Panel("Step time breakdown by phase (p50)",
              quantiles("torl_learner_step_seconds", by="phase", qs=(0.5,)), unit="s", stack=True),
        Panel("Step time: weight push and checkpoint (p90)", [
            *[(e, "weight push " + lg) for e, lg in quantiles("torl_learner_weight_push_seconds", qs=(0.9,))],
            *[(e, "checkpoint " + lg) for e, lg in quantiles("torl_learner_checkpoint_seconds", qs=(0.9,))]],
              unit="s"),
        Panel("Trajectory groups by outcome", [
            (f"sum by (outcome) (rate(torl_learner_groups_total[{RATE}]))", "{{outcome}}")], unit="ops", stack=True),
        Panel("Clip fraction and importance ratio", [
            ("torl_learner_clip_fraction_ratio", "clip fraction"),
            ("torl_learner_importance_ratio", "importance ratio {{stat}}")]),
        Panel("Weight version lag behind the newest replica (steps)", [
            ("max(torl_rollout_weight_version_step) - on() group_right torl_rollout_weight_version_step",
             "{{instance}}")]),
        Panel("Weight push failures by replica", [
            (f"sum by (replica) (increase(torl_learner_weight_push_failures_total[{RATE}]))", "{{replica}}")]),
        Panel("Redis: stream lengths and groups pending ack", [
            ("max by (stream) (torl_learner_stream_length)", "{{stream}}"),
            ("max(torl_learner_pending_groups)", "pending ack")]),
        Panel("Redis memory", [("max(torl_learner_redis_memory_bytes)", "used_memory")], unit="bytes"),
        Panel("Redis outages ridden out by the learner", [
            (f"sum by (op) (increase(torl_learner_redis_errors_total[{RATE}]))", "retried {{op}}"),
            (f"sum(rate(torl_learner_redis_unavailable_seconds_total[{RATE}]))", "share of time waiting")],
              description="Commands retried after connection/timeout errors, and the share of time the "
              "learner waited for Redis (1 = waiting the whole interval)."),
    ])


def rollout() -> dict[str, Any]:
    return dashboard("torl-rollout", "torl / rollout", "vLLM rollout replicas: throughput, in-flight work, "
                     "weight versions and tool calls.", [
        Panel("Tokens/s by kind", [(f"sum by (kind) (rate(torl_rollout_tokens_total[{RATE}]))", "{{kind}}")],
              unit="short", stack=True),
        Panel("Generated tokens/s per replica (last group)", [
            ("torl_rollout_generated_tokens_per_second", "{{instance}}")]),
        Panel("Sequences in flight", [("sum by (instance) (torl_rollout_sequences_in_flight)", "{{instance}}")]),
        Panel("Prompts queued", [("sum by (instance) (torl_rollout_queue_depth)", "{{instance}}")]),
        Panel("Weight version (incarnation, step) per replica", [
            ("torl_rollout_weight_version_step", "step {{instance}}"),
            ("torl_rollout_weight_version_incarnation", "incarnation {{instance}}")]),
        Panel("Weight version lag (steps behind the newest replica)", [
            ("max(torl_rollout_weight_version_step) - on() group_right torl_rollout_weight_version_step",
             "{{instance}}")]),
        Panel("Weight updates by outcome", [
            (f"sum by (outcome) (increase(torl_rollout_weight_updates_total[{RATE}]))", "{{outcome}}")], stack=True),
        Panel("Weight update bytes/s", [(f"sum(rate(torl_rollout_weight_update_bytes_total[{RATE}]))", "bytes/s")],
              unit="Bps"),
        Panel("Weight update time by phase (p50)",
              quantiles("torl_rollout_weight_update_seconds", by="phase", qs=(0.5,)), unit="s"),
        Panel("Groups finished by outcome", [
            (f"sum by (outcome) (rate(torl_rollout_groups_total[{RATE}]))", "{{outcome}}")], unit="ops", stack=True),
        Panel("Tool calls by status", [
            (f"sum by (status) (rate(torl_rollout_tool_calls_total[{RATE}]))", "{{status}}")], unit="ops", stack=True),
        Panel("Tool wait", quantiles("torl_rollout_tool_wait_seconds"), unit="s"),
        Panel("Prompts rejected / truncated", [
            (f"sum by (reason) (rate(torl_rollout_prompts_rejected_total[{RATE}]))", "rejected {{reason}}"),
            (f"sum(rate(torl_rollout_prompts_truncated_total[{RATE}]))", "truncated")], unit="ops"),
        Panel("Group time (generate + score)", quantiles("torl_rollout_group_seconds"), unit="s"),
        Panel("Tool-use rate (responses with at least one call)", [
            (f'1 - sum(rate(torl_rollout_tool_calls_per_response_bucket{{le=~"0|0.0"}}[{RATE}])) '
             f"/ sum(rate(torl_rollout_tool_calls_per_response_count[{RATE}]))", "tool-use rate")],
              unit="percentunit"),
        Panel("Trajectories excluded from the loss (infrastructure)", [
            (f"sum by (cause) (rate(torl_rollout_trajectories_excluded_total[{RATE}]))", "{{cause}}")],
              unit="ops", stack=True),
    ])


def executor() -> dict[str, Any]:
    total = f"sum(rate(torl_executor_requests_total[{RATE}]))"
    return dashboard("torl-executor", "torl / executor", "Sandboxed code execution: latency, status mix, the "
                     "sandbox pool and per-caller rate limits.", [
        Panel("Runs/s by status", [(f"sum by (status) (rate(torl_executor_requests_total[{RATE}]))", "{{status}}")],
              unit="ops", stack=True),
        Panel("Status mix", [
            (f"sum by (status) (rate(torl_executor_requests_total[{RATE}])) / ignoring(status) group_left {total}",
             "{{status}}")], unit="percentunit", stack=True),
        Panel("Run duration by isolation", quantiles("torl_executor_run_duration_seconds", by="isolation"), unit="s"),
        Panel("Queue wait for a sandbox slot", quantiles("torl_executor_queue_wait_seconds"), unit="s"),
        Panel("Queue depth", [("sum by (instance) (torl_executor_queue_depth)", "{{instance}}")]),
        Panel("Sandboxes by state", [("sum by (state) (torl_executor_pool_sandboxes)", "{{state}}")], stack=True),
        Panel("Idle run slots", [("sum by (instance) (torl_executor_pool_idle_slots)", "{{instance}}")]),
        Panel("Sandboxes recycled by reason", [
            (f"sum by (reason) (increase(torl_executor_sandbox_recycled_total[{RATE}]))", "{{reason}}")], stack=True),
        Panel("Sandbox start time by backend", quantiles("torl_executor_sandbox_start_seconds", by="backend",
                                                         qs=(0.5, 0.9)), unit="s"),
        Panel("Runs/s by caller and API", [
            (f"sum by (caller, api) (rate(torl_executor_requests_total[{RATE}]))", "{{caller}} {{api}}")], unit="ops"),
        Panel("Rate-limited requests by caller and limit", [
            (f"sum by (caller, limit) (rate(torl_executor_rate_limited_total[{RATE}]))", "{{caller}} {{limit}}")],
              unit="ops", width=24),
    ])


def reward() -> dict[str, Any]:
    return dashboard("torl-reward", "torl / reward", "Answer extraction and verification: reasons, latency, "
                     "worker health.", [
        Panel("Scores/s by reason", [(f"sum by (reason) (rate(torl_reward_scores_total[{RATE}]))", "{{reason}}")],
              unit="ops", stack=True),
        Panel("Scores/s by mode", [(f"sum by (mode) (rate(torl_reward_scores_total[{RATE}]))", "{{mode}}")],
              unit="ops", stack=True),
        Panel("Verification latency", quantiles("torl_reward_verification_seconds"), unit="s"),
        Panel("Items per ScoreBatch", quantiles("torl_reward_batch_items", qs=(0.5, 0.9))),
        Panel("Worker restarts by cause", [
            (f"sum by (cause) (increase(torl_reward_worker_restarts_total[{RATE}]))", "{{cause}}")], stack=True),
        Panel("Screen rejections by input", [
            (f"sum by (what) (rate(torl_reward_screen_rejections_total[{RATE}]))", "{{what}}")], unit="ops"),
        Panel("Execution penalties/s", [(f"sum(rate(torl_reward_penalties_total[{RATE}]))", "penalized")],
              unit="ops", width=24),
    ])


DASHBOARDS = {"training": training, "rollout": rollout, "executor": executor, "reward": reward}


def render_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{name}.json": json.dumps(build(), indent=2, sort_keys=True) + "\n" for name, build in DASHBOARDS.items()}


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (OUT_DIR / name).write_text(text, encoding="utf-8")
        print(f"wrote {OUT_DIR / name}")


if __name__ == "__main__":
    main()
