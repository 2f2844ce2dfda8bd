"""gRPC adapter of the reward service: Score and ScoreBatch over the in-process `Grader`.

The adapter only translates protos to library types and back; grading, timeouts and reward rules
live in grader.py. Item-level oddities (no answer, huge or malformed text, inconsistent tool
counts) are scored with a reason code, never an error; request-level violations (too many items,
an unknown mode) are INVALID_ARGUMENT with a message naming the field.
"""

from __future__ import annotations

import asyncio

import grpc

from torl.common.errors import InvalidArgument
from torl.common.grpc_server import ServiceBinding
from torl.common.logging import get_logger
from torl.common.service import run_grpc_service
from torl.reward import metrics
from torl.reward.config import RewardSettings
from torl.reward.grader import Grader, Mode, ScoreItem, ScoreResult
from torl.reward.rules import Reason, ToolStatus
from torl.v1 import common_pb2, reward_pb2, reward_pb2_grpc

log = get_logger("torl.reward.server")

_MODES = {
    reward_pb2.SCORE_MODE_UNSPECIFIED: Mode.TRAINING,
    reward_pb2.SCORE_MODE_TRAINING: Mode.TRAINING,
    reward_pb2.SCORE_MODE_EVAL: Mode.EVAL,
}
_REASONS = {
    Reason.CORRECT: common_pb2.REWARD_REASON_CORRECT,
    Reason.WRONG: common_pb2.REWARD_REASON_WRONG,
    Reason.NO_ANSWER: common_pb2.REWARD_REASON_NO_ANSWER,
    Reason.UNPARSABLE: common_pb2.REWARD_REASON_UNPARSABLE,
    Reason.TIMEOUT: common_pb2.REWARD_REASON_TIMEOUT,
}


def item_from_proto(req: reward_pb2.ScoreRequest, where: str) -> ScoreItem:
    mode = _MODES.get(req.mode)
    if mode is None:
        raise InvalidArgument(f"{where}.mode: unknown ScoreMode value {req.mode}")
    # An unknown (newer) status value is treated as "nothing ran": it can only add a penalty.
    statuses = tuple(ToolStatus.from_proto(s) for s in req.tool_statuses)
    return ScoreItem(
        response=req.response,
        reference=req.reference,
        mode=mode,
        tool_statuses=statuses,
        tool_rounds=req.tool_rounds,
        id=req.id,
        tool_passed=tuple(req.tool_passed),
    )


def result_to_proto(r: ScoreResult) -> reward_pb2.ScoreResponse:
    return reward_pb2.ScoreResponse(
        id=r.id,
        reward=r.reward,
        correct=r.correct,
        reason=_REASONS[r.reason],
        extracted_answer=r.extracted_answer,
        penalty_applied=r.penalty_applied,
        seconds=r.seconds,
    )


class RewardServicer(reward_pb2_grpc.RewardServicer):
    def __init__(self, grader: Grader, max_batch_items: int) -> None:
        self._grader = grader
        self._max_batch_items = max_batch_items

    async def Score(
        self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreResponse:
        item = item_from_proto(request, "request")
        results = await self._grader.score_batch_async([item])
        return result_to_proto(results[0])

    async def ScoreBatch(
        self, request: reward_pb2.ScoreBatchRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreBatchResponse:
        n = len(request.requests)
        if n > self._max_batch_items:
            raise InvalidArgument(f"requests: {n} items; the limit is {self._max_batch_items} (max_batch_items)")
        items = [item_from_proto(req, f"requests[{i}]") for i, req in enumerate(request.requests)]
        metrics.BATCH_ITEMS.observe(n)
        results = await self._grader.score_batch_async(items)
        return reward_pb2.ScoreBatchResponse(responses=[result_to_proto(r) for r in results])


async def serve(settings: RewardSettings) -> None:
    metrics.initialize()
    grader = await asyncio.to_thread(Grader, settings.grader)
    binding = ServiceBinding(
        name="torl.v1.Reward",
        servicer=RewardServicer(grader, settings.max_batch_items),
        add=reward_pb2_grpc.add_RewardServicer_to_server,
    )

    async def close_grader() -> None:
        await asyncio.to_thread(grader.close)

    try:
        await run_grpc_service(settings, [binding], on_shutdown=close_grader)
    finally:
        grader.close()
