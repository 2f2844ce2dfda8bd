"""Reward adapter: the one place the rollout calls the reward service's gRPC contract.

A finished group is scored with one ScoreBatch call (full response text with observations, the
reference answer, the per-call tool statuses and the tool rounds). If scoring fails, every
trajectory of the group is marked excluded with REWARD_REASON_SCORING_FAILED and the reason:
a visible failure, never a silent -1.
"""

from __future__ import annotations

import grpc

from torl.common.config import TlsClientSettings
from torl.rollout import metrics
from torl.rollout.tools import dependency_channel
from torl.v1 import common_pb2, reward_pb2, reward_pb2_grpc, trajectory_pb2


def per_round_statuses(t: trajectory_pb2.Trajectory) -> list[int]:
    """One status per tool round, in order; TOOL_STATUS_UNSPECIFIED where the round ran no code.

    The reward service's execution penalty looks at the last round, so a round that ran nothing
    (no complete ```python block, or it ended on EOS) must still hold its place in the list.
    """
    statuses = [common_pb2.TOOL_STATUS_UNSPECIFIED] * t.tool_rounds
    for call in t.tool_calls:
        if call.round < len(statuses):
            statuses[call.round] = call.status
    return statuses


def per_round_passed(t: trajectory_pb2.Trajectory) -> list[bool]:
    """Per tool round, aligned with `per_round_statuses`: did a program run and succeed as the reference counts it."""
    passed = [False] * t.tool_rounds
    for call in t.tool_calls:
        if call.round < len(passed):
            passed[call.round] = call.passed
    return passed


class RewardScorer:
    def __init__(self, target: str, deadline_seconds: float = 60.0, tls: TlsClientSettings | None = None) -> None:
        self.target = target
        self.deadline_seconds = deadline_seconds
        self._channel = dependency_channel(target, tls)
        self._stub = reward_pb2_grpc.RewardStub(self._channel)

    async def score_group(self, group: trajectory_pb2.TrajectoryGroup) -> None:
        """Fill reward, reward_reason and correct on every trajectory of `group` in place."""
        if not group.trajectories:
            return
        requests = [
            reward_pb2.ScoreRequest(
                id=t.trajectory_id,
                response=t.text,
                reference=group.prompt.answer,
                tool_statuses=per_round_statuses(t),
                mode=reward_pb2.SCORE_MODE_TRAINING,
                tool_rounds=t.tool_rounds,
                tool_passed=per_round_passed(t),
            )
            for t in group.trajectories
        ]
        try:
            resp = await self._stub.ScoreBatch(
                reward_pb2.ScoreBatchRequest(requests=requests), timeout=self.deadline_seconds
            )
            if len(resp.responses) != len(requests):
                raise ValueError(f"reward answered {len(resp.responses)} scores for {len(requests)} responses")
        except (grpc.aio.AioRpcError, ValueError) as e:
            reason = f"reward {e.code().name}: {e.details()}" if isinstance(e, grpc.aio.AioRpcError) else str(e)
            for t in group.trajectories:
                t.reward = 0.0
                t.correct = False
                t.reward_reason = common_pb2.REWARD_REASON_SCORING_FAILED
                if not t.excluded:
                    t.excluded = True
                    t.excluded_reason = f"scoring failed: {reason}"
                    metrics.TRAJECTORIES_EXCLUDED.labels(cause="scoring_failed").inc()
            return
        for t, r in zip(group.trajectories, resp.responses, strict=True):
            t.reward = float(r.reward)
            t.correct = bool(r.correct)
            t.reward_reason = r.reason

    async def close(self) -> None:
        await self._channel.close()
