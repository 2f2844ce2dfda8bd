"""ToRL's reward rules: +1 correct, -1 otherwise, and the optional execution penalty.

The penalty (off by default; the paper saw no gain) is the reference's rule as
/work/shared/DESIGN.md states it: subtract `amount` (0.5) whenever the last tool round had no
successful execution, including responses with no code at all. It applies to correct and wrong
answers alike, so the rewards with the penalty on are +1, +0.5, -1 and -1.5. It shapes the training
signal only: eval-mode scores (see grader.py) never carry it.

How the rule reads ScoreRequest's `tool_statuses` and `tool_rounds` (the contract with rollout):
- `tool_rounds` is the number of tool rounds the response used: generation rounds that stopped
  on "```output" (each counts against the budget C whether or not code ran). 0 = no tool round.
- `tool_statuses` holds one status per tool round, in order; a round in which nothing ran (no
  complete ```python block) is TOOL_STATUS_UNSPECIFIED ("none" in the library).
- The last round is round number max(tool_rounds, len(tool_statuses)). It counts as a
  successful execution only when its status is OK. So the penalty applies when
  (a) there were no tool rounds (no code at all), or
  (b) the last round's status is anything but OK (error, timeout, sandbox_error, rejected, none), or
  (c) `tool_statuses` is shorter than `tool_rounds`: the missing trailing rounds ran nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from torl.reward.config import PenaltySettings


class Reason(StrEnum):
    """Why a response got its reward (mirrors torl.v1.RewardReason)."""

    CORRECT = "correct"
    WRONG = "wrong"
    NO_ANSWER = "no_answer"
    UNPARSABLE = "unparsable"
    TIMEOUT = "timeout"


class ToolStatus(StrEnum):
    """Outcome of one tool round (mirrors torl.v1.ToolStatus; NONE = nothing ran)."""

    NONE = "none"
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    SANDBOX_ERROR = "sandbox_error"
    REJECTED = "rejected"

    @classmethod
    def _missing_(cls, value: object) -> ToolStatus | None:
        # "unspecified" is the proto's name for a round where nothing ran.
        return cls.NONE if isinstance(value, str) and value.lower() == "unspecified" else None


def last_round_failed(tool_statuses: Sequence[ToolStatus], tool_rounds: int) -> bool:
    """True when the last tool round had no successful execution (see the module docstring)."""
    rounds = max(tool_rounds, len(tool_statuses))
    if rounds == 0:
        return True
    if len(tool_statuses) < rounds:
        return True
    return tool_statuses[rounds - 1] is not ToolStatus.OK


def reward_for(
    correct: bool,
    tool_statuses: Sequence[ToolStatus],
    tool_rounds: int,
    penalty: PenaltySettings,
) -> tuple[float, bool]:
    """(reward, penalty_applied) for one response."""
    reward = 1.0 if correct else -1.0
    if penalty.enabled and last_round_failed(tool_statuses, tool_rounds):
        return reward - penalty.amount, True
    return reward, False
