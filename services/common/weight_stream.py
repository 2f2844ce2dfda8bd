"""Weight streaming format shared by the learner (packing) and rollout (verifying).

A weight update travels as a client stream of `WeightChunk` messages: first a `WeightManifest`
(version, one TensorSpec per tensor with its byte offset in the concatenated payload, the total
size and the payload's sha256), then the raw payload in chunks of a few MiB (a tensor may span
chunks). The receiver applies nothing until the whole payload arrived and checks out; any
mismatch rejects the update whole.

The sender packs once per push (`pack`: one pass that views each tensor's bytes and hashes them)
and replays `PackedWeights.chunks()` for every replica and retry; the receiver assembles into
memory or writes through to a file (`WeightAssembler(out=...)`).

This module is pure: no transport, no engine. torch is imported lazily (the rollout gRPC process
and the learner have it; importing this module alone does not need it).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from torl.v1 import common_pb2, rollout_pb2

if TYPE_CHECKING:
    import torch

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024

# torch dtype name → bytes per element; the dtypes a weight update may carry.
DTYPE_SIZES: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float64": 8,
    "int64": 8,
    "int32": 4,
    "int8": 1,
    "uint8": 1,
}


class WeightStreamError(ValueError):
    """The update is malformed, incomplete or does not match; `str()` says what exactly."""


@dataclass(frozen=True)
class TensorShape:
    """Name, dtype and shape a receiver expects for one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _as_bytes(t: torch.Tensor) -> tuple[torch.Tensor, memoryview]:
    """The tensor as flat CPU bytes: a view when it already is CPU-contiguous, else one copy."""
    import torch

    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return flat, memoryview(b"")
    return flat, flat.view(torch.uint8).numpy().data.cast("B")


WeightsIn = Mapping[str, "torch.Tensor"] | Iterable[tuple[str, "torch.Tensor"]]
"""A push's tensors: a name → tensor mapping, or (name, tensor) pairs consumed once (e.g. gathered layer by layer)."""


def _pairs(tensors: WeightsIn) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(tensors, Mapping):
        yield from tensors.items()
    else:
        yield from tensors


@dataclass(frozen=True)
class PackedWeights:
    """One push, packed and hashed once: the manifest plus each tensor's raw bytes (views, no copy).

    Every replica's stream, and every retry, reads the same views through `chunks()`; the only
    per-stream copies are the chunk messages in flight. `keep` holds the CPU tensors the views
    point into, so a generator's tensors live exactly as long as the push.
    """

    manifest: rollout_pb2.WeightManifest
    views: tuple[memoryview, ...]
    keep: tuple[Any, ...]

    @property
    def total_bytes(self) -> int:
        return int(self.manifest.total_bytes)

    def chunks(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[rollout_pb2.WeightChunk]:
        """The messages of one UpdateWeights call: the manifest, then data chunks of `chunk_bytes`."""
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be positive")
        yield rollout_pb2.WeightChunk(manifest=self.manifest)
        buf = bytearray()
        for view in self.views:
            pos = 0
            while pos < len(view):
                if not buf and len(view) - pos >= chunk_bytes:  # a whole chunk inside one tensor: one copy
                    yield rollout_pb2.WeightChunk(data=bytes(view[pos : pos + chunk_bytes]))
                    pos += chunk_bytes
                    continue
                take = min(chunk_bytes - len(buf), len(view) - pos)
                buf += view[pos : pos + take]
                pos += take
                if len(buf) == chunk_bytes:
                    yield rollout_pb2.WeightChunk(data=bytes(buf))
                    buf.clear()
        if buf:
            yield rollout_pb2.WeightChunk(data=bytes(buf))


def pack(tensors: WeightsIn, version: common_pb2.WeightVersion) -> PackedWeights:
    """Consume `tensors` once: CPU-contiguous bytes of each (no copy when already so), one sha256 pass."""
    specs: list[rollout_pb2.TensorSpec] = []
    views: list[memoryview] = []
    keep: list[Any] = []
    digest = hashlib.sha256()
    offset = 0
    for name, t in _pairs(tensors):
        dt = dtype_name(t)
        if dt not in DTYPE_SIZES:
            raise WeightStreamError(f"tensor {name}: dtype {dt} cannot be streamed")
        flat, view = _as_bytes(t)
        digest.update(view)
        specs.append(
            rollout_pb2.TensorSpec(name=name, dtype=dt, shape=list(t.shape), offset=offset, nbytes=len(view))
        )
        views.append(view)
        keep.append(flat)
        offset += len(view)
    manifest = rollout_pb2.WeightManifest(
        version=common_pb2.WeightVersion(incarnation=version.incarnation, step=version.step),
        tensors=specs,
        total_bytes=offset,
        sha256=digest.hexdigest(),
    )
    return PackedWeights(manifest, tuple(views), tuple(keep))


def build_manifest(
    tensors: WeightsIn, version: common_pb2.WeightVersion
) -> tuple[rollout_pb2.WeightManifest, list[memoryview]]:
    """The manifest of `tensors` (in their order) and each tensor's raw bytes."""
    packed = pack(tensors, version)
    return packed.manifest, list(packed.views)


def pack_weights(
    tensors: WeightsIn,
    version: common_pb2.WeightVersion,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[rollout_pb2.WeightChunk]:
    """The messages of one UpdateWeights call (packs and hashes on each call: use `pack` to fan out)."""
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    return pack(tensors, version).chunks(chunk_bytes)


def payload_bytes(specs: Iterable[TensorShape]) -> int:
    """Bytes of an update carrying exactly these tensors."""
    return sum(math.prod(s.shape) * DTYPE_SIZES[s.dtype] for s in specs)


def validate_manifest(manifest: rollout_pb2.WeightManifest, max_bytes: int | None = None) -> None:
    """Internal consistency: known dtypes, sizes match shapes, offsets tile the payload exactly."""
    if not manifest.tensors:
        raise WeightStreamError("manifest lists no tensors")
    if len(manifest.sha256) != 64:
        raise WeightStreamError("manifest sha256 must be 64 hex characters")
    if max_bytes is not None and manifest.total_bytes > max_bytes:
        raise WeightStreamError(f"update of {manifest.total_bytes} bytes exceeds the limit of {max_bytes}")
    seen: set[str] = set()
    offset = 0
    for spec in manifest.tensors:
        if spec.name in seen:
            raise WeightStreamError(f"tensor {spec.name} listed twice")
        seen.add(spec.name)
        if spec.dtype not in DTYPE_SIZES:
            raise WeightStreamError(f"tensor {spec.name}: unsupported dtype {spec.dtype!r}")
        expected = math.prod(spec.shape) * DTYPE_SIZES[spec.dtype]
        if spec.nbytes != expected:
            raise WeightStreamError(
                f"tensor {spec.name}: {spec.nbytes} bytes but shape {list(spec.shape)} x {spec.dtype} needs {expected}"
            )
        if spec.offset != offset:
            raise WeightStreamError(f"tensor {spec.name}: offset {spec.offset}, expected {offset}")
        offset += spec.nbytes
    if offset != manifest.total_bytes:
        raise WeightStreamError(f"tensors cover {offset} bytes but total_bytes is {manifest.total_bytes}")


def check_against(manifest: rollout_pb2.WeightManifest, expected: Iterable[TensorShape]) -> None:
    """The manifest carries exactly the expected tensors, each with the expected dtype and shape."""
    want = {e.name: e for e in expected}
    got = {s.name: s for s in manifest.tensors}
    missing = sorted(set(want) - set(got))
    unknown = sorted(set(got) - set(want))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unknown:
            parts.append(f"unknown tensors {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        raise WeightStreamError("; ".join(parts))
    for name, spec in got.items():
        e = want[name]
        if spec.dtype != e.dtype:
            raise WeightStreamError(f"tensor {name}: dtype {spec.dtype}, model has {e.dtype}")
        if tuple(spec.shape) != e.shape:
            raise WeightStreamError(f"tensor {name}: shape {list(spec.shape)}, model has {list(e.shape)}")


class WeightAssembler:
    """Receives one update: `start(manifest)`, `add(data)` per chunk, then `finish()` → tensors.

    With `out` (a binary file) the payload is written through as it arrives and never held in
    memory; then only `verified_payload_size()` applies, not `finish()`.
    """

    def __init__(self, max_bytes: int | None = None, out: BinaryIO | None = None) -> None:
        self.max_bytes = max_bytes
        self.out = out
        self.manifest: rollout_pb2.WeightManifest | None = None
        self._buf: bytearray = bytearray()
        self._filled = 0
        self._digest = hashlib.sha256()
        self.chunks = 0

    def start(self, manifest: rollout_pb2.WeightManifest) -> None:
        if self.manifest is not None:
            raise WeightStreamError("a second manifest arrived in the same update")
        validate_manifest(manifest, self.max_bytes)
        self.manifest = manifest
        if self.out is None:
            self._buf = bytearray(manifest.total_bytes)

    def add(self, data: bytes) -> None:
        if self.manifest is None:
            raise WeightStreamError("data chunk arrived before the manifest")
        end = self._filled + len(data)
        if end > self.manifest.total_bytes:
            raise WeightStreamError(f"more data than the manifest's total_bytes ({self.manifest.total_bytes})")
        if self.out is not None:
            self.out.write(data)
        else:
            self._buf[self._filled : end] = data
        self._digest.update(data)
        self._filled = end
        self.chunks += 1

    @property
    def received_bytes(self) -> int:
        return self._filled

    def verified_payload(self) -> memoryview:
        """Verify completeness and checksum; the raw payload (tensors in manifest order)."""
        self.verify()
        if self.out is not None:
            raise WeightStreamError("the payload was written to a file, not kept in memory")
        return memoryview(self._buf)

    def verify(self) -> None:
        """Raise unless the whole payload arrived and matches the manifest's sha256."""
        if self.manifest is None:
            raise WeightStreamError("stream ended without a manifest")
        if self._filled != self.manifest.total_bytes:
            raise WeightStreamError(
                f"incomplete update: received {self._filled} of {self.manifest.total_bytes} bytes"
            )
        digest = self._digest.hexdigest()
        if digest != self.manifest.sha256:
            raise WeightStreamError(f"checksum mismatch: payload sha256 {digest}, manifest says {self.manifest.sha256}")

    def finish(self) -> dict[str, Any]:
        """Verify, then the tensors (views into one buffer) by name."""
        import torch

        self.verified_payload()
        assert self.manifest is not None
        raw = torch.frombuffer(self._buf, dtype=torch.uint8) if self._buf else torch.empty(0, dtype=torch.uint8)
        out: dict[str, Any] = {}
        for spec in self.manifest.tensors:
            dtype = getattr(torch, spec.dtype)
            piece = raw[spec.offset : spec.offset + spec.nbytes]
            if spec.offset % DTYPE_SIZES[spec.dtype]:
                piece = piece.clone()  # an unaligned tensor cannot be viewed in place
            out[spec.name] = piece.view(dtype).reshape(tuple(spec.shape))
        return out


def assemble(chunks: Iterable[rollout_pb2.WeightChunk], max_bytes: int | None = None) -> dict[str, Any]:
    """Convenience for tests and tools: the whole receive path on an iterable of chunks."""
    asm = WeightAssembler(max_bytes)
    for ch in chunks:
        kind = ch.WhichOneof("payload")
        if kind == "manifest":
            asm.start(ch.manifest)
        elif kind == "data":
            asm.add(ch.data)
        else:
            raise WeightStreamError("chunk with neither manifest nor data")
    return asm.finish()
