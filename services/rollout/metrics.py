"""Prometheus metrics of the rollout service (torl_rollout_*).

`initialize` creates every labelled series whose label values form a fixed set at 0, so the
dashboards and alerts see a series (not "no data") before the first event of each kind.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from torl.common.metrics import LATENCY_BUCKETS, zero_series

TOKENS = Counter(
    "torl_rollout_tokens_total", "Response tokens appended, by kind (model: sampled; observation: tool output).",
    ["kind"],
)
GENERATED_TOKENS_PER_SECOND = Gauge(
    "torl_rollout_generated_tokens_per_second", "Model tokens per second over the last finished group."
)
TOOL_CALLS = Counter("torl_rollout_tool_calls_total", "Tool calls by status.", ["status"])
TOOL_CALLS_PER_RESPONSE = Histogram(
    "torl_rollout_tool_calls_per_response", "Tool calls made by one response.", buckets=(0, 1, 2, 3, 4, 6, 8, 16, 32)
)
TOOL_WAIT_SECONDS = Histogram(
    "torl_rollout_tool_wait_seconds", "Time a sequence waited for its tool result.", buckets=LATENCY_BUCKETS
)
SEQUENCES_IN_FLIGHT = Gauge("torl_rollout_sequences_in_flight", "Trajectories being generated now.")
WEIGHT_VERSION_STEP = Gauge("torl_rollout_weight_version_step", "Step of the weight version now serving.")
WEIGHT_VERSION_INCARNATION = Gauge(
    "torl_rollout_weight_version_incarnation", "Learner incarnation of the weight version now serving."
)
WEIGHT_UPDATE_SECONDS = Histogram(
    "torl_rollout_weight_update_seconds",
    "Weight update phases: receive (stream + verify), pause (generation paused for the swap).",
    ["phase"],
    buckets=LATENCY_BUCKETS,
)
WEIGHT_UPDATES = Counter("torl_rollout_weight_updates_total", "Weight updates by outcome.", ["outcome"])
WEIGHT_UPDATE_BYTES = Counter("torl_rollout_weight_update_bytes_total", "Bytes of accepted weight updates.")
QUEUE_DEPTH = Gauge("torl_rollout_queue_depth", "Prompts accepted by this replica and not yet finished.")
GROUPS = Counter(
    "torl_rollout_groups_total",
    "Finished groups by outcome (stream, dead, lost_claim: the prompt was claimed by another replica meanwhile).",
    ["outcome"],
)
PROMPTS_RESUMED = Counter(
    "torl_rollout_prompts_resumed_total",
    "Stream prompts taken over after a crash, by source (own_backlog: this replica's own pending entries at start; "
    "claimed: another replica's entries idle past queue.claim_idle_seconds).",
    ["source"],
)
TRAJECTORIES_EXCLUDED = Counter(
    "torl_rollout_trajectories_excluded_total", "Trajectories kept out of the loss, by cause.", ["cause"]
)
PROMPTS_REJECTED = Counter("torl_rollout_prompts_rejected_total", "Prompts refused, by reason.", ["reason"])
PROMPTS_TRUNCATED = Counter("torl_rollout_prompts_truncated_total", "Prompts cut to the prompt budget.")
GROUP_SECONDS = Histogram(
    "torl_rollout_group_seconds", "Time to generate and score one group.", buckets=LATENCY_BUCKETS
)

TOKEN_KINDS = ("model", "observation")
WEIGHT_UPDATE_PHASES = ("receive", "pause")
WEIGHT_UPDATE_OUTCOMES = ("applied", "rejected", "stale", "failed")
GROUP_OUTCOMES = ("stream", "dead", "lost_claim")
RESUME_SOURCES = ("own_backlog", "claimed")
EXCLUSION_CAUSES = (
    "generation_failed", "generation_aborted", "executor_unreachable", "sandbox_error", "tool_rejected",
    "scoring_failed",
)
REJECTION_REASONS = ("empty", "bad_tokens", "too_long")


def initialize() -> None:
    from torl.v1 import common_pb2

    statuses = [name for name, value in common_pb2.ToolStatus.items() if value != 0]
    zero_series(TOKENS, kind=TOKEN_KINDS)
    zero_series(TOOL_CALLS, status=statuses)
    zero_series(WEIGHT_UPDATE_SECONDS, phase=WEIGHT_UPDATE_PHASES)
    zero_series(WEIGHT_UPDATES, outcome=WEIGHT_UPDATE_OUTCOMES)
    zero_series(GROUPS, outcome=GROUP_OUTCOMES)
    zero_series(PROMPTS_RESUMED, source=RESUME_SOURCES)
    zero_series(TRAJECTORIES_EXCLUDED, cause=EXCLUSION_CAUSES)
    zero_series(PROMPTS_REJECTED, reason=REJECTION_REASONS)
