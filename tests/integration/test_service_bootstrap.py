"""Every service starts on a free loopback port, reports health, lists its services through
reflection, rejects undecodable requests with INVALID_ARGUMENT, and stops on SIGTERM within 5 s.

The rollout's check runs in test_rollout_service.py, on that module's engine (a vLLM start-up of
its own here cost one to two minutes of CI)."""

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


def check_reflection_and_malformed_request(target: str, full_name: str, method: str) -> None:
    """Reflection lists the service and health; bytes that are not a valid protobuf message get
    INVALID_ARGUMENT with a message, no trace."""
    names = list_services(target)
    assert full_name in names
    assert "grpc.health.v1.Health" in names
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(f"/{full_name}/{method}", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as e:
            call(b"\xff\xff\xff\xff\x0f", timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed request" in (e.value.details() or "")
        assert "Traceback" not in (e.value.details() or "")


def check_sigterm_stop(sp: ServiceProcess) -> None:
    """SIGTERM: the process exits 0 within 5 s and logs `stopped`."""
    t0 = time.monotonic()
    rc = sp.stop(timeout=5.0)
    assert time.monotonic() - t0 < 5.0
    assert rc == 0, sp.log()[-4000:]
    assert '"event": "stopped"' in sp.log()


@pytest.mark.parametrize("service", list(SERVICES))
def test_serve_health_reflection_sigterm(service: str, start_service: Callable[..., ServiceProcess]) -> None:
    full_name, method, extra = SERVICES[service]
    sp = start_service(service, *extra, timeout=60.0)
    check_reflection_and_malformed_request(sp.target, full_name, method)
    check_sigterm_stop(sp)
