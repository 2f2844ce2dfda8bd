"""What the weight-sync tests put where a rollout replica's engine and gRPC service would be: the
replica's real WeightReceiver behind a servicer that only serves weights and status, and the base of
the engine stand-ins that take the gRPC path only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from torl.rollout.weights import WeightReceiver
from torl.v1 import rollout_pb2, rollout_pb2_grpc


class ReceiverServicer(rollout_pb2_grpc.RolloutServicer):
    """UpdateWeights and GetStatus of a rollout replica, answered by its WeightReceiver."""

    def __init__(self, receiver: WeightReceiver, name: str = "replica-0") -> None:
        self.receiver, self.name = receiver, name

    async def UpdateWeights(self, request_iterator: AsyncIterator[rollout_pb2.WeightChunk],
                            context: grpc.aio.ServicerContext) -> rollout_pb2.UpdateWeightsResponse:
        return (await self.receiver.receive(request_iterator)).to_proto()

    async def GetStatus(self, request: rollout_pb2.GetStatusRequest,
                        context: grpc.aio.ServicerContext) -> rollout_pb2.RolloutStatus:
        return rollout_pb2.RolloutStatus(version=self.receiver.current(), replica=self.name,
                                         nccl_group=self.receiver.nccl_group)


class GrpcOnlySink:
    """An engine stand-in that takes weights over gRPC only (subclasses define swap_weights)."""

    async def nccl_init(self, init_info: dict[str, Any]) -> None:
        raise NotImplementedError("gRPC path only")

    async def nccl_update(self, update_info: dict[str, Any], version: str) -> float:
        raise NotImplementedError("gRPC path only")
