"""gRPC adapter of the executor service (skeleton: health, reflection and the contract; methods follow)."""

from __future__ import annotations

from torl.common.grpc_server import ServiceBinding
from torl.common.service import run_grpc_service
from torl.executor.config import ExecutorSettings
from torl.v1 import executor_pb2_grpc


async def serve(settings: ExecutorSettings) -> None:
    binding = ServiceBinding(
        name="torl.v1.Executor",
        servicer=executor_pb2_grpc.ExecutorServicer(),
        add=executor_pb2_grpc.add_ExecutorServicer_to_server,
    )
    await run_grpc_service(settings, [binding])
