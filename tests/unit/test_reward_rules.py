"""ToRL reward rules and the execution-penalty mapping of tool_statuses / tool_rounds."""

from __future__ import annotations

import pytest

from torl.reward.config import PenaltySettings
from torl.reward.rules import ToolStatus, last_round_failed, reward_for

OK, ERR, NONE = ToolStatus.OK, ToolStatus.ERROR, ToolStatus.NONE


@pytest.mark.parametrize(
    ("statuses", "rounds", "failed"),
    [
        ((), 0, True),  # no code at all
        ((OK,), 1, False),
        ((ERR,), 1, True),
        ((ToolStatus.TIMEOUT,), 1, True),
        ((ToolStatus.SANDBOX_ERROR,), 1, True),
        ((ToolStatus.REJECTED,), 1, True),
        ((NONE,), 1, True),  # the round stopped on ```output but no complete block ran
        ((ERR, OK), 2, False),  # only the last round matters
        ((OK, ERR), 2, True),
        ((OK,), 2, True),  # fewer statuses than rounds: the last round ran nothing
        ((OK, ERR), 0, True),  # statuses win over a smaller round count
        ((ERR, OK), 1, False),
    ],
)
def test_last_round_failed(statuses: tuple[ToolStatus, ...], rounds: int, failed: bool) -> None:
    assert last_round_failed(statuses, rounds) is failed


def test_rewards_without_penalty() -> None:
    off = PenaltySettings()
    assert reward_for(True, (), 0, off) == (1.0, False)
    assert reward_for(False, (), 0, off) == (-1.0, False)


def test_penalty_subtracts_half_from_correct_and_wrong_alike() -> None:
    on = PenaltySettings(enabled=True)
    assert reward_for(True, (OK,), 1, on) == (1.0, False)
    assert reward_for(True, (ERR,), 1, on) == (0.5, True)
    assert reward_for(False, (), 0, on) == (-1.5, True)
    assert reward_for(False, (OK,), 1, on) == (-1.0, False)
    assert reward_for(True, (ERR,), 1, PenaltySettings(enabled=True, amount=0.25)) == (0.75, True)


def test_proto_status_names_map_onto_tool_status() -> None:
    assert ToolStatus("unspecified") is ToolStatus.NONE
    assert ToolStatus("sandbox_error") is ToolStatus.SANDBOX_ERROR
    with pytest.raises(ValueError):
        ToolStatus("bogus")
