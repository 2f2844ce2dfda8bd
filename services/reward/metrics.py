"""Prometheus metrics of the reward service (one place, so dashboards and tests agree on names).

`initialize` creates every labelled series at 0 (the label values are fixed sets), so dashboards
and alerts see a series before the first event of each kind.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from torl.common.metrics import LATENCY_BUCKETS, zero_series

SCORES = Counter(
    "torl_reward_scores_total",
    "Scored responses by reason (correct, wrong, no_answer, unparsable, timeout) and mode.",
    ["reason", "mode"],
)
VERIFICATION_SECONDS = Histogram(
    "torl_reward_verification_seconds",
    "Seconds to score one item (extraction, screening and verification).",
    buckets=LATENCY_BUCKETS,
)
WORKER_RESTARTS = Counter(
    "torl_reward_worker_restarts_total",
    "Verifier worker processes replaced, by cause (timeout: killed after overrunning; crashed: died).",
    ["cause"],
)
SCREEN_REJECTIONS = Counter(
    "torl_reward_screen_rejections_total",
    "Items refused by input screening before verification, by what was screened (response, answer, reference).",
    ["what"],
)
PENALTIES = Counter(
    "torl_reward_penalties_total",
    "Responses whose reward got the execution penalty.",
)
BATCH_ITEMS = Histogram(
    "torl_reward_batch_items",
    "Items per ScoreBatch call.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
)

REASONS = ("correct", "wrong", "no_answer", "unparsable", "timeout")
MODES = ("training", "eval")
RESTART_CAUSES = ("timeout", "crashed")
SCREENED = ("response", "answer", "reference")


def initialize() -> None:
    zero_series(SCORES, reason=REASONS, mode=MODES)
    zero_series(WORKER_RESTARTS, cause=RESTART_CAUSES)
    zero_series(SCREEN_REJECTIONS, what=SCREENED)
