"""A rollout replica that restarts mid-run comes back serving its base weights (version 0:0). With
max_staleness 0 it must not sample the prompts of the current step with those, so it holds them;
the learner has to notice (GetStatus) and push it the current weights, or the step never fills.

Real Redis, real gRPC on loopback, the learner's real Orchestrator (setup, collect_step_data, weight
push) and the rollout's real UpdateWeights receiver (torl.rollout.weights.WeightReceiver: manifest,
sha256 and version checks, staged safetensors). What stands in for vLLM is `Replica` below: it loads
the pushed tensors into a dict and answers each prompt with a group stamped with the version it
serves, but only once that version is at least the prompt's min_version (as the rollout does).
The engine is a small torch model (the orchestrator's `engine_factory` hook), not DeepSpeed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
import torch
from prometheus_client import REGISTRY

from tests.conftest import free_port
from tests.e2e.helpers import RedisServer
from tests.integration.weight_receivers import GrpcOnlySink, ReceiverServicer
from torl.common.redis_layout import PAYLOAD_FIELD, PROMPT_GROUP, RunKeys, version_key
from torl.common.weight_stream import TensorShape
from torl.learner.config import LearnerSettings
from torl.learner.orchestrator import Orchestrator, TrainingError
from torl.rollout.weights import WeightReceiver
from torl.v1 import rollout_pb2_grpc, trajectory_pb2

pytestmark = pytest.mark.timeout(120)


class SmallEngine:
    """The part of torl.learner.engine.TrainEngine the weight push uses, on a tiny torch model."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.module = torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16))

    def named_weights(self, dtype: torch.dtype = torch.float32) -> list[tuple[str, torch.Tensor]]:
        return [(n, p.detach().to(dtype).contiguous().clone()) for n, p in self.module.named_parameters()]


class DictSink(GrpcOnlySink):
    """Loads each verified update the receiver stages (what vLLM's reload would read)."""

    def __init__(self) -> None:
        self.loaded: list[dict[str, torch.Tensor]] = []

    async def swap_weights(self, weights_dir: str) -> float:
        from safetensors.torch import load_file

        self.loaded.append(load_file(str(Path(weights_dir) / "model.safetensors")))
        return 0.0


class Replica:
    """One rollout replica process stand-in: gRPC server on `port`, a prompt consumer on Redis."""

    def __init__(self, port: int, redis_url: str, run_id: str, expected: list[TensorShape], staging: Path) -> None:
        self.port = port
        self.sink = DictSink()
        self.receiver = WeightReceiver(self.sink, expected, staging_dir=staging)  # starts at 0:0 (base weights)
        self.keys = RunKeys(run_id)
        self.r = redis.Redis.from_url(redis_url)
        try:  # the rollout creates its consumer group too (whoever starts first)
            self.r.xgroup_create(self.keys.prompts, PROMPT_GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self.held: list[tuple[str, trajectory_pb2.Prompt]] = []
        self._stop = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._threads = [threading.Thread(target=self._serve, daemon=True),
                         threading.Thread(target=self._consume, daemon=True)]
        for t in self._threads:
            t.start()
        assert self._started.wait(10), "replica gRPC server did not start"

    def _serve(self) -> None:
        async def main() -> None:
            server = grpc.aio.server()
            rollout_pb2_grpc.add_RolloutServicer_to_server(ReceiverServicer(self.receiver), server)
            server.add_insecure_port(f"127.0.0.1:{self.port}")
            await server.start()
            self._started.set()
            while not self._stop.is_set():
                await asyncio.sleep(0.05)
            await server.stop(grace=None)

        self._loop.run_until_complete(main())

    def _consume(self) -> None:
        while not self._stop.is_set():
            resp: Any = self.r.xreadgroup(PROMPT_GROUP, "rollout-0", {self.keys.prompts: ">"}, count=16, block=100)
            for _stream, items in resp or []:
                for entry_id, fields in items:
                    self.held.append((entry_id, trajectory_pb2.Prompt.FromString(fields[PAYLOAD_FIELD])))
            serving = self.receiver.current()
            for entry_id, p in list(self.held):
                if version_key(serving) < version_key(p.min_version):
                    continue  # the rollout's rule: never sample a prompt with weights older than it asks for
                g = trajectory_pb2.TrajectoryGroup(group_id=p.prompt_id, prompt=p, prompt_token_ids=[1, 2])
                for i in range(2):
                    g.trajectories.add(trajectory_id=f"{p.prompt_id}-{i}", token_ids=[3, 4], logprobs=[-0.5, -0.5],
                                       loss_mask=[1, 1], reward=float(i), version_start=serving, version_end=serving)
                self.r.xadd(self.keys.trajectories, {PAYLOAD_FIELD: g.SerializeToString()})
                self.r.xack(self.keys.prompts, PROMPT_GROUP, entry_id)
                self.held.remove((entry_id, p))

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        self.r.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.close()


def make_trainer(tmp_path: Path, redis_url: str, run_id: str, port: int, check_every: float,
                 step_timeout: float, max_staleness: int = 0) -> Orchestrator:
    settings = LearnerSettings(
        redis_url=redis_url, run_id=run_id, output_dir=str(tmp_path / f"out-{run_id}"),
        data={"dataset": "arith", "prompts_per_step": 2, "group_size": 2, "arith_train_size": 50},
        loop={"read_block_ms": 200, "step_timeout_seconds": step_timeout, "max_staleness": max_staleness},
        weight_sync={"replicas": [f"127.0.0.1:{port}"], "check_every_seconds": check_every,
                     "status_deadline_seconds": 2, "deadline_seconds": 10, "retries": 1},
    )
    return Orchestrator(settings, engine_factory=SmallEngine)


def expected_specs() -> list[TensorShape]:
    return [TensorShape(n, "float32", tuple(t.shape)) for n, t in SmallEngine().named_weights()]


@pytest.mark.parametrize("max_staleness", [0, 1])  # 1: async mode, the re-push waits for an idle pusher
def test_restarted_replica_gets_the_current_weights_and_the_step_fills(
        tmp_path: Path, redis_server: RedisServer, max_staleness: int) -> None:
    port = free_port()
    replica = Replica(port, redis_server.url, "resync", expected_specs(), tmp_path / "staging-a")
    trainer = make_trainer(tmp_path, redis_server.url, "resync", port, check_every=0.5, step_timeout=60,
                           max_staleness=max_staleness)
    try:
        trainer.setup()  # pushes this incarnation's weights to the replica before the first step
        current = (trainer.incarnation, trainer.step)
        assert version_key(replica.receiver.current()) == current and len(replica.sink.loaded) == 1
        repushes_before = REGISTRY.get_sample_value("torl_learner_weight_repushes_total",
                                                    {"replica": f"127.0.0.1:{port}"}) or 0.0

        # The replica restarts: down for a moment, then back on the same port with its base weights.
        replica.close()
        restarted: list[Replica] = []
        threading.Timer(1.5, lambda: restarted.append(
            Replica(port, redis_server.url, "resync", expected_specs(), tmp_path / "staging-b"))).start()
        t0 = time.monotonic()
        data = trainer.collect_step_data()
        waited = time.monotonic() - t0
        new = restarted[0]
        try:
            assert version_key(new.receiver.current()) == current, "the restarted replica never got the weights"
            assert len(new.sink.loaded) == 1
            sent = dict(trainer.engine.engine.named_weights())
            assert all(torch.equal(new.sink.loaded[0][k], v) for k, v in sent.items())
            assert sorted(g.group_id for g in data.groups) == ["resync-e0-0", "resync-e0-1"]
            assert all(version_key(t.version_start) == current for g in data.groups for t in g.trajectories)
            assert trainer.publisher is not None and trainer.publisher.repushes == 1
            assert REGISTRY.get_sample_value("torl_learner_weight_repushes_total",
                                             {"replica": f"127.0.0.1:{port}"}) == repushes_before + 1
            assert waited < 30, f"the step took {waited:.0f}s to fill after the replica came back"
            # A replica that is up to date is left alone.
            assert trainer.repush_to_lagging_replicas() == []
            assert len(new.sink.loaded) == 1
        finally:
            new.close()
    finally:
        trainer.close()


def test_without_the_check_the_restarted_replica_holds_the_step(tmp_path: Path, redis_server: RedisServer) -> None:
    """The control: with the check off, the same restart leaves the step empty until its timeout."""
    port = free_port()
    replica = Replica(port, redis_server.url, "nocheck", expected_specs(), tmp_path / "staging-a")
    trainer = make_trainer(tmp_path, redis_server.url, "nocheck", port, check_every=0, step_timeout=4)
    try:
        trainer.setup()
        replica.close()
        replica = Replica(port, redis_server.url, "nocheck", expected_specs(), tmp_path / "staging-b")
        with pytest.raises(TrainingError, match="only 0 of 2 groups"):
            trainer.collect_step_data()
        assert version_key(replica.receiver.current()) == (0, 0)
        assert len(replica.held) == 2, "the replica should hold the prompts it may not sample yet"
    finally:
        replica.close()
        trainer.close()

