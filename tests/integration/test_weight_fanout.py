"""The learner's weight push at the shape of a real cluster: one packed, hashed state fanned out to
several rollout receivers at once, staged on the receiver in exactly the room the model needs.

Real gRPC on loopback, the learner's real WeightSender and the rollout's real WeightReceiver
(manifest, sha256 and version checks, staging straight to a safetensors file). What stands in for
vLLM is `FileSink`: it reads the staged file as vLLM's reload would (safetensors) and checks it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import torch

from tests.integration.weight_receivers import GrpcOnlySink, ReceiverServicer
from torl.common import weight_stream
from torl.common.errors import ResourceExhausted
from torl.common.grpc_server import ErrorMappingInterceptor
from torl.common.weight_stream import PackedWeights, TensorShape, WeightsIn
from torl.learner.config import WeightSyncSettings
from torl.learner.weight_sync import WeightSender
from torl.rollout.weights import WeightReceiver, staging_bytes
from torl.v1 import common_pb2, rollout_pb2_grpc

pytestmark = pytest.mark.timeout(300)


class FileSink(GrpcOnlySink):
    """Opens each staged update as the engine would; `barrier` makes every replica's swap wait for the others."""

    def __init__(self, check: dict[str, torch.Tensor], barrier: asyncio.Barrier | None = None,
                 fail_first: int = 0) -> None:
        self.check = check  # a few tensors the staged file must carry bit-exactly
        self.barrier = barrier
        self.fail_first = fail_first
        self.swaps = 0
        self.staged_sizes: list[int] = []

    async def swap_weights(self, weights_dir: str) -> float:
        from safetensors import safe_open

        self.swaps += 1
        if self.swaps <= self.fail_first:
            raise RuntimeError("engine hiccup (test)")
        path = Path(weights_dir) / "model.safetensors"
        self.staged_sizes.append(path.stat().st_size)
        with safe_open(str(path), framework="pt") as f:
            for name, want in self.check.items():
                assert torch.equal(f.get_tensor(name), want), name
        if self.barrier is not None:
            await asyncio.wait_for(self.barrier.wait(), timeout=60)
        return 0.0


class Replicas:
    """N rollout receivers, each its own gRPC server on loopback, served by one event loop thread."""

    def __init__(self, n: int, expected: list[TensorShape], staging: Path,
                 make_sink: Callable[[int, asyncio.AbstractEventLoop], FileSink], staging_limit: int = 0) -> None:
        self.loop = asyncio.new_event_loop()
        self.receivers: list[WeightReceiver] = []
        self.sinks: list[FileSink] = []
        self.targets: list[str] = []
        self._servers: list[grpc.aio.Server] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        for i in range(n):
            sink = make_sink(i, self.loop)
            receiver = WeightReceiver(sink, expected, staging_dir=staging / f"replica-{i}",
                                      staging_limit_bytes=staging_limit)
            self.sinks.append(sink)
            self.receivers.append(receiver)
            port = asyncio.run_coroutine_threadsafe(self._start(receiver), self.loop).result(30)
            self.targets.append(f"127.0.0.1:{port}")

    async def _start(self, receiver: WeightReceiver) -> int:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)],
                                 interceptors=[ErrorMappingInterceptor()])  # the services' error → status mapping
        rollout_pb2_grpc.add_RolloutServicer_to_server(ReceiverServicer(receiver), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._servers.append(server)
        return port

    def close(self) -> None:
        async def stop() -> None:
            for s in self._servers:
                await s.stop(grace=None)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        for r in self.receivers:
            r.close()


def state(total_bytes: int, n_tensors: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """`n_tensors` random bf16 tensors of `total_bytes` in all (a layer-like [rows, 1024] shape)."""
    g = torch.Generator().manual_seed(seed)
    rows = total_bytes // n_tensors // 2 // 1024
    base = torch.randn(rows, 1024, generator=g).to(torch.bfloat16)
    return {f"model.layers.{i}.weight": base if i == 0 else base + i for i in range(n_tensors)}


def specs_of(sd: dict[str, torch.Tensor]) -> list[TensorShape]:
    return [TensorShape(k, str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in sd.items()]


def counting_pack(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch weight_stream.pack (what the sender packs and hashes with); the list gets each call's bytes."""
    calls: list[int] = []
    real = weight_stream.pack

    def spy(tensors: WeightsIn, version: common_pb2.WeightVersion) -> PackedWeights:
        packed = real(tensors, version)
        calls.append(packed.total_bytes)
        return packed

    monkeypatch.setattr(weight_stream, "pack", spy)
    return calls


def test_push_packs_and_hashes_once_and_streams_to_every_replica_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = state(8 << 20, 8)
    check = {k: sd[k] for k in list(sd)[:2]}
    n = 3
    barrier: list[asyncio.Barrier] = []

    def make_sink(i: int, loop: asyncio.AbstractEventLoop) -> FileSink:
        # Every replica's (successful) swap waits until all 3 are swapping: a sender that streamed one
        # replica after another would leave the first waiting alone, and the push would fail at the
        # barrier's timeout. Replica 1's engine fails its first load (before the barrier): the sender
        # retries that replica, from the same packed state, and the retry is the barrier's third party.
        if not barrier:
            barrier.append(asyncio.run_coroutine_threadsafe(_barrier(n), loop).result(10))
        return FileSink(check, barrier=barrier[0], fail_first=1 if i == 1 else 0)

    replicas = Replicas(n, specs_of(sd), tmp_path, make_sink)
    packs = counting_pack(monkeypatch)
    sender = WeightSender(WeightSyncSettings(replicas=replicas.targets, retries=2, deadline_seconds=120,
                                             chunk_mb=1.0))
    try:
        version = common_pb2.WeightVersion(incarnation=1, step=1)
        res = sender.push(iter(list(sd.items())), version)  # (name, tensor) pairs, consumed once
    finally:
        sender.close()
        replicas.close()
    assert sorted(res.acked) == sorted(replicas.targets) and not res.failed, res
    assert packs == [sum(v.numel() * 2 for v in sd.values())], f"packed/hashed {len(packs)} times for {n} replicas"
    assert [s.swaps for s in replicas.sinks] == [1, 2, 1]
    assert all(r.current().step == 1 for r in replicas.receivers)
    assert res.bytes == n * packs[0]
    for i in range(n):
        assert not list((tmp_path / f"replica-{i}").glob("torl-weights-*")), "a loaded update stayed staged"


async def _barrier(n: int) -> asyncio.Barrier:
    return asyncio.Barrier(n)


def test_staging_too_small_for_the_model_is_refused_with_what_to_change(tmp_path: Path) -> None:
    sd = state(1 << 20, 4)
    specs = specs_of(sd)
    needed = staging_bytes(specs)
    assert needed > 1 << 20  # the weights plus the header
    ok = WeightReceiver(FileSink({}), specs, staging_dir=tmp_path / "ok", staging_limit_bytes=needed)
    ok.check_staging()  # exactly the room one update takes is enough
    small = WeightReceiver(FileSink({}), specs, staging_dir=tmp_path / "small", staging_limit_bytes=needed - 1)
    with pytest.raises(ResourceExhausted, match=r"weights\.staging_dir.*larger volume") as err:
        small.check_staging()
    assert str(needed) in err.value.message
    # and a push to such a replica fails with that message (RESOURCE_EXHAUSTED), staging nothing
    replicas = Replicas(1, specs, tmp_path / "r", lambda i, loop: FileSink({}), staging_limit=needed - 1)
    sender = WeightSender(WeightSyncSettings(replicas=replicas.targets, retries=0, deadline_seconds=60))
    try:
        res = sender.push(sd, common_pb2.WeightVersion(incarnation=1, step=1))
    finally:
        sender.close()
        replicas.close()
    assert res.acked == [] and "RESOURCE_EXHAUSTED" in res.failed[replicas.targets[0]], res.failed
    assert "needs" in res.failed[replicas.targets[0]]
    assert replicas.receivers[0].current().step == 0
    assert not list((tmp_path / "r" / "replica-0").glob("torl-weights-*"))


@pytest.mark.slow
def test_two_replicas_take_a_1gb_bf16_state_staged_in_exactly_the_room_the_model_needs(tmp_path: Path) -> None:
    sd = state(1 << 30, 16, seed=1)
    specs = specs_of(sd)
    needed = staging_bytes(specs)
    check = {k: sd[k] for k in list(sd)[::5]}
    replicas = Replicas(2, specs, tmp_path, lambda i, loop: FileSink(check), staging_limit=needed)

    def pairs() -> Iterator[tuple[str, torch.Tensor]]:
        yield from sd.items()

    sender = WeightSender(WeightSyncSettings(replicas=replicas.targets, retries=0, deadline_seconds=240))
    try:
        res = sender.push(pairs(), common_pb2.WeightVersion(incarnation=1, step=1))
    finally:
        sender.close()
        replicas.close()
    assert sorted(res.acked) == sorted(replicas.targets) and not res.failed, res.failed
    assert [s.staged_sizes for s in replicas.sinks] == [[needed], [needed]]
    assert all(r.current().step == 1 for r in replicas.receivers)
    print(f"2-replica push of {sum(v.numel() * 2 for v in sd.values()) / 2**30:.2f} GiB bf16: {res.seconds:.1f}s")
