"""The learner's held-out evaluation goes through the one rollout `Generate` client that `torl eval`
uses (torl.evaluation.generation.generate): over real gRPC on loopback to a stand-in rollout, with the
rollout's scoring kept, the rollout's own tool budget, and the version being evaluated as the
prompt's min_version; the figures come from the returned groups."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import pytest

from tests.conftest import free_port
from torl.common.config import TlsClientSettings
from torl.learner.datasets import Problem
from torl.learner.evaluator import HeldOutEval
from torl.v1 import common_pb2, rollout_pb2, rollout_pb2_grpc

pytestmark = pytest.mark.timeout(60)


class Rollout(rollout_pb2_grpc.RolloutServicer):
    def __init__(self) -> None:
        self.requests: list[rollout_pb2.GenerateRequest] = []

    async def Generate(self, request: rollout_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> rollout_pb2.GenerateResponse:
        self.requests.append(request)
        right = request.prompt.answer == "2"
        resp = rollout_pb2.GenerateResponse()
        g = resp.group
        g.group_id = request.prompt.prompt_id
        g.trajectories.add(token_ids=[1, 2, 3], reward=1.0 if right else -1.0, correct=right,
                           tool_calls=[{"status": common_pb2.TOOL_STATUS_OK}] if right else [])
        return resp


@pytest.fixture
def rollout() -> Iterator[tuple[str, Rollout]]:
    servicer, port, started, stop = Rollout(), free_port(), threading.Event(), threading.Event()

    def serve() -> None:
        async def main() -> None:
            server = grpc.aio.server()
            rollout_pb2_grpc.add_RolloutServicer_to_server(servicer, server)
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            started.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await server.stop(grace=None)

        asyncio.run(main())

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    assert started.wait(10)
    yield f"127.0.0.1:{port}", servicer
    stop.set()
    th.join(10)


def test_held_out_eval_through_rollout(rollout: tuple[str, Rollout]) -> None:
    target, servicer = rollout
    problems = [Problem("a", "1+1?", "2", "toy"), Problem("b", "1+2?", "3", "toy")]
    ev = HeldOutEval(problems, temperature=0.0, tls=TlsClientSettings())
    result = ev.run(target, common_pb2.WeightVersion(incarnation=3, step=7))
    assert result["accuracy"] == 0.5 and result["reward_mean"] == 0.0 and result["tool_use_rate"] == 0.5
    assert result["problems"] == 2.0 and result["response_tokens"] == 3.0
    reqs = sorted(servicer.requests, key=lambda r: r.prompt.prompt_id)
    assert [r.prompt.prompt_id for r in reqs] == ["eval-7-a", "eval-7-b"]
    assert all((r.prompt.min_version.incarnation, r.prompt.min_version.step) == (3, 7) for r in reqs)
    assert not any(r.skip_scoring for r in reqs)  # the rollout's own rewards are kept
    assert not any(r.sampling.has_max_tool_calls for r in reqs)  # the rollout's configured tool budget
    assert all(r.sampling.n == 1 and r.sampling.temperature == 0.0 for r in reqs)
    assert HeldOutEval([], 0.0, TlsClientSettings()).run(target, common_pb2.WeightVersion()) == {}
