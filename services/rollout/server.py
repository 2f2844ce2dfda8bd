"""gRPC adapter of the rollout service (skeleton: health, reflection and the contract; methods follow)."""

from __future__ import annotations

from torl.common.grpc_server import ServiceBinding
from torl.common.service import run_grpc_service
from torl.rollout.config import RolloutSettings
from torl.v1 import rollout_pb2_grpc


async def serve(settings: RolloutSettings) -> None:
    binding = ServiceBinding(
        name="torl.v1.Rollout",
        servicer=rollout_pb2_grpc.RolloutServicer(),
        add=rollout_pb2_grpc.add_RolloutServicer_to_server,
    )
    await run_grpc_service(settings, [binding])
