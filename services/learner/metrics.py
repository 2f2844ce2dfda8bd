"""Prometheus metrics of the learner (torl_learner_<what>_<unit>). The JSONL log carries the same
figures per step; these are what dashboards and alerts read.

`initialize` creates the labelled series whose label values are known at start at 0 (fixed sets,
and the replicas the learner pushes to, also as they are discovered), so dashboards and alerts
see a series before the first event of each kind.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from torl.common.metrics import LATENCY_BUCKETS, zero_series

STEP = Gauge("torl_learner_step", "Last finished optimizer step.")
STEP_SECONDS = Histogram(
    "torl_learner_step_seconds", "Time of one step by phase.", ["phase"], buckets=LATENCY_BUCKETS
)
GROUPS = Counter(
    "torl_learner_groups_total",
    "Trajectory groups by outcome (applied, dropped_stale, dead, duplicate, unusable, reissued).",
    ["outcome"],
)
REWARD_MEAN = Gauge("torl_learner_reward_mean", "Mean reward of the last step's responses.")
REWARDS_BY_REASON = Counter("torl_learner_rewards_total", "Responses trained on, by reward reason.", ["reason"])
ACCURACY = Gauge("torl_learner_accuracy_ratio", "Share of correct responses in the last step.")
TOOL_CALLS_PER_RESPONSE = Gauge("torl_learner_tool_calls_per_response", "Mean tool calls per response, last step.")
TOOL_USE = Gauge("torl_learner_tool_use_ratio", "Share of responses that called the tool, last step.")
CODE_ERROR = Gauge("torl_learner_code_error_ratio", "Share of tool calls that failed (error or timeout), last step.")
RESPONSE_TOKENS = Gauge("torl_learner_response_tokens", "Mean response length in tokens, last step.")
CLIP_FRACTION = Gauge("torl_learner_clip_fraction_ratio", "Share of trained tokens whose ratio was clipped.")
IMPORTANCE_RATIO = Gauge(
    "torl_learner_importance_ratio", "Trainer-vs-rollout importance ratio over trained tokens.", ["stat"]
)
STALENESS = Histogram(
    "torl_learner_staleness_versions", "Staleness of applied groups in weight versions.",
    buckets=(0, 1, 2, 3, 4, 8, 16, 32),
)
WEIGHT_PUSH_SECONDS = Histogram(
    "torl_learner_weight_push_seconds", "Time to push weights to every replica.", buckets=LATENCY_BUCKETS
)
WEIGHT_PUSH_FAILURES = Counter(
    "torl_learner_weight_push_failures_total", "Pushes to a replica that failed after retries.", ["replica"]
)
WEIGHT_REPUSHES = Counter(
    "torl_learner_weight_repushes_total",
    "Current weights pushed again to a replica found serving older ones (restarted or new).", ["replica"],
)
WEIGHT_PUSH_BYTES = Counter("torl_learner_weight_push_bytes_total", "Bytes of weights pushed (all replicas).")
REDIS_MEMORY = Gauge("torl_learner_redis_memory_bytes", "Redis used_memory.")
REDIS_ERRORS = Counter(
    "torl_learner_redis_errors_total", "Redis commands that failed and were retried (connection, timeout, lost group).",
    ["op"],
)
REDIS_UNAVAILABLE_SECONDS = Counter(
    "torl_learner_redis_unavailable_seconds_total", "Time the learner waited for Redis to answer again."
)
STREAM_LENGTH = Gauge("torl_learner_stream_length", "Entries in a run stream.", ["stream"])
PENDING = Gauge("torl_learner_pending_groups", "Trajectory entries read but not yet acked (waiting for a checkpoint).")
EVAL_ACCURACY = Gauge("torl_learner_eval_accuracy_ratio", "Held-out accuracy at the last evaluation.")
CHECKPOINT_SECONDS = Histogram(
    "torl_learner_checkpoint_seconds", "Time to write a durable checkpoint.", buckets=LATENCY_BUCKETS
)

GROUP_OUTCOMES = ("applied", "dropped_stale", "dead", "duplicate", "unusable", "reissued")
STEP_PHASES = ("wait", "forward_backward", "optimizer", "weight_push", "checkpoint", "step")
IMPORTANCE_STATS = ("mean", "max")
STREAMS = ("prompts", "trajectories", "dead")
REDIS_OPS = ("ensure_streams", "publish_prompts", "set_version", "get_version", "write_state", "read_state",
             "next_incarnation", "read", "ack", "autoclaim", "dead_letter", "pending", "dead_entries", "memory")


def initialize() -> None:
    from torl.v1 import common_pb2

    reasons = [name.removeprefix("REWARD_REASON_").lower() for name, value in common_pb2.RewardReason.items() if value]
    zero_series(GROUPS, outcome=GROUP_OUTCOMES)
    zero_series(REWARDS_BY_REASON, reason=reasons)
    zero_series(STEP_SECONDS, phase=STEP_PHASES)
    zero_series(IMPORTANCE_RATIO, stat=IMPORTANCE_STATS)
    zero_series(STREAM_LENGTH, stream=STREAMS)
    zero_series(REDIS_ERRORS, op=REDIS_OPS)


def initialize_replicas(targets: Iterable[str]) -> None:
    found = list(targets)
    zero_series(WEIGHT_PUSH_FAILURES, replica=found)
    zero_series(WEIGHT_REPUSHES, replica=found)
