"""ToRL's reward rules: +1 correct, -1 otherwise, and the optional execution penalty.

The penalty (off by default; the paper saw no gain) is the reference's rule (GAIR-NLP/ToRL
verl/workers/reward_manager/naive.py:72-73 with execution_pass from
verl/workers/rollout/vllm_rollout/vllm_rollout_spmd.py:229, :309-314, :335-350): subtract `amount`
(0.5) when the last tool round had no successful execution, including responses with no code at
all. A run is successful, as the reference counts it, when its exit code is 0 **or** its stdout is
non-empty (a program that printed and then raised counts). It applies to correct and wrong answers
alike, so the rewards with the penalty on are +1, +0.5, -1 and -1.5. It shapes the training signal
only: eval-mode scores (see grader.py) never carry it.

How the rule reads ScoreRequest's `tool_statuses`, `tool_passed` and `tool_rounds` (the contract with rollout):
- `tool_rounds` is the number of tool rounds: generation rounds run with the stop string "```output"
  (each counts against the budget C), whatever ended them. The reference resets its
  execution_pass in every such round (:335, :350), so a round that ended on EOS after an earlier
  successful run (possible at C >= 2) is a failed last round. 0 = no tool round.
- `tool_statuses` holds one status per tool round, in order; a round in which nothing ran (no
  complete ```python block, or it ended on EOS) is TOOL_STATUS_UNSPECIFIED ("none" in the library).
- `tool_passed`, aligned with `tool_statuses`, says whether the round's program succeeded as above.
  Callers that do not send it (external clients) get "successful = status OK".
- The last round is round number max(tool_rounds, len(tool_statuses)). The penalty applies when
  (a) there were no tool rounds (no code at all), or
  (b) the last round did not succeed (passed false; without `tool_passed`: status not OK), or
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


    @classmethod
    def from_proto(cls, code: int) -> ToolStatus:
        """The status for a torl.v1.ToolStatus value; an unknown (newer) value is "nothing ran".

        The one mapping from the wire enum: reward's server and evaluation use it."""
        from torl.common.tool_status import status_name

        return cls(status_name(code))


def last_round_failed(
    tool_statuses: Sequence[ToolStatus], tool_rounds: int, tool_passed: Sequence[bool] = ()
) -> bool:
    """True when the last tool round had no successful execution (see the module docstring)."""
    rounds = max(tool_rounds, len(tool_statuses))
    if rounds == 0:
        return True
    if len(tool_statuses) < rounds:
        return True
    if len(tool_passed) == len(tool_statuses):
        return not tool_passed[rounds - 1]
    return tool_statuses[rounds - 1] is not ToolStatus.OK


def reward_for(
    correct: bool,
    tool_statuses: Sequence[ToolStatus],
    tool_rounds: int,
    penalty: PenaltySettings,
    tool_passed: Sequence[bool] = (),
) -> tuple[float, bool]:
    """(reward, penalty_applied) for one response."""
    reward = 1.0 if correct else -1.0
    if penalty.enabled and last_round_failed(tool_statuses, tool_rounds, tool_passed):
        return reward - penalty.amount, True
    return reward, False
