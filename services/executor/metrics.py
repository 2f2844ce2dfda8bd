"""Prometheus metrics of the executor; every metric the dashboards and alerts use is defined here.

`initialize` creates the labelled series whose label values are known at start (statuses,
isolations, recycle reasons, the configured callers) at 0, so a dashboard or alert sees a
series, not "no data", before the first event of each kind.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from torl.common.metrics import LATENCY_BUCKETS, zero_series

REQUESTS = Counter(
    "torl_executor_requests_total",
    "Runs answered, by status (ok/error/timeout/sandbox_error/rejected), caller and API (grpc/rest).",
    ["status", "caller", "api"],
)
RUN_DURATION = Histogram(
    "torl_executor_run_duration_seconds",
    "Wall time of a run inside its sandbox.",
    ["isolation"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "torl_executor_queue_wait_seconds", "Time a run waited for a sandbox slot.", buckets=LATENCY_BUCKETS
)
QUEUE_DEPTH = Gauge("torl_executor_queue_depth", "Runs waiting for a sandbox slot.")
POOL_SANDBOXES = Gauge("torl_executor_pool_sandboxes", "Sandboxes by state (starting/ready/draining).", ["state"])
POOL_IDLE_SLOTS = Gauge("torl_executor_pool_idle_slots", "Run slots free in ready sandboxes.")
RECYCLED = Counter(
    "torl_executor_sandbox_recycled_total",
    "Sandboxes replaced, by reason (uses, fault, handover, start_failed).",
    ["reason"],
)
SANDBOX_START = Histogram(
    "torl_executor_sandbox_start_seconds",
    "Time from launching a sandbox until its agent is ready (modules imported).",
    ["backend"],
    buckets=LATENCY_BUCKETS,
)
RATE_LIMITED = Counter(
    "torl_executor_rate_limited_total", "Requests refused by a per-key rate or concurrency limit.", ["caller", "limit"]
)

STATUSES = ("ok", "error", "timeout", "sandbox_error", "rejected")
ISOLATIONS = ("strict", "session")
RECYCLE_REASONS = ("uses", "fault", "handover", "start_failed")
POOL_STATES = ("starting", "ready", "draining")
LIMITS = ("rate", "concurrency")


def initialize(backend: str | None, callers: Iterable[tuple[str, str]]) -> None:
    """Zero series for what is known at start. `backend` is the sandbox backend (None on a
    gateway, which runs no sandbox); `callers` are (caller, api) pairs that may call."""
    for caller, api in callers:
        zero_series(REQUESTS, status=STATUSES, caller=[caller], api=[api])
    if backend is None:
        return
    zero_series(RUN_DURATION, isolation=ISOLATIONS)
    zero_series(SANDBOX_START, backend=[backend])
    zero_series(RECYCLED, reason=RECYCLE_REASONS)
    zero_series(POOL_SANDBOXES, state=POOL_STATES)


def initialize_caller(name: str) -> None:
    """Zero request and rate-limit series for an API key (at load and on every reload)."""
    zero_series(REQUESTS, status=STATUSES, caller=[name], api=("rest", "grpc"))
    zero_series(RATE_LIMITED, caller=[name], limit=LIMITS)
