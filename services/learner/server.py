"""gRPC adapter of the learner service (skeleton: health, reflection and the contract; methods follow)."""

from __future__ import annotations

from torl.common.grpc_server import ServiceBinding
from torl.common.service import run_grpc_service
from torl.learner.config import LearnerSettings
from torl.v1 import learner_pb2_grpc


async def serve(settings: LearnerSettings) -> None:
    binding = ServiceBinding(
        name="torl.v1.Learner",
        servicer=learner_pb2_grpc.LearnerServicer(),
        add=learner_pb2_grpc.add_LearnerServicer_to_server,
    )
    await run_grpc_service(settings, [binding])
