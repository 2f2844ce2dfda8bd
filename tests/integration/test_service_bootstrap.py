"""Every service starts on a free loopback port, reports health, lists its services through
reflection, rejects undecodable requests with INVALID_ARGUMENT, and stops on SIGTERM within 5 s."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import ServiceProcess

# service -> (full gRPC service name, one unary method, extra serve args)
SERVICES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "executor": ("torl.v1.Executor", "Execute", ("--set", "rest.port=0")),
    "reward": ("torl.v1.Reward", "Score", ()),
    "rollout": ("torl.v1.Rollout", "GetStatus", ()),
    "learner": ("torl.v1.Learner", "GetStatus", ()),
}


def list_services(target: str) -> set[str]:
    with grpc.insecure_channel(target) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names: set[str] = set()
        for r in responses:
            names.update(s.name for s in r.list_services_response.service)
        return names


@pytest.mark.parametrize("service", list(SERVICES))
def test_serve_health_reflection_sigterm(service: str, start_service: Callable[..., ServiceProcess]) -> None:
    full_name, method, extra = SERVICES[service]
    # rollout builds the cached tiny model (first run only) and starts vLLM before it serves.
    sp = start_service(service, *extra, timeout=300.0 if service == "rollout" else 60.0)
    names = list_services(sp.target)
    assert full_name in names
    assert "grpc.health.v1.Health" in names

    # Bytes that are not a valid protobuf message → INVALID_ARGUMENT with a message, no trace.
    with grpc.insecure_channel(sp.target) as ch:
        call = ch.unary_unary(f"/{full_name}/{method}", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as e:
            call(b"\xff\xff\xff\xff\x0f", timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed request" in (e.value.details() or "")
        assert "Traceback" not in (e.value.details() or "")

    t0 = time.monotonic()
    rc = sp.stop(timeout=5.0)
    assert time.monotonic() - t0 < 5.0
    assert rc == 0, sp.log()
    assert '"event": "stopped"' in sp.log()
