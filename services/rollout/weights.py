"""UpdateWeights receiver: verify a whole update first, then swap it into the running engine.

The gRPC path (portable default): a manifest, then raw chunks (services/common/weight_stream.py).
Before anything touches the engine the update must name exactly the model's tensors with the
model's dtypes and shapes, arrive complete, match its sha256, and carry a version newer than the
one serving in (incarnation, step) order. Any mismatch rejects the update whole and the old
weights keep serving. The payload is written straight into one safetensors file in the staging
directory as it arrives (the payload already is the concatenated tensors, so staging is a small
header plus the bytes; nothing is held in memory), verified, and loaded in place by the engine:
pause with in-flight requests kept, reload, reset the prefix cache, resume. The staged file is
removed once loaded, so staging needs the model's weight bytes plus the header, exactly
(`staging_bytes`), for one update at a time (updates stage one after another).

The NCCL path (GPUs): the same manifest arrives over gRPC but carries no data; the tensors come
over vLLM's NCCL weight-transfer engine from the learner. Same version rules, same interface. The
manifest names the learner's transfer group (torl.v1.NcclGroup: generation, this replica's rank
offset, world size); a manifest that forms a new group makes the replica join it first (vLLM's
init_weight_transfer_engine with the configured rendezvous address), one for a group the replica is
not in (it restarted since) is refused before any NCCL call. GetStatus reports the joined group, so
the learner (torl.learner.nccl_sender) rebuilds the group before broadcasting to a restarted replica.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import struct
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torl.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from torl.common.logging import get_logger
from torl.common.redis_layout import format_version, version_key
from torl.common.weight_stream import (
    DTYPE_SIZES,
    TensorShape,
    WeightAssembler,
    WeightStreamError,
    check_against,
    validate_manifest,
)
from torl.rollout import metrics
from torl.v1 import common_pb2, rollout_pb2

log = get_logger("torl.rollout.weights")

SAFETENSORS_DTYPES: dict[str, str] = {
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
    "int64": "I64", "int32": "I32", "int8": "I8", "uint8": "U8",
}
_FROM_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPES.items()}


class WeightSink(Protocol):
    """What the receiver needs from the engine."""

    async def swap_weights(self, weights_dir: str) -> float: ...

    async def nccl_init(self, init_info: dict[str, Any]) -> None: ...

    async def nccl_update(self, update_info: dict[str, Any], version: str) -> float: ...


@dataclass(frozen=True)
class UpdateResult:
    version: common_pb2.WeightVersion
    receive_seconds: float
    pause_seconds: float
    bytes: int

    def to_proto(self) -> rollout_pb2.UpdateWeightsResponse:
        return rollout_pb2.UpdateWeightsResponse(
            version=self.version,
            receive_seconds=self.receive_seconds,
            pause_seconds=self.pause_seconds,
            bytes=self.bytes,
        )


def read_checkpoint_specs(model_dir: str | Path) -> list[TensorShape]:
    """Names, dtypes and shapes of every tensor in the model directory's safetensors files."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files")
    specs: list[TensorShape] = []
    for f in files:
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            specs.append(TensorShape(name, _FROM_SAFETENSORS[entry["dtype"]], tuple(entry["shape"])))
    return specs


def safetensors_header(manifest: rollout_pb2.WeightManifest) -> bytes:
    """The length prefix and JSON header of a safetensors file whose data section is exactly the payload."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    for spec in manifest.tensors:
        header[spec.name] = {
            "dtype": SAFETENSORS_DTYPES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [spec.offset, spec.offset + spec.nbytes],
        }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def manifest_for(specs: list[TensorShape]) -> rollout_pb2.WeightManifest:
    """The manifest (no version, no hash) of an update carrying exactly `specs`, in their order."""
    tensors: list[rollout_pb2.TensorSpec] = []
    offset = 0
    for s in specs:
        nbytes = math.prod(s.shape) * DTYPE_SIZES[s.dtype]
        tensors.append(rollout_pb2.TensorSpec(name=s.name, dtype=s.dtype, shape=list(s.shape), offset=offset,
                                              nbytes=nbytes))
        offset += nbytes
    return rollout_pb2.WeightManifest(tensors=tensors, total_bytes=offset)


def staging_bytes(specs: list[TensorShape]) -> int:
    """Staging space one update of this model takes: its weight bytes plus the safetensors header."""
    manifest = manifest_for(specs)
    return int(manifest.total_bytes) + len(safetensors_header(manifest))


def nccl_init_info(master_address: str, master_port: int, rank_offset: int, world_size: int,
                   packed: bool) -> dict[str, Any]:
    """The worker-side init payload of vLLM's NCCL weight-transfer engine (NCCLWeightTransferInitInfo).

    Rank 0 is the learner's sender; this replica's workers take ranks rank_offset .. rank_offset+TP-1.
    """
    if not master_address or not 0 < master_port < 65536:
        raise ValueError(f"NCCL rendezvous needs an address and a port, got {master_address!r}:{master_port}")
    if not 1 <= rank_offset < world_size:
        raise ValueError(f"NCCL rank_offset {rank_offset} must be in [1, world_size={world_size})")
    return {"master_address": master_address, "master_port": master_port, "rank_offset": rank_offset,
            "world_size": world_size, "packed": packed}


def nccl_update_info(manifest: rollout_pb2.WeightManifest) -> dict[str, Any]:
    """The per-update payload (NCCLWeightTransferUpdateInfo): tensors in the learner's broadcast order."""
    return {
        "names": [s.name for s in manifest.tensors],
        "dtype_names": [s.dtype for s in manifest.tensors],
        "shapes": [[int(d) for d in s.shape] for s in manifest.tensors],
    }


def default_staging_dir() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


class WeightReceiver:
    """Applies UpdateWeights streams to a `WeightSink`; tracks the version now serving."""

    def __init__(
        self,
        sink: WeightSink,
        expected: list[TensorShape],
        version: common_pb2.WeightVersion | None = None,
        staging_dir: str | Path | None = None,
        max_bytes: int | None = None,
        path: str = "grpc",
        nccl_init_info: dict[str, Any] | None = None,
        staging_limit_bytes: int = 0,
        keep_last_staged: bool = False,
    ) -> None:
        self.sink = sink
        self.expected = expected
        self.version = common_pb2.WeightVersion()
        if version is not None:
            self.version.CopyFrom(version)
        self.last_sha256 = ""
        self.staging_root = Path(staging_dir) if staging_dir else default_staging_dir()
        self.max_bytes = max_bytes
        self.staging_limit_bytes = staging_limit_bytes
        self.keep_last_staged = keep_last_staged
        self.path = path
        self._nccl_init_info = nccl_init_info
        self._nccl_ready = False
        self.nccl_group = 0  # generation of the learner's transfer group joined (0: none, or the configured one)
        self._lock = asyncio.Lock()
        self._staged: Path | None = None
        self._publish_version()

    def staging_room(self) -> int:
        """Bytes an update may stage: the staging directory's free space, capped by the configured limit."""
        self.staging_root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.staging_root).free
        return min(free, self.staging_limit_bytes) if self.staging_limit_bytes else free

    def check_staging(self, needed: int | None = None) -> None:
        """Raise ResourceExhausted, saying what to change, when one update (default: this model's) cannot be staged."""
        if self.path != "grpc":
            return
        needed = staging_bytes(self.expected) if needed is None else needed
        room = self.staging_room()
        if room < needed:
            limit = f", limit weights.staging_limit_gib={self.staging_limit_bytes / 1024**3:.3f}" \
                if self.staging_limit_bytes else ""
            raise ResourceExhausted(
                f"weight staging {self.staging_root} has room for {room} bytes{limit}; one update of this model "
                f"needs {needed} ({needed / 1024**3:.2f} GiB: the weights plus the safetensors header). Point "
                "weights.staging_dir at a larger volume or raise its size (the chart sizes it from the model)"
            )

    def current(self) -> common_pb2.WeightVersion:
        v = common_pb2.WeightVersion()
        v.CopyFrom(self.version)
        return v

    def _publish_version(self) -> None:
        metrics.WEIGHT_VERSION_INCARNATION.set(self.version.incarnation)
        metrics.WEIGHT_VERSION_STEP.set(self.version.step)

    def _check_version(self, manifest: rollout_pb2.WeightManifest) -> bool:
        """True when newer; False for an idempotent re-push of the serving version; raises if older."""
        new, cur = version_key(manifest.version), version_key(self.version)
        if new > cur:
            return True
        if new == cur and manifest.sha256 == self.last_sha256:
            return False
        raise FailedPrecondition(
            f"weight version {format_version(manifest.version)} is not newer than the serving "
            f"version {format_version(self.version)} (ordered by incarnation, then step)"
        )

    async def receive(self, chunks: AsyncIterator[rollout_pb2.WeightChunk]) -> UpdateResult:
        """Consume one UpdateWeights stream; raise (and change nothing) on any defect."""
        started = time.perf_counter()
        try:
            result = await self._receive(chunks, started)
        except WeightStreamError as e:
            metrics.WEIGHT_UPDATES.labels(outcome="rejected").inc()
            log.warning("weight_update_rejected", reason=str(e))
            raise InvalidArgument(f"weight update rejected: {e}") from None
        except FailedPrecondition as e:
            metrics.WEIGHT_UPDATES.labels(outcome="stale").inc()
            log.warning("weight_update_rejected", reason=e.message)
            raise
        except (Unavailable, ResourceExhausted) as e:
            metrics.WEIGHT_UPDATES.labels(outcome="failed").inc()
            log.warning("weight_update_failed", reason=e.message)
            raise
        metrics.WEIGHT_UPDATES.labels(outcome="applied").inc()
        return result

    async def _receive(self, chunks: AsyncIterator[rollout_pb2.WeightChunk], started: float) -> UpdateResult:
        it = aiter(chunks)
        manifest = await self._read_manifest(it)
        if self.path == "nccl":
            async for chunk in it:
                if chunk.WhichOneof("payload") == "data":
                    raise WeightStreamError("the NCCL path takes a manifest only; tensor data comes over NCCL")
                raise WeightStreamError("a second manifest arrived in the same update")
            return await self._apply_nccl(manifest, started)
        async with self._lock:  # one update stages at a time: staging needs room for one model, not two
            if not self._check_version(manifest):
                await self._drain(manifest, it)  # an identical re-push: verify it, stage nothing
                return UpdateResult(self.current(), time.perf_counter() - started, 0.0, 0)
            header = safetensors_header(manifest)
            self.check_staging(len(header) + int(manifest.total_bytes))
            tag = f"{os.getpid()}-{manifest.version.incarnation}-{manifest.version.step}"
            staged = self.staging_root / f"torl-weights-{tag}"
            shutil.rmtree(staged, ignore_errors=True)
            staged.mkdir(parents=True)
            try:
                with open(staged / "model.safetensors", "wb") as fh:
                    fh.write(header)
                    await self._fill(WeightAssembler(self.max_bytes, out=fh), manifest, it)
                receive_seconds = time.perf_counter() - started
                try:
                    pause = await self.sink.swap_weights(str(staged))
                except Exception as e:
                    log.error("weight_swap_failed", exc_info=e)
                    raise Unavailable(f"engine failed to load the verified weights: {type(e).__name__}: {e}") from e
            except BaseException:
                shutil.rmtree(staged, ignore_errors=True)
                raise
            self._commit(manifest)
            if self._staged is not None:
                shutil.rmtree(self._staged, ignore_errors=True)
                self._staged = None
            if self.keep_last_staged:
                self._staged = staged
            else:
                shutil.rmtree(staged, ignore_errors=True)  # loaded: the engine holds the weights now
        metrics.WEIGHT_UPDATE_SECONDS.labels(phase="receive").observe(receive_seconds)
        metrics.WEIGHT_UPDATE_SECONDS.labels(phase="pause").observe(pause)
        metrics.WEIGHT_UPDATE_BYTES.inc(manifest.total_bytes)
        log.info("weights_updated", version=format_version(self.version), bytes=manifest.total_bytes,
                 receive_seconds=round(receive_seconds, 4), pause_seconds=round(pause, 4))
        return UpdateResult(self.current(), receive_seconds, pause, manifest.total_bytes)

    @property
    def last_staged(self) -> Path | None:
        """The last loaded update's staging directory (kept only with keep_last_staged, for benchmarks)."""
        return self._staged

    async def _read_manifest(self, it: AsyncIterator[rollout_pb2.WeightChunk]) -> rollout_pb2.WeightManifest:
        """The first message: a manifest that is consistent, names this model's tensors, and is not older."""
        try:
            first = await anext(it)
        except StopAsyncIteration:
            raise WeightStreamError("stream ended without a manifest") from None
        kind = first.WhichOneof("payload")
        if kind == "data":
            raise WeightStreamError("data chunk arrived before the manifest")
        if kind != "manifest":
            raise WeightStreamError("chunk with neither manifest nor data")
        validate_manifest(first.manifest, self.max_bytes)
        check_against(first.manifest, self.expected)
        self._check_version(first.manifest)  # fail fast before the bulk arrives
        return first.manifest

    @staticmethod
    async def _fill(asm: WeightAssembler, manifest: rollout_pb2.WeightManifest,
                    it: AsyncIterator[rollout_pb2.WeightChunk]) -> None:
        """Feed the rest of the stream through `asm`; raise unless it is complete and matches the sha256."""
        asm.start(manifest)
        async for chunk in it:
            kind = chunk.WhichOneof("payload")
            if kind == "data":
                asm.add(chunk.data)
            elif kind == "manifest":
                raise WeightStreamError("a second manifest arrived in the same update")
            else:
                raise WeightStreamError("chunk with neither manifest nor data")
        asm.verify()

    async def _drain(self, manifest: rollout_pb2.WeightManifest, it: AsyncIterator[rollout_pb2.WeightChunk]) -> None:
        with open(os.devnull, "wb") as sink:
            await self._fill(WeightAssembler(self.max_bytes, out=sink), manifest, it)

    async def _apply_nccl(self, manifest: rollout_pb2.WeightManifest, started: float) -> UpdateResult:
        """The tensors arrive over NCCL while generation is paused; the manifest's sha256 cannot be checked
        here (no bytes pass through gRPC) and only makes an identical re-push a no-op. Not so inside a
        learner's group: the broadcast is collective, so every member receives it, a re-push included."""
        async with self._lock:
            if not self._check_version(manifest) and manifest.nccl.generation == 0:
                return UpdateResult(self.current(), 0.0, 0.0, 0)
            await self._join_nccl_group(manifest)
            try:
                pause = await self.sink.nccl_update(nccl_update_info(manifest), format_version(manifest.version))
            except Exception as e:
                # A half-received broadcast leaves the model in an unknown state: say so, keep the old version.
                log.error("nccl_update_failed", exc_info=e)
                raise Unavailable(f"NCCL weight update failed: {type(e).__name__}: {e}") from e
            self._commit(manifest)
        receive_seconds = time.perf_counter() - started
        metrics.WEIGHT_UPDATE_SECONDS.labels(phase="receive").observe(receive_seconds)
        metrics.WEIGHT_UPDATE_SECONDS.labels(phase="pause").observe(pause)
        metrics.WEIGHT_UPDATE_BYTES.inc(manifest.total_bytes)
        log.info("weights_updated", path="nccl", version=format_version(self.version), bytes=manifest.total_bytes,
                 pause_seconds=round(pause, 4))
        return UpdateResult(self.current(), receive_seconds, pause, manifest.total_bytes)

    async def _join_nccl_group(self, manifest: rollout_pb2.WeightManifest) -> None:
        """Be in the group the update is broadcast in: join a group being formed, refuse one not joined."""
        group = manifest.nccl
        if group.generation == 0:  # no group named: the configured rendezvous, joined once
            if self._nccl_ready:
                return
            info = self._nccl_init_info
        elif group.rendezvous:
            if not self._nccl_init_info:
                raise FailedPrecondition("NCCL weight path selected but weights.nccl_* is not configured")
            try:
                info = nccl_init_info(self._nccl_init_info["master_address"], self._nccl_init_info["master_port"],
                                      int(group.rank_offset), int(group.world_size),
                                      bool(self._nccl_init_info["packed"]))
            except ValueError as e:
                raise InvalidArgument(f"NCCL group {group.generation}: {e}") from None
        elif group.generation == self.nccl_group and self._nccl_ready:
            return
        else:
            raise FailedPrecondition(
                f"this replica is not in NCCL group {group.generation} (joined: {self.nccl_group or 'none'}); "
                "the learner must form a new group"
            )
        if not info:
            raise FailedPrecondition("NCCL weight path selected but weights.nccl_* is not configured")
        self._nccl_ready = False
        try:
            await self.sink.nccl_init(info)
        except Exception as e:
            log.error("nccl_init_failed", exc_info=e)
            raise Unavailable(f"NCCL weight-transfer rendezvous failed: {type(e).__name__}: {e}") from e
        self._nccl_ready = True
        self.nccl_group = int(group.generation)
        log.info("nccl_group_joined", generation=self.nccl_group, rank_offset=info["rank_offset"],
                 world_size=info["world_size"])

    def _commit(self, manifest: rollout_pb2.WeightManifest) -> None:
        self.version.CopyFrom(manifest.version)
        self.last_sha256 = manifest.sha256
        self._publish_version()

    def close(self) -> None:
        if self._staged is not None:
            shutil.rmtree(self._staged, ignore_errors=True)
            self._staged = None
