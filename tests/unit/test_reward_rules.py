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


@pytest.mark.parametrize(
    ("statuses", "passed", "rounds", "failed"),
    [
        ((ERR,), (True,), 1, False),  # printed, then raised: the reference counts it a success
        ((ToolStatus.TIMEOUT,), (True,), 1, False),  # partial stdout before the time limit
        ((ERR,), (False,), 1, True),
        ((OK, NONE), (True, False), 2, True),  # C >= 2: ran in round 1, round 2 ended without code
        ((NONE, ERR), (False, True), 2, False),
        ((OK,), (True,), 2, True),  # a round is missing from the lists: it ran nothing
        ((OK, ERR), (True,), 2, True),  # passed not aligned with statuses: falls back to status OK
    ],
)
def test_last_round_failed_reads_passed(
    statuses: tuple[ToolStatus, ...], passed: tuple[bool, ...], rounds: int, failed: bool
) -> None:
    assert last_round_failed(statuses, rounds, passed) is failed


def test_from_proto_is_the_one_wire_mapping() -> None:
    from torl.v1 import common_pb2

    assert ToolStatus.from_proto(common_pb2.TOOL_STATUS_REJECTED) is ToolStatus.REJECTED
    assert ToolStatus.from_proto(common_pb2.TOOL_STATUS_UNSPECIFIED) is ToolStatus.NONE
    assert ToolStatus.from_proto(99) is ToolStatus.NONE  # a newer value: "nothing ran"
    assert {ToolStatus.from_proto(v) for v in common_pb2.ToolStatus.values()} == set(ToolStatus)


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
