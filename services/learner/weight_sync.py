"""Weight push to every rollout replica after each optimizer step.

Replicas come from a static list (local runs) or from the rollout Service's EndpointSlices through
the Kubernetes API (the `kubernetes` client, in-cluster config). Each push is one UpdateWeights
client stream (torl.common.weight_stream: manifest, then raw chunks) with a deadline; a replica
that fails or does not answer in time is reported, retried `retries` times, and then given up on
for this version, so the learner never hangs on a dead replica. In sync mode the caller waits for
every replica's ack; in async mode `AsyncPusher` pushes in the background and only the newest
version is kept when pushes fall behind.

A replica that restarts (or joins) mid-run serves its base weights until someone pushes again:
`replica_versions` asks each replica's GetStatus, so the trainer can push the current weights to
just the replicas that are behind (`push(..., targets=...)`).

A push packs and hashes the tensors once (torl.common.weight_stream.pack), then streams that one
packed state to every replica at once, each stream reading the same byte views; a retry re-reads
them. `make_weight_sender` picks the transport: this gRPC stream, or the NCCL broadcast
(torl.learner.nccl_sender) where the manifest still travels over gRPC.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from torl.common import weight_stream
from torl.common.grpc_client import open_channel
from torl.common.logging import get_logger
from torl.common.tls import channel_credentials
from torl.common.weight_stream import PackedWeights, WeightsIn
from torl.learner import metrics as m
from torl.learner.config import WeightSyncSettings
from torl.v1 import common_pb2, rollout_pb2, rollout_pb2_grpc

log = get_logger("torl.learner.weight_sync")


def discover_kubernetes(service: str, namespace: str, port_name: str) -> list[str]:
    """host:port of every ready endpoint of `service`, read from its EndpointSlices (in-cluster)."""
    from kubernetes import client, config

    config.load_incluster_config()
    if not namespace:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as f:
            namespace = f.read().strip()
    api = client.DiscoveryV1Api()
    slices = api.list_namespaced_endpoint_slice(namespace, label_selector=f"kubernetes.io/service-name={service}")
    targets: list[str] = []
    for sl in slices.items:
        ports = [p.port for p in (sl.ports or []) if p.name == port_name or (not port_name and p.port)]
        if not ports:
            continue
        for ep in sl.endpoints or []:
            if ep.conditions is not None and ep.conditions.ready is False:
                continue
            targets.extend(f"{addr}:{ports[0]}" for addr in ep.addresses or [])
    return sorted(set(targets))


def replica_targets(cfg: WeightSyncSettings) -> list[str]:
    if cfg.kubernetes_service:
        return discover_kubernetes(cfg.kubernetes_service, cfg.kubernetes_namespace, cfg.kubernetes_port_name)
    return list(cfg.replicas)


@dataclass
class PushResult:
    version: common_pb2.WeightVersion
    seconds: float
    acked: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # replica -> last error
    bytes: int = 0


MAX_PARALLEL_PUSHES = 64  # replicas streamed at once; more wait for a free stream


class WeightSender:
    """Pushes named tensors to every replica over gRPC; keeps one channel per replica."""

    transport = "grpc"

    def __init__(self, cfg: WeightSyncSettings, targets: Callable[[], Sequence[str]] | None = None) -> None:
        self.cfg = cfg
        self._targets = targets or (lambda: replica_targets(cfg))
        self._channels: dict[str, grpc.Channel] = {}
        self._channels_lock = threading.Lock()  # stubs are asked for from the fan-out threads
        channel_credentials(cfg.tls, "weight_sync.tls")  # a bad TLS file fails here, at start-up
        self.pool = ThreadPoolExecutor(max_workers=MAX_PARALLEL_PUSHES, thread_name_prefix="weight-push")

    def stub(self, target: str) -> rollout_pb2_grpc.RolloutStub:
        """The replica's stub on its one channel (opened on first use)."""
        with self._channels_lock:
            if target not in self._channels:
                # gRPC-level retries are off here: a push is retried whole by _push_one. Reconnect backoff
                # is capped at 5 s so a replica that comes back (after a restart) is reached within seconds.
                self._channels[target] = open_channel(
                    target, aio=False, tls=self.cfg.tls, max_message_mb=64, max_attempts=2,
                    extra_options=[("grpc.initial_reconnect_backoff_ms", 500),
                                   ("grpc.max_reconnect_backoff_ms", 5000)],
                )
            return rollout_pb2_grpc.RolloutStub(self._channels[target])

    def _messages(self, packed: PackedWeights) -> Iterator[rollout_pb2.WeightChunk]:
        """One replica's UpdateWeights stream (a fresh pass over the shared views)."""
        return packed.chunks(int(self.cfg.chunk_mb * 1024 * 1024))

    def _push_one(self, target: str, packed: PackedWeights) -> str:
        """'' on ack, else the last error."""
        version = packed.manifest.version
        err = ""
        for attempt in range(self.cfg.retries + 1):
            try:
                resp = self.stub(target).UpdateWeights(self._messages(packed), timeout=self.cfg.deadline_seconds)
                if (resp.version.incarnation, resp.version.step) != (version.incarnation, version.step):
                    err = f"replica serves {resp.version.incarnation}:{resp.version.step} after the push"
                else:
                    return ""
            except grpc.RpcError as e:
                err = f"{e.code().name}: {e.details()}"
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    break  # refused (e.g. a newer incarnation already serves): retrying cannot help
            log.warning("weight_push_retry", replica=target, attempt=attempt + 1, error=err,
                        version=f"{version.incarnation}:{version.step}")
            time.sleep(min(0.2 * 2**attempt, 2.0))
        return err

    def targets(self) -> list[str]:
        found = list(self._targets())
        m.initialize_replicas(found)  # a replica's failure series exists (at 0) from its discovery
        return found

    def replica_statuses(self, targets: Sequence[str] | None = None) -> dict[str, rollout_pb2.RolloutStatus | str]:
        """Each replica's GetStatus (in parallel), or the error that kept it from answering."""

        def one(target: str) -> rollout_pb2.RolloutStatus | str:
            try:
                status: rollout_pb2.RolloutStatus = self.stub(target).GetStatus(
                    rollout_pb2.GetStatusRequest(), timeout=self.cfg.status_deadline_seconds)
            except grpc.RpcError as e:
                return f"{e.code().name}: {e.details()}"
            return status

        names = list(targets) if targets is not None else self.targets()
        futures = {t: self.pool.submit(one, t) for t in names}
        return {t: f.result() for t, f in futures.items()}

    def replica_versions(self, targets: Sequence[str] | None = None) -> dict[str, common_pb2.WeightVersion | str]:
        """Each replica's serving version (GetStatus, in parallel), or the error that kept it from answering."""
        return {t: s if isinstance(s, str) else s.version for t, s in self.replica_statuses(targets).items()}

    def push(self, weights: WeightsIn, version: common_pb2.WeightVersion,
             targets: Sequence[str] | None = None) -> PushResult:
        """Pack `weights` once (a mapping, or (name, tensor) pairs consumed once), then `push_prepared`."""
        t0 = time.perf_counter()
        return self.push_prepared(self.prepare(weights, version), targets, started=t0)

    def prepare(self, weights: WeightsIn, version: common_pb2.WeightVersion) -> PackedWeights:
        """Consume `weights` and pack and hash them: the one copy every replica's stream reads."""
        return weight_stream.pack(weights, version)

    def push_prepared(self, packed: PackedWeights, targets: Sequence[str] | None = None,
                      started: float | None = None) -> PushResult:
        """Push to every replica (or to `targets`) concurrently and wait (each bounded by deadline x retries)."""
        t0 = started if started is not None else time.perf_counter()
        version = packed.manifest.version
        targets = list(targets) if targets is not None else self.targets()
        result = PushResult(version=version, seconds=0.0, bytes=packed.total_bytes * len(targets))
        for target, err in self._fan_out(packed, targets).items():
            if err:
                result.failed[target] = err
                m.WEIGHT_PUSH_FAILURES.labels(replica=target).inc()
                log.error("weight_push_failed", replica=target, error=err,
                          version=f"{version.incarnation}:{version.step}")
            else:
                result.acked.append(target)
        result.seconds = time.perf_counter() - t0
        m.WEIGHT_PUSH_SECONDS.observe(result.seconds)
        m.WEIGHT_PUSH_BYTES.inc(result.bytes)
        return result

    def _fan_out(self, packed: PackedWeights, targets: list[str]) -> dict[str, str]:
        """Each target's error ('' = acked); all streams run at once from the one packed state."""
        futures = {t: self.pool.submit(self._push_one, t, packed) for t in targets}
        return {t: f.result() for t, f in futures.items()}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for ch in self._channels.values():
            ch.close()


class Sender(Protocol):
    """A weight transport as the trainer uses it (gRPC: WeightSender; NCCL: torl.learner.nccl_sender)."""

    transport: str

    def targets(self) -> list[str]: ...

    def replica_versions(self, targets: Sequence[str] | None = None) -> dict[str, common_pb2.WeightVersion | str]: ...

    def push(self, weights: WeightsIn, version: common_pb2.WeightVersion,
             targets: Sequence[str] | None = None) -> PushResult: ...

    def prepare(self, weights: WeightsIn, version: common_pb2.WeightVersion) -> Any: ...

    def push_prepared(self, prepared: Any, targets: Sequence[str] | None = None,
                      started: float | None = None) -> PushResult: ...

    def close(self) -> None: ...


def make_weight_sender(cfg: WeightSyncSettings, targets: Callable[[], Sequence[str]] | None = None) -> Sender:
    """The sender for `cfg.transport`: the gRPC stream, or the NCCL broadcast (GPU learner and rollout)."""
    if cfg.transport == "nccl":
        from torl.learner.nccl_sender import NcclWeightSender

        return NcclWeightSender(cfg, targets)
    return WeightSender(cfg, targets)


class AsyncPusher:
    """Background pushes for max_staleness > 0: the newest pending version wins."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self._cv = threading.Condition()
        self._next: Any = None
        self._closed = False
        self._busy = False
        self.last: PushResult | None = None
        self.skipped = 0
        self._thread = threading.Thread(target=self._run, name="weight-push-async", daemon=True)
        self._thread.start()

    def submit(self, weights: WeightsIn, version: common_pb2.WeightVersion) -> None:
        """Prepare now, in the caller's thread (a gathered iterable is consumed here), push in the background."""
        packed = self.sender.prepare(weights, version)
        with self._cv:
            if self._next is not None:
                self.skipped += 1  # an older version never went out; the newer one replaces it
            self._next = packed
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._next is None and not self._closed:
                    self._cv.wait()
                if self._next is None:
                    return
                packed = self._next
                self._next = None
                self._busy = True
            try:
                self.last = self.sender.push_prepared(packed)
            finally:
                with self._cv:
                    self._busy = False

    def idle(self) -> bool:
        """No push queued or in flight."""
        with self._cv:
            return self._next is None and not self._busy

    def close(self, timeout: float = 30.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)
