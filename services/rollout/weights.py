"""UpdateWeights receiver: verify a whole update first, then swap it into the running engine.

The gRPC path (portable default): a manifest, then raw chunks (services/common/weight_stream.py).
Before anything touches the engine the update must name exactly the model's tensors with the
model's dtypes and shapes, arrive complete, match its sha256, and carry a version newer than the
one serving in (incarnation, step) order. Any mismatch rejects the update whole and the old
weights keep serving. A verified payload is staged as one safetensors file (the payload already
is the concatenated tensors, so staging writes a small header plus the bytes) and loaded in place
by the engine: pause with in-flight requests kept, reload, reset the prefix cache, resume.

The NCCL path (GPUs): the same manifest arrives over gRPC but carries no data; the tensors come
over vLLM's NCCL weight-transfer engine from the learner. Same version rules, same interface.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torl.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from torl.common.logging import get_logger
from torl.common.redis_layout import format_version, version_key
from torl.common.weight_stream import TensorShape, WeightAssembler, WeightStreamError, check_against
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


def write_safetensors(manifest: rollout_pb2.WeightManifest, payload: memoryview, path: Path) -> None:
    """One safetensors file whose data section is exactly the verified payload."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    for spec in manifest.tensors:
        header[spec.name] = {
            "dtype": SAFETENSORS_DTYPES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [spec.offset, spec.offset + spec.nbytes],
        }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        fh.write(payload)


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
    ) -> None:
        self.sink = sink
        self.expected = expected
        self.version = common_pb2.WeightVersion()
        if version is not None:
            self.version.CopyFrom(version)
        self.last_sha256 = ""
        self.staging_root = Path(staging_dir) if staging_dir else default_staging_dir()
        self.max_bytes = max_bytes
        self.path = path
        self._nccl_init_info = nccl_init_info
        self._nccl_ready = False
        self._lock = asyncio.Lock()
        self._staged: Path | None = None
        self._publish_version()

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
        except Unavailable:
            metrics.WEIGHT_UPDATES.labels(outcome="failed").inc()
            raise
        metrics.WEIGHT_UPDATES.labels(outcome="applied").inc()
        return result

    async def _receive(self, chunks: AsyncIterator[rollout_pb2.WeightChunk], started: float) -> UpdateResult:
        asm = WeightAssembler(self.max_bytes)
        async for chunk in chunks:
            kind = chunk.WhichOneof("payload")
            if kind == "manifest":
                asm.start(chunk.manifest)
                check_against(chunk.manifest, self.expected)
                self._check_version(chunk.manifest)  # fail fast before the bulk arrives
            elif kind == "data":
                asm.add(chunk.data)
            else:
                raise WeightStreamError("chunk with neither manifest nor data")
        manifest = asm.manifest
        if manifest is None:
            raise WeightStreamError("stream ended without a manifest")
        if self.path == "nccl":
            if asm.received_bytes:
                raise WeightStreamError("the NCCL path takes a manifest only; tensor data comes over NCCL")
            return await self._apply_nccl(manifest, started)
        payload = asm.verified_payload()
        receive_seconds = time.perf_counter() - started
        async with self._lock:
            if not self._check_version(manifest):
                return UpdateResult(self.current(), receive_seconds, 0.0, 0)
            tag = f"{os.getpid()}-{manifest.version.incarnation}-{manifest.version.step}"
            staged = self.staging_root / f"torl-weights-{tag}"
            shutil.rmtree(staged, ignore_errors=True)
            staged.mkdir(parents=True)
            try:
                await asyncio.to_thread(write_safetensors, manifest, payload, staged / "model.safetensors")
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
            self._staged = staged
        metrics.WEIGHT_UPDATE_SECONDS.labels(phase="receive").observe(receive_seconds)
        metrics.WEIGHT_UPDATE_SECONDS.labels(phase="pause").observe(pause)
        metrics.WEIGHT_UPDATE_BYTES.inc(manifest.total_bytes)
        log.info("weights_updated", version=format_version(self.version), bytes=manifest.total_bytes,
                 receive_seconds=round(receive_seconds, 4), pause_seconds=round(pause, 4))
        return UpdateResult(self.current(), receive_seconds, pause, manifest.total_bytes)

    async def _apply_nccl(self, manifest: rollout_pb2.WeightManifest, started: float) -> UpdateResult:
        """The tensors arrive over NCCL while generation is paused; the manifest's sha256 cannot be checked
        here (no bytes pass through gRPC) and only makes an identical re-push a no-op."""
        async with self._lock:
            if not self._check_version(manifest):
                return UpdateResult(self.current(), 0.0, 0.0, 0)
            if not self._nccl_ready:
                if not self._nccl_init_info:
                    raise FailedPrecondition("NCCL weight path selected but weights.nccl_* is not configured")
                try:
                    await self.sink.nccl_init(self._nccl_init_info)
                except Exception as e:
                    log.error("nccl_init_failed", exc_info=e)
                    raise Unavailable(f"NCCL weight-transfer rendezvous failed: {type(e).__name__}: {e}") from e
                self._nccl_ready = True
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

    def _commit(self, manifest: rollout_pb2.WeightManifest) -> None:
        self.version.CopyFrom(manifest.version)
        self.last_sha256 = manifest.sha256
        self._publish_version()

    def close(self) -> None:
        if self._staged is not None:
            shutil.rmtree(self._staged, ignore_errors=True)
            self._staged = None
