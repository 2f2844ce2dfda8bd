"""gRPC adapter of the reward service (skeleton: health, reflection and the contract; methods follow)."""

from __future__ import annotations

from torl.common.grpc_server import ServiceBinding
from torl.common.service import run_grpc_service
from torl.reward.config import RewardSettings
from torl.v1 import reward_pb2_grpc


async def serve(settings: RewardSettings) -> None:
    binding = ServiceBinding(
        name="torl.v1.Reward",
        servicer=reward_pb2_grpc.RewardServicer(),
        add=reward_pb2_grpc.add_RewardServicer_to_server,
    )
    await run_grpc_service(settings, [binding])
