"""The learner's NCCL weight sender as far as a CPU takes it: group planning from StatefulSet
ordinals, the manifest-over-gRPC / rendezvous / broadcast ordering, and rebuilding the group when a
replica restarts or the set of replicas changes.

Real: the learner's NcclWeightSender, gRPC on loopback, the rollout's WeightReceiver on its NCCL path
(group join, version rules), GetStatus reporting the joined group. Stand-in: NCCL itself (no GPU
here). `Fabric` plays the communicator: a rendezvous that completes only when the learner's rank 0
and every replica are in it at once (a sender that did not open its endpoint while the replicas wait
inside UpdateWeights would time out), and a broadcast that hands rank 0's tensors to each member.
The real transfer is tests/gpu/test_nccl_weight_push.py (marked gpu).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterable
from typing import Any

import grpc
import pytest
import torch

from tests.integration.weight_receivers import ReceiverServicer
from torl.common.grpc_server import ErrorMappingInterceptor
from torl.common.weight_stream import TensorShape
from torl.learner.config import WeightSyncSettings
from torl.learner.nccl_sender import NcclWeightSender, ordinal_of, plan_group
from torl.learner.weight_sync import make_weight_sender
from torl.rollout.weights import WeightReceiver, nccl_init_info
from torl.v1 import common_pb2, rollout_pb2_grpc

pytestmark = pytest.mark.timeout(120)
TP = 2  # workers per replica: offsets 1, 3, 5, ...


class Fabric:
    """NCCL stand-in shared by the learner endpoint and the replicas' sinks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._barriers: dict[int, threading.Barrier] = {}
        self.inboxes: dict[int, queue.Queue[list[tuple[str, torch.Tensor]]]] = {}  # rank offset -> inbox
        self.world = 0
        self.opens: list[int] = []

    def barrier(self, world: int) -> threading.Barrier:
        with self._lock:  # parties: rank 0 + one join per replica (its TP workers join together)
            return self._barriers.setdefault(world, threading.Barrier(1 + (world - 1) // TP, timeout=20))

    def join(self, rank_offset: int, world: int) -> queue.Queue[list[tuple[str, torch.Tensor]]]:
        inbox: queue.Queue[list[tuple[str, torch.Tensor]]] = queue.Queue()
        with self._lock:
            self.inboxes[rank_offset] = inbox
        self.barrier(world).wait()
        return inbox


class FabricEndpoint:
    """The learner's rank 0 on the Fabric (where VllmNcclEndpoint would use NCCL)."""

    def __init__(self, fabric: Fabric) -> None:
        self.fabric = fabric
        self.closes = 0

    def open(self, master_address: str, master_port: int, world_size: int) -> None:
        assert (master_address, master_port) == ("127.0.0.1", 29555)
        self.fabric.opens.append(world_size)
        self.fabric.barrier(world_size).wait()
        self.fabric.world = world_size

    def broadcast(self, pairs: Iterable[tuple[str, torch.Tensor]]) -> None:
        sent = list(pairs)
        for offset, inbox in list(self.fabric.inboxes.items()):
            if offset < self.fabric.world:
                inbox.put(sent)

    def close(self) -> None:
        self.closes += 1


class WorkerSink:
    """A replica's engine on the Fabric: joins when told, receives a broadcast per update."""

    def __init__(self, fabric: Fabric) -> None:
        self.fabric = fabric
        self.inits: list[dict[str, Any]] = []
        self.inbox: queue.Queue[list[tuple[str, torch.Tensor]]] | None = None
        self.received: list[dict[str, torch.Tensor]] = []

    async def swap_weights(self, weights_dir: str) -> float:  # pragma: no cover - NCCL path only
        raise AssertionError("the NCCL path stages nothing")

    async def nccl_init(self, init_info: dict[str, Any]) -> None:
        self.inits.append(init_info)
        self.inbox = await asyncio.to_thread(self.fabric.join, init_info["rank_offset"], init_info["world_size"])

    async def nccl_update(self, update_info: dict[str, Any], version: str) -> float:
        assert self.inbox is not None, "update before joining the group"
        sent = await asyncio.to_thread(self.inbox.get, True, 20)
        assert [n for n, _ in sent] == update_info["names"]  # broadcast order = the manifest's order
        assert [list(t.shape) for _, t in sent] == update_info["shapes"]
        self.received.append(dict(sent))
        return 0.0


def state(scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), scale), "b": torch.full((3,), scale, dtype=torch.bfloat16)}


EXPECTED = [TensorShape("w", "float32", (2, 3)), TensorShape("b", "bfloat16", (3,))]


class Cluster:
    """Rollout replicas ('torl-rollout-<ordinal>') on one event loop thread; replicas can restart."""

    def __init__(self, fabric: Fabric) -> None:
        self.fabric = fabric
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.servers: dict[int, grpc.aio.Server] = {}
        self.sinks: dict[int, WorkerSink] = {}
        self.receivers: dict[int, WeightReceiver] = {}
        self.ports: dict[int, int] = {}

    def start(self, ordinal: int) -> str:
        async def go() -> int:
            sink = WorkerSink(self.fabric)
            # the replica's own config: rendezvous address; offset/world from its config are overridden
            receiver = WeightReceiver(sink, EXPECTED, path="nccl",
                                      nccl_init_info=nccl_init_info("127.0.0.1", 29555, 1, 2, True))
            server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()])
            servicer = ReceiverServicer(receiver, f"torl-rollout-{ordinal}")
            rollout_pb2_grpc.add_RolloutServicer_to_server(servicer, server)
            port = server.add_insecure_port(f"127.0.0.1:{self.ports.get(ordinal, 0)}")
            await server.start()
            self.servers[ordinal], self.sinks[ordinal], self.receivers[ordinal] = server, sink, receiver
            return port

        self.ports[ordinal] = asyncio.run_coroutine_threadsafe(go(), self.loop).result(20)
        return self.target(ordinal)

    def target(self, ordinal: int) -> str:
        return f"127.0.0.1:{self.ports[ordinal]}"

    def stop(self, ordinal: int) -> None:
        asyncio.run_coroutine_threadsafe(self.servers.pop(ordinal).stop(grace=None), self.loop).result(20)

    def close(self) -> None:
        for o in list(self.servers):
            self.stop(o)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def test_offsets_follow_statefulset_ordinals_and_stay_dense() -> None:
    assert ordinal_of("torl-rollout-12") == 12 and ordinal_of("replica") is None
    members = {"10.0.0.9:50053": "torl-rollout-2", "10.0.0.3:50053": "torl-rollout-0",
               "10.0.0.7:50053": "torl-rollout-1"}
    plan = plan_group(members, workers_per_replica=4, generation=7)
    assert plan.world_size == 1 + 3 * 4
    assert plan.offsets == {"10.0.0.3:50053": 1, "10.0.0.7:50053": 5, "10.0.0.9:50053": 9}  # 1 + ordinal x TP
    # ordinal 1 down: the group is formed from those present, ranks stay dense (NCCL needs every rank)
    del members["10.0.0.7:50053"]
    assert plan_group(members, 4, 8).offsets == {"10.0.0.3:50053": 1, "10.0.0.9:50053": 5}


def test_push_forms_the_group_once_and_rebuilds_it_on_restart_and_on_a_new_replica() -> None:
    fabric = Fabric()
    cluster = Cluster(fabric)
    endpoint = FabricEndpoint(fabric)
    targets = [cluster.start(1), cluster.start(0)]
    cfg = WeightSyncSettings(replicas=targets, transport="nccl", nccl_master_address="127.0.0.1",
                             nccl_master_port=29555, nccl_workers_per_replica=TP, nccl_world_size=1 + 3 * TP,
                             deadline_seconds=30)
    assert isinstance(make_weight_sender(cfg), NcclWeightSender)
    sender = NcclWeightSender(cfg, targets=lambda: targets, endpoint=endpoint)
    try:
        # 1. the first push forms the group: ordinal 0 at rank 1, ordinal 1 at rank 1 + TP
        res = sender.push(state(1.0), common_pb2.WeightVersion(incarnation=1, step=1))
        assert sorted(res.acked) == sorted(targets) and not res.failed, res
        assert fabric.opens == [1 + 2 * TP]
        assert [(i["rank_offset"], i["world_size"]) for i in cluster.sinks[0].inits] == [(1, 1 + 2 * TP)]
        assert [(i["rank_offset"], i["world_size"]) for i in cluster.sinks[1].inits] == [(1 + TP, 1 + 2 * TP)]
        first = sender.group
        assert first is not None and {cluster.receivers[o].nccl_group for o in (0, 1)} == {first.generation}

        # 2. the next push reuses it: no rendezvous, one more broadcast each, pairs streamed with metadata
        res = sender.push(iter(state(2.0).items()), common_pb2.WeightVersion(incarnation=1, step=2),
                          metadata=EXPECTED)
        assert not res.failed and fabric.opens == [1 + 2 * TP] and sender.rebuilds == 0
        assert all(len(cluster.sinks[o].inits) == 1 and len(cluster.sinks[o].received) == 2 for o in (0, 1))
        assert torch.equal(cluster.sinks[0].received[-1]["w"], torch.full((2, 3), 2.0))

        # 3. replica 1 restarts (same address, a fresh process: in no group): the learner rebuilds
        cluster.stop(1)
        cluster.start(1)
        res = sender.push(state(3.0), common_pb2.WeightVersion(incarnation=1, step=3))
        assert sorted(res.acked) == sorted(targets) and not res.failed, res
        assert sender.rebuilds == 1 and fabric.opens == [1 + 2 * TP, 1 + 2 * TP] and endpoint.closes == 1
        second = sender.group
        assert second is not None and second.generation > first.generation
        assert len(cluster.sinks[0].inits) == 2  # the survivor re-joined the new group too
        assert all(cluster.receivers[o].nccl_group == second.generation for o in (0, 1))
        assert torch.equal(cluster.sinks[1].received[-1]["b"], torch.full((3,), 3.0, dtype=torch.bfloat16))

        # 4. a third replica joins: a bigger group; it gets the current weights with everyone else
        targets.append(cluster.start(2))
        res = sender.push(state(4.0), common_pb2.WeightVersion(incarnation=1, step=4))
        assert sorted(res.acked) == sorted(targets) and not res.failed, res
        assert fabric.opens[-1] == 1 + 3 * TP and sender.rebuilds == 2
        assert cluster.sinks[2].inits[-1]["rank_offset"] == 1 + 2 * TP
        assert all(cluster.receivers[o].current().step == 4 for o in (0, 1, 2))

        # 5. a group larger than the configured bound is refused, not formed
        targets.append(cluster.start(3))
        res = sender.push(state(5.0), common_pb2.WeightVersion(incarnation=1, step=5))
        assert not res.acked and all("nccl_world_size" in e for e in res.failed.values()), res.failed
    finally:
        sender.close()
        cluster.close()


def test_a_push_older_than_a_member_serves_fails_before_any_broadcast() -> None:
    fabric = Fabric()
    cluster = Cluster(fabric)
    endpoint = FabricEndpoint(fabric)
    targets = [cluster.start(0)]
    cfg = WeightSyncSettings(replicas=targets, transport="nccl", nccl_master_address="127.0.0.1",
                             nccl_master_port=29555, nccl_workers_per_replica=TP, deadline_seconds=30)
    sender = NcclWeightSender(cfg, targets=lambda: targets, endpoint=endpoint)
    try:
        assert not sender.push(state(1.0), common_pb2.WeightVersion(incarnation=2, step=1)).failed
        received = len(cluster.sinks[0].received)
        # the replica would refuse an older version; with NCCL that would leave rank 0 waiting in the
        # broadcast, so the learner checks the members' versions (GetStatus) first and sends nothing
        res = sender.push(state(0.5), common_pb2.WeightVersion(incarnation=1, step=9))
        assert res.acked == [] and "newer than 1:9" in res.failed[targets[0]], res.failed
        assert len(cluster.sinks[0].received) == received and fabric.inboxes[1].empty()
        assert cluster.receivers[0].current().incarnation == 2
    finally:
        sender.close()
        cluster.close()
