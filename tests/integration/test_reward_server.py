"""The reward service over real gRPC on loopback: Score, ScoreBatch order, odd input, errors, metrics."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import grpc
import pytest

from tests.conftest import ServiceProcess, free_port
from torl.v1 import common_pb2, reward_pb2, reward_pb2_grpc


@pytest.mark.timeout(120)
def test_score_and_score_batch(start_service: Callable[..., ServiceProcess]) -> None:
    metrics_port = free_port()
    sp = start_service("reward", "--metrics-port", str(metrics_port), "--set", "grader.penalty.enabled=true")
    with grpc.insecure_channel(sp.target) as ch:
        stub = reward_pb2_grpc.RewardStub(ch)
        one = stub.Score(
            reward_pb2.ScoreRequest(
                id="t1",
                response="```python\nprint(1/2)\n```\n```output\n0.5\n```\nSo $\\boxed{\\dfrac{1}{2}}$.",
                reference="0.5",
                tool_statuses=[common_pb2.TOOL_STATUS_OK],
                tool_rounds=1,
            ),
            timeout=30,
        )
        assert (one.id, one.correct, one.reward, one.reason) == ("t1", True, 1.0, common_pb2.REWARD_REASON_CORRECT)
        assert one.extracted_answer == "\\dfrac{1}{2}" and not one.penalty_applied

        group = [
            ("\\boxed{(x+1)^2}", "x^2+2x+1", [common_pb2.TOOL_STATUS_ERROR], 1),
            ("no answer at all", "3", [], 0),
            ("\\boxed{2^{10^{100}}}", "3", [common_pb2.TOOL_STATUS_OK], 1),
            ("x" * 1_000_000, "3", [], 0),
            ("\\boxed{4}", "3", [common_pb2.TOOL_STATUS_OK, 99], 2),  # unknown status value: nothing ran
            ("The answer is 3", "3", [], 0),  # training mode: no boxed answer
        ]
        batch = stub.ScoreBatch(
            reward_pb2.ScoreBatchRequest(
                requests=[
                    reward_pb2.ScoreRequest(id=str(i), response=r, reference=ref, tool_statuses=st, tool_rounds=n)
                    for i, (r, ref, st, n) in enumerate(group)
                ]
            ),
            timeout=30,
        )
        got = [(x.id, x.reason, x.reward, x.penalty_applied) for x in batch.responses]
        assert got == [
            ("0", common_pb2.REWARD_REASON_CORRECT, 0.5, True),
            ("1", common_pb2.REWARD_REASON_NO_ANSWER, -1.5, True),
            ("2", common_pb2.REWARD_REASON_UNPARSABLE, -1.0, False),
            ("3", common_pb2.REWARD_REASON_UNPARSABLE, -1.5, True),
            ("4", common_pb2.REWARD_REASON_WRONG, -1.5, True),
            ("5", common_pb2.REWARD_REASON_NO_ANSWER, -1.5, True),
        ]
        evaluated = stub.Score(
            reward_pb2.ScoreRequest(response="The answer is 3", reference="3", mode=reward_pb2.SCORE_MODE_EVAL),
            timeout=30,
        )
        assert evaluated.correct and evaluated.reason == common_pb2.REWARD_REASON_CORRECT

        with pytest.raises(grpc.RpcError) as e:
            stub.Score(reward_pb2.ScoreRequest(response="\\boxed{1}", reference="1", mode=7), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request.mode" in (e.value.details() or "")
        assert stub.ScoreBatch(reward_pb2.ScoreBatchRequest(), timeout=10).responses == []

    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    assert 'torl_reward_scores_total{mode="training",reason="unparsable"} 2.0' in body
    assert 'torl_reward_scores_total{mode="eval",reason="correct"} 1.0' in body
    assert "torl_reward_verification_seconds_bucket" in body
    assert 'torl_reward_screen_rejections_total{what="response"} 1.0' in body
    assert "torl_reward_penalties_total 5.0" in body


@pytest.mark.timeout(120)
def test_batch_over_the_limit_is_invalid_argument(start_service: Callable[..., ServiceProcess]) -> None:
    sp = start_service("reward", "--set", "max_batch_items=4", "--set", "grader.workers=1")
    with grpc.insecure_channel(sp.target) as ch:
        stub = reward_pb2_grpc.RewardStub(ch)
        req = reward_pb2.ScoreBatchRequest(
            requests=[reward_pb2.ScoreRequest(response="\\boxed{1}", reference="1") for _ in range(5)]
        )
        with pytest.raises(grpc.RpcError) as e:
            stub.ScoreBatch(req, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limit is 4" in (e.value.details() or "")
