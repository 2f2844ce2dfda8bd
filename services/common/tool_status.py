"""What a tool call's status means: the one home for reading torl.v1.ToolStatus.

The executor sets the status; the rollout loop, the reward rules, training metrics and evaluation
all read it through these definitions, so "code error rate" and "infrastructure failure" mean the
same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable

from torl.v1 import common_pb2

# The program ran and failed by the model's doing: it raised, exited non-zero or ran out of time.
MODEL_FAILED = frozenset({common_pb2.TOOL_STATUS_ERROR, common_pb2.TOOL_STATUS_TIMEOUT})
# The program did not run for a reason the model did not cause: never trained on (trajectory excluded).
INFRASTRUCTURE = frozenset({common_pb2.TOOL_STATUS_SANDBOX_ERROR, common_pb2.TOOL_STATUS_REJECTED})


def status_name(code: int) -> str:
    """"ok", "error", "timeout", "sandbox_error", "rejected" or "unspecified" (also for an unknown, newer value)."""
    if code not in common_pb2.ToolStatus.values():
        return "unspecified"
    return common_pb2.ToolStatus.Name(code).removeprefix("TOOL_STATUS_").lower()


def code_error_rate(statuses: Iterable[int]) -> float:
    """Share of tool calls whose program failed by the model's doing (error or timeout) among all
    calls; 0 with no calls. Infrastructure failures count as calls, not as code errors."""
    codes = list(statuses)
    return sum(1 for s in codes if s in MODEL_FAILED) / len(codes) if codes else 0.0
