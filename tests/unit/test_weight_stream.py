"""The weight stream format: pack → assemble round-trips bit-exactly; every defect is rejected with its cause."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from torl.common.weight_stream import (
    TensorShape,
    WeightStreamError,
    assemble,
    check_against,
    pack_weights,
)
from torl.v1 import common_pb2, rollout_pb2

V1 = common_pb2.WeightVersion(incarnation=1, step=3)


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(7, 5, generator=g),
        "b.bias": torch.randn(3, generator=g).to(torch.bfloat16),
        "c.table": torch.arange(10, dtype=torch.int64).reshape(2, 5),
    }


def test_roundtrip_is_bit_exact_and_chunks_span_tensors() -> None:
    sd = state()
    chunks = list(pack_weights(sd, V1, chunk_bytes=16))
    manifest = chunks[0].manifest
    assert manifest.version.step == 3 and manifest.version.incarnation == 1
    assert [s.name for s in manifest.tensors] == list(sd)
    assert all(len(c.data) <= 16 for c in chunks[1:])
    assert sum(len(c.data) for c in chunks[1:]) == manifest.total_bytes == 7 * 5 * 4 + 3 * 2 + 10 * 8
    out = assemble(chunks)
    for name, t in sd.items():
        assert out[name].dtype == t.dtype
        assert torch.equal(out[name], t)


def test_missing_chunk_is_rejected() -> None:
    chunks = list(pack_weights(state(), V1, chunk_bytes=32))
    with pytest.raises(WeightStreamError, match="incomplete update"):
        assemble(chunks[:-1])


def test_corrupted_byte_fails_the_checksum() -> None:
    chunks = list(pack_weights(state(), V1, chunk_bytes=32))
    bad = bytearray(chunks[2].data)
    bad[0] ^= 0xFF
    chunks[2] = rollout_pb2.WeightChunk(data=bytes(bad))
    with pytest.raises(WeightStreamError, match="checksum mismatch"):
        assemble(chunks)


def test_extra_data_and_data_before_manifest_are_rejected() -> None:
    chunks = list(pack_weights(state(), V1))
    with pytest.raises(WeightStreamError, match="more data"):
        assemble([*chunks, rollout_pb2.WeightChunk(data=b"x")])
    with pytest.raises(WeightStreamError, match="before the manifest"):
        assemble(chunks[1:])


def test_inconsistent_manifest_is_rejected() -> None:
    chunks = list(pack_weights(state(), V1))
    m = rollout_pb2.WeightManifest()
    m.CopyFrom(chunks[0].manifest)
    m.tensors[0].shape[:] = [7, 6]
    with pytest.raises(WeightStreamError, match=r"a\.weight"):
        assemble([rollout_pb2.WeightChunk(manifest=m), *chunks[1:]])
    m2 = rollout_pb2.WeightManifest()
    m2.CopyFrom(chunks[0].manifest)
    m2.tensors[1].dtype = "complex64"
    with pytest.raises(WeightStreamError, match="unsupported dtype"):
        assemble([rollout_pb2.WeightChunk(manifest=m2), *chunks[1:]])


def test_size_limit() -> None:
    with pytest.raises(WeightStreamError, match="exceeds the limit"):
        assemble(pack_weights(state(), V1), max_bytes=10)


def test_check_against_names_dtypes_shapes() -> None:
    manifest = next(iter(pack_weights(state(), V1)))
    expected = [
        TensorShape("a.weight", "float32", (7, 5)),
        TensorShape("b.bias", "bfloat16", (3,)),
        TensorShape("c.table", "int64", (2, 5)),
    ]
    check_against(manifest.manifest, expected)
    with pytest.raises(WeightStreamError, match=r"missing tensors \['d'\]"):
        check_against(manifest.manifest, [*expected, TensorShape("d", "float32", (1,))])
    with pytest.raises(WeightStreamError, match="unknown tensors"):
        check_against(manifest.manifest, expected[:2])
    with pytest.raises(WeightStreamError, match="dtype bfloat16, model has float32"):
        check_against(manifest.manifest, [expected[0], TensorShape("b.bias", "float32", (3,)), expected[2]])
    with pytest.raises(WeightStreamError, match="shape"):
        check_against(manifest.manifest, [TensorShape("a.weight", "float32", (5, 7)), *expected[1:]])


def test_pairs_consumed_once_pack_like_the_mapping_and_chunks_replay_without_repacking() -> None:
    from torl.common.weight_stream import pack

    sd = state()
    consumed: list[str] = []

    def gathered() -> Iterator[tuple[str, torch.Tensor]]:  # what a layer-by-layer gather yields
        for name, t in sd.items():
            consumed.append(name)
            yield name, t

    packed = pack(gathered(), V1)
    assert consumed == list(sd)  # one pass
    assert packed.manifest == next(iter(pack_weights(sd, V1))).manifest
    first = [c.SerializeToString() for c in packed.chunks(16)]
    again = [c.SerializeToString() for c in packed.chunks(16)]  # a second replica, or a retry
    assert first == again and consumed == list(sd)
    out = assemble(packed.chunks(7))
    assert all(torch.equal(out[k], v) for k, v in sd.items())


def test_pack_views_cpu_contiguous_tensors_without_copying() -> None:
    from torl.common.weight_stream import pack

    sd = state()
    packed = pack(sd, V1)
    for t, kept in zip(sd.values(), packed.keep, strict=True):
        assert kept.data_ptr() == t.data_ptr()  # the push holds a view, not a copy
    strided = {"t": torch.arange(12, dtype=torch.float32).reshape(3, 4).t()}  # not contiguous: one copy
    out = assemble(pack(strided, V1).chunks())
    assert torch.equal(out["t"], strided["t"])
