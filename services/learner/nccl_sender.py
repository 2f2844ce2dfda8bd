"""NCCL weight push: the learner's side of vLLM's NCCL weight transfer (the rollout's side is
torl.rollout.weights, which calls vLLM's init_weight_transfer_engine / update_weights).

The group: rank 0 is this learner's sender; each rollout replica's workers follow, replica i (in
StatefulSet ordinal order, from the replica name GetStatus reports) at ranks 1 + i*W .. 1 + i*W + W-1
for W workers per replica (its tensor parallel size). With every replica up, that is the offset the
ordinal gives. The group is formed once and rebuilt (a new generation) when the set of replicas
that answer changes or one of them reports it is not in the current group (it restarted).

One push: every member gets a manifest-only UpdateWeights (names, dtypes, shapes, the group and its
rank offset) over gRPC, all at once; while those calls wait inside vLLM, the learner opens its rank-0
endpoint if the group is new (vLLM's nccl_common.trainer_init, a StatelessProcessGroup rendezvous on
nccl_master_address:nccl_master_port) and broadcasts the tensors in manifest order (vLLM's
packed_nccl_broadcast_producer, or one broadcast per tensor), then waits for every member's ack.
A broadcast is collective: it always goes to the whole group, and a failure drops the group so the
next push forms a new one.

The transport pieces (rendezvous, broadcast) sit behind `NcclEndpoint`; `VllmNcclEndpoint` is the
real one. Everything else (planning, ordering, rebuilds) runs the same with any endpoint.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from torl.common.logging import get_logger
from torl.common.redis_layout import format_version, version_key
from torl.common.weight_stream import DTYPE_SIZES, TensorShape, WeightsIn, dtype_name
from torl.learner import metrics as m
from torl.learner.config import WeightSyncSettings
from torl.learner.weight_sync import PushResult, WeightSender
from torl.v1 import common_pb2, rollout_pb2

if TYPE_CHECKING:
    import torch

log = get_logger("torl.learner.nccl_sender")


class NcclEndpoint(Protocol):
    """The learner's rank 0 in the transfer group."""

    def open(self, master_address: str, master_port: int, world_size: int) -> None:
        """Join as rank 0; returns once every worker has joined (they join inside their UpdateWeights)."""
        ...

    def broadcast(self, pairs: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Send every tensor, in order, to all other ranks."""
        ...

    def close(self) -> None: ...


class VllmNcclEndpoint:
    """vLLM's trainer-side NCCL weight transfer: the same rendezvous and wire format its workers expect."""

    def __init__(self, packed: bool) -> None:
        self.packed = packed
        self._comm: Any = None

    def open(self, master_address: str, master_port: int, world_size: int) -> None:
        from vllm.distributed.weight_transfer.nccl_common import trainer_init

        self.close()
        self._comm = trainer_init(
            {"master_address": master_address, "master_port": master_port, "world_size": world_size}, rank=0
        )

    def broadcast(self, pairs: Iterable[tuple[str, torch.Tensor]]) -> None:
        import torch
        from vllm.distributed.weight_transfer.packed_tensor import (
            DEFAULT_PACKED_BUFFER_SIZE_BYTES,
            DEFAULT_PACKED_NUM_BUFFERS,
            packed_nccl_broadcast_producer,
        )

        if self._comm is None:
            raise RuntimeError("NCCL endpoint not open")
        on_device = ((n, t if t.is_cuda else t.to("cuda", non_blocking=True)) for n, t in pairs)
        if self.packed:  # the worker's default buffer geometry (the rollout does not set its own)
            packed_nccl_broadcast_producer(
                iterator=on_device, group=self._comm, src=0, post_iter_func=lambda item: item[1],
                buffer_size_bytes=DEFAULT_PACKED_BUFFER_SIZE_BYTES, num_buffers=DEFAULT_PACKED_NUM_BUFFERS,
            )
        else:
            stream = torch.cuda.current_stream()
            for _name, t in on_device:
                self._comm.broadcast(t.contiguous(), src=0, stream=stream)
        torch.cuda.current_stream().synchronize()

    def close(self) -> None:
        if self._comm is not None:
            self._comm.destroy()
            self._comm = None


@dataclass(frozen=True)
class GroupPlan:
    """One generation of the transfer group: each member's first rank, and the size."""

    generation: int
    world_size: int
    offsets: dict[str, int]  # target -> rank offset


_ORDINAL = re.compile(r"-(\d+)$")


def ordinal_of(replica: str) -> int | None:
    """The StatefulSet ordinal at the end of a replica (pod) name, e.g. 3 for 'torl-rollout-3'."""
    found = _ORDINAL.search(replica)
    return int(found.group(1)) if found else None


def plan_group(members: Mapping[str, str], workers_per_replica: int, generation: int) -> GroupPlan:
    """Rank offsets for `members` (target -> replica name): ordinal order, then target; dense from 1."""
    order = sorted(members, key=lambda t: (ordinal_of(members[t]) is None, ordinal_of(members[t]) or 0, t))
    offsets = {t: 1 + i * workers_per_replica for i, t in enumerate(order)}
    return GroupPlan(generation, 1 + len(order) * workers_per_replica, offsets)


def nccl_manifest(meta: Sequence[TensorShape], version: common_pb2.WeightVersion, group: GroupPlan,
                  target: str, rendezvous: bool) -> rollout_pb2.WeightManifest:
    """A manifest without data: specs tiling the (virtual) payload, the group, this member's offset.

    Its sha256 digests the version and specs (no bytes pass through gRPC to hash): the receiver only
    uses it to tell an identical re-push from a different update of the same version.
    """
    specs: list[rollout_pb2.TensorSpec] = []
    offset = 0
    for s in meta:
        nbytes = math.prod(s.shape) * DTYPE_SIZES[s.dtype]
        specs.append(rollout_pb2.TensorSpec(name=s.name, dtype=s.dtype, shape=list(s.shape), offset=offset,
                                            nbytes=nbytes))
        offset += nbytes
    digest = hashlib.sha256(f"{version.incarnation}:{version.step}".encode())
    for spec in specs:
        digest.update(spec.SerializeToString())
    return rollout_pb2.WeightManifest(
        version=common_pb2.WeightVersion(incarnation=version.incarnation, step=version.step),
        tensors=specs, total_bytes=offset, sha256=digest.hexdigest(),
        nccl=rollout_pb2.NcclGroup(generation=group.generation, rank_offset=group.offsets[target],
                                   world_size=group.world_size, rendezvous=rendezvous),
    )


@dataclass
class NcclUpdate:
    """One push, ready to broadcast: what the workers are told, and the tensors in that order."""

    version: common_pb2.WeightVersion
    meta: list[TensorShape]
    pairs: Iterator[tuple[str, torch.Tensor]]


def _checked(pairs: Iterable[tuple[str, torch.Tensor]], meta: Sequence[TensorShape]
             ) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors, each checked against what the workers were told (a mismatch would hang the broadcast)."""
    i = 0
    for name, t in pairs:
        if i >= len(meta):
            raise ValueError(f"more tensors than the manifest declared ({len(meta)}); first extra is {name!r}")
        want = meta[i]
        if (name, dtype_name(t), tuple(t.shape)) != (want.name, want.dtype, want.shape):
            raise ValueError(f"tensor {i}: declared {want.name} {want.dtype} {list(want.shape)}, "
                             f"got {name} {dtype_name(t)} {list(t.shape)}")
        i += 1
        yield name, t
    if i != len(meta):
        raise ValueError(f"{i} tensors sent but the manifest declared {len(meta)}; the workers wait for the rest")


class NcclWeightSender:
    """Pushes weights over vLLM's NCCL transfer to every replica; the control messages go over gRPC."""

    transport = "nccl"

    def __init__(self, cfg: WeightSyncSettings, targets: Callable[[], Sequence[str]] | None = None,
                 endpoint: NcclEndpoint | None = None) -> None:
        self.cfg = cfg
        self.grpc = WeightSender(cfg, targets)  # channels, discovery, GetStatus, the fan-out pool
        self.endpoint: NcclEndpoint = endpoint or VllmNcclEndpoint(cfg.nccl_packed)
        self.group: GroupPlan | None = None
        self.rebuilds = 0

    def targets(self) -> list[str]:
        return self.grpc.targets()

    def replica_versions(self, targets: Sequence[str] | None = None) -> dict[str, common_pb2.WeightVersion | str]:
        return self.grpc.replica_versions(targets)

    def prepare(self, weights: WeightsIn, version: common_pb2.WeightVersion,
                metadata: Sequence[TensorShape] | None = None) -> NcclUpdate:
        """Without `metadata`, the tensors are held (a mapping already is; pairs are collected) to read their
        specs first; with it, pairs stream into the broadcast as they come (e.g. gathered layer by layer)."""
        if metadata is None:
            items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
            metadata = [TensorShape(n, dtype_name(t), tuple(t.shape)) for n, t in items]
            pairs: Iterable[tuple[str, torch.Tensor]] = items
        else:
            pairs = weights.items() if isinstance(weights, Mapping) else weights
        return NcclUpdate(version, list(metadata), iter(pairs))

    def push(self, weights: WeightsIn, version: common_pb2.WeightVersion,
             targets: Sequence[str] | None = None, metadata: Sequence[TensorShape] | None = None) -> PushResult:
        t0 = time.perf_counter()
        return self.push_prepared(self.prepare(weights, version, metadata), targets, started=t0)

    def _current_group(self, targets: list[str], version: common_pb2.WeightVersion
                       ) -> tuple[GroupPlan, bool, dict[str, str]]:
        """The group to broadcast in, whether it is new, and the replicas left out (unreachable)."""
        statuses = self.grpc.replica_statuses(targets)
        ahead = {t: format_version(s.version) for t, s in statuses.items()
                 if not isinstance(s, str) and version_key(s.version) > version_key(version)}
        if ahead:  # they would refuse the manifest and leave the broadcast waiting for them: stop here
            raise ValueError(f"replicas serve a version newer than {format_version(version)}: {ahead}")
        up = {t: s.replica for t, s in statuses.items() if not isinstance(s, str)}
        down = {t: s for t, s in statuses.items() if isinstance(s, str)}
        g = self.group
        if g is not None and set(g.offsets) == set(up) and all(
                not isinstance(s, str) and s.nccl_group == g.generation for s in statuses.values()):
            return g, False, down
        if g is not None:
            left = sorted(set(g.offsets) - set(up))
            joined = sorted(set(up) - set(g.offsets))
            restarted = sorted(t for t, s in statuses.items()
                               if not isinstance(s, str) and t in g.offsets and s.nccl_group != g.generation)
            log.warning("nccl_group_rebuild", generation=g.generation, left=left, joined=joined, restarted=restarted)
            self.endpoint.close()
            self.rebuilds += 1
        generation = max((g.generation + 1) if g else 0, time.time_ns() // 1_000_000)  # unique across restarts
        plan = plan_group(up, self.cfg.nccl_workers_per_replica, generation)
        if self.cfg.nccl_world_size and plan.world_size > self.cfg.nccl_world_size:
            raise ValueError(f"NCCL group of {plan.world_size} ranks exceeds weight_sync.nccl_world_size "
                             f"{self.cfg.nccl_world_size}: {len(up)} replicas x {self.cfg.nccl_workers_per_replica}")
        self.group = plan
        return plan, True, down

    def _send_manifest(self, target: str, manifest: rollout_pb2.WeightManifest) -> str:
        """'' on ack, else the error (no retry: the broadcast it belongs to happens once)."""
        try:
            resp = self.grpc.stub(target).UpdateWeights(iter([rollout_pb2.WeightChunk(manifest=manifest)]),
                                                         timeout=self.cfg.deadline_seconds)
        except grpc.RpcError as e:
            return f"{e.code().name}: {e.details()}"
        v = manifest.version
        if (resp.version.incarnation, resp.version.step) != (v.incarnation, v.step):
            return f"replica serves {resp.version.incarnation}:{resp.version.step} after the push"
        return ""

    def push_prepared(self, update: NcclUpdate, targets: Sequence[str] | None = None,
                      started: float | None = None) -> PushResult:
        """Broadcast to the whole group (a collective: `targets` cannot narrow it; every discovered replica)."""
        t0 = started if started is not None else time.perf_counter()
        members = self.targets()
        result = PushResult(version=update.version, seconds=0.0)
        try:
            group, rendezvous, down = self._current_group(members, update.version)
        except Exception as e:  # e.g. the group would exceed nccl_world_size
            result.failed = {t: f"{type(e).__name__}: {e}" for t in members}
            return self._finish(result, t0)
        result.failed.update(down)
        if not group.offsets:
            return self._finish(result, t0)
        futures = {t: self.grpc.pool.submit(self._send_manifest, t,
                                             nccl_manifest(update.meta, update.version, group, t, rendezvous))
                   for t in group.offsets}
        try:
            if rendezvous:
                self.endpoint.open(self.cfg.nccl_master_address, self.cfg.nccl_master_port, group.world_size)
            refused = {t: f.result() for t, f in futures.items() if f.done() and f.result()}
            if refused:  # refused before any NCCL call: broadcasting would wait for them forever
                raise RuntimeError(f"replicas refused the update before the broadcast: {refused}")
            self.endpoint.broadcast(_checked(update.pairs, update.meta))
        except Exception as e:
            log.error("nccl_push_failed", generation=group.generation, exc_info=e)
            self.group = None  # the group is unusable: the next push forms a new one
            self.endpoint.close()
            for t, f in futures.items():
                result.failed[t] = (f.result() if f.done() else "") or f"NCCL broadcast failed: {e}"
            return self._finish(result, t0)
        for t, f in futures.items():
            err = f.result()
            if err:
                result.failed[t] = err
                self.group = None
            else:
                result.acked.append(t)
        result.bytes = sum(math.prod(s.shape) * DTYPE_SIZES[s.dtype] for s in update.meta) * len(result.acked)
        return self._finish(result, t0)

    def _finish(self, result: PushResult, t0: float) -> PushResult:
        v = result.version
        for t, err in result.failed.items():
            m.WEIGHT_PUSH_FAILURES.labels(replica=t).inc()
            log.error("weight_push_failed", replica=t, error=err, version=f"{v.incarnation}:{v.step}", path="nccl")
        result.seconds = time.perf_counter() - t0
        m.WEIGHT_PUSH_SECONDS.observe(result.seconds)
        m.WEIGHT_PUSH_BYTES.inc(result.bytes)
        return result

    def close(self) -> None:
        self.endpoint.close()
        self.grpc.close()
