"""Rollout benchmarks (tiny model on CPU), each a ratio against a baseline measured in the same run.

1. TIR throughput: C=1, one tool call per response taking ~50 ms (a sleeping tool runner, so the
   tool time is fixed), model tokens/s vs raw vLLM generation of the same token count.
2. Loop overhead: the loop with C=0 vs vLLM's own generate on the same prompts and budget.
3. Weight update: a ~100M-parameter state dict streamed over loopback gRPC into a running engine:
   generation pause vs the raw load_weights (reload) time of the same tensors, and the stream rate.

Run: nice .venv/bin/python benchmarks/bench_rollout.py   (writes benchmarks/results/rollout.json)
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from torl.rollout.config import EngineSettings
from torl.rollout.tools import ToolResult
from torl.v1 import common_pb2

RESULTS = Path(__file__).parent / "results" / "rollout.json"
N_SEQ = 64
MAX_TOKENS = 96


class SleepTool:
    """A tool whose run takes `seconds`, like an executor call of that latency."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def run(self, code: str) -> ToolResult:
        await asyncio.sleep(self.seconds)
        return ToolResult(common_pb2.TOOL_STATUS_OK, "42", "", self.seconds)


async def raw_generate(engine: object, prompts: list[list[int]], max_tokens: list[int], seed: int,
                       min_tokens: bool) -> tuple[int, float]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    llm = engine.llm  # type: ignore[attr-defined]

    async def one(i: int) -> int:
        n = max(1, max_tokens[i])
        sp = SamplingParams(temperature=1.0, max_tokens=n, logprobs=0, min_tokens=n if min_tokens else 0,
                            output_kind=RequestOutputKind.FINAL_ONLY)
        final = None
        async for item in llm.generate(TokensPrompt(prompt_token_ids=prompts[i]), sp, f"raw-{seed}-{i}"):
            final = item
        assert final is not None
        return len(final.outputs[0].token_ids)

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(len(prompts))))
    return sum(counts), time.perf_counter() - t0


async def bench_loop(engine: object) -> dict[str, float]:
    from torl.rollout.config import TIR_BASE_0309
    from torl.rollout.loop import LoopConfig, run_trajectory

    version = common_pb2.WeightVersion
    prompts = [engine.encode(TIR_BASE_0309.format(problem=f"What is {10 + i}*{20 + i}+{30 + i}?"))  # type: ignore[attr-defined]
               for i in range(N_SEQ)]
    out: dict[str, float] = {}
    await raw_generate(engine, prompts[:4], [8] * 4, 0, True)  # warm-up
    # 1. TIR throughput with ~50 ms tools.
    cfg = LoopConfig(prompt_template=TIR_BASE_0309, max_tool_calls=1, max_response_tokens=MAX_TOKENS, seed=11)
    tool = SleepTool(0.05)
    t0 = time.perf_counter()
    trajs = await asyncio.gather(*(run_trajectory(engine, tool, p, cfg, i, version)  # type: ignore[arg-type]
                                   for i, p in enumerate(prompts)))
    tir_s = time.perf_counter() - t0
    model_counts = [sum(t.loss_mask) for t in trajs]
    calls = sum(len(t.tool_calls) for t in trajs)
    raw_tokens, raw_s = await raw_generate(engine, prompts, model_counts, 500, True)
    out["tir_tokens_per_s"] = sum(model_counts) / tir_s
    out["raw_tokens_per_s"] = raw_tokens / raw_s
    out["tir_vs_raw"] = out["tir_tokens_per_s"] / out["raw_tokens_per_s"]
    out["tool_calls_per_response"] = calls / len(trajs)
    # 2. Loop overhead with C=0 vs vLLM generate of the same prompts and token counts.
    cfg0 = LoopConfig(prompt_template=TIR_BASE_0309, max_tool_calls=0, max_response_tokens=MAX_TOKENS)
    t0 = time.perf_counter()
    trajs0 = await asyncio.gather(*(run_trajectory(engine, tool, p, cfg0, i, version)  # type: ignore[arg-type]
                                    for i, p in enumerate(prompts)))
    loop_s = time.perf_counter() - t0
    loop_tokens = sum(len(t.token_ids) for t in trajs0)
    # vLLM's own generate, same prompts and budget, ending at EOS like the loop does.
    raw0_tokens, raw0_s = await raw_generate(engine, prompts, [MAX_TOKENS] * len(prompts), 900, False)
    out["c0_loop_tokens_per_s"] = loop_tokens / loop_s
    out["c0_vllm_tokens_per_s"] = raw0_tokens / raw0_s
    out["c0_loop_vs_vllm"] = out["c0_loop_tokens_per_s"] / out["c0_vllm_tokens_per_s"]
    return out


async def bench_weights(tmp: Path) -> dict[str, float]:
    import grpc
    from safetensors.torch import load_file

    from torl.common.grpc_client import aio_channel
    from torl.common.weight_stream import pack_weights
    from torl.rollout.engine import VllmEngine
    from torl.rollout.tiny_model import TinyModelSpec, build_tiny
    from torl.rollout.weights import WeightReceiver, read_checkpoint_specs
    from torl.v1 import rollout_pb2, rollout_pb2_grpc

    spec = TinyModelSpec(seed=0, hidden_size=768, num_layers=11, num_heads=12, intermediate_size=3072,
                         train_steps=0, corpus_size=300)
    model_dir = build_tiny(tmp / "model-100m", 0, spec)
    engine = VllmEngine.start(EngineSettings(), str(model_dir), 1024)
    sd = {k: v * 0.5 for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    params = sum(v.numel() for v in sd.values())
    receiver = WeightReceiver(engine, read_checkpoint_specs(model_dir), max_bytes=8 << 30)

    class Servicer(rollout_pb2_grpc.RolloutServicer):
        async def UpdateWeights(self, it, context):  # type: ignore[no-untyped-def]
            return (await receiver.receive(it)).to_proto()

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    rollout_pb2_grpc.add_RolloutServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio_channel(f"127.0.0.1:{port}")
    stub = rollout_pb2_grpc.RolloutStub(channel)
    results: list[tuple[float, float, float]] = []
    for step in (1, 2, 3):
        msgs = pack_weights(sd, common_pb2.WeightVersion(incarnation=1, step=step))
        t0 = time.perf_counter()
        r: rollout_pb2.UpdateWeightsResponse = await stub.UpdateWeights(iter(msgs), timeout=600)
        results.append((time.perf_counter() - t0, r.receive_seconds, r.pause_seconds))
    raw = []
    staged = receiver._staged  # the last verified update, already on disk in checkpoint format
    assert staged is not None
    for _ in range(3):
        t0 = time.perf_counter()
        await engine.reload_weights(str(staged))
        raw.append(time.perf_counter() - t0)
    await channel.close()
    await server.stop(0)
    receiver.close()
    engine.shutdown()
    nbytes = sum(v.numel() * v.element_size() for v in sd.values())
    best = min(results, key=lambda x: x[0])
    return {
        "update_params": float(params),
        "update_bytes": float(nbytes),
        "update_total_seconds": best[0],
        "stream_mb_per_s": nbytes / 1e6 / best[1],
        "pause_seconds": best[2],
        "raw_load_weights_seconds": min(raw),
        "pause_vs_raw_load": best[2] / min(raw),
    }


async def main() -> None:
    from torl.rollout.engine import VllmEngine
    from torl.rollout.tiny_model import build_tiny

    model_dir = build_tiny(None, 0)
    engine = VllmEngine.start(EngineSettings(), str(model_dir), 4096)
    loop_results = await bench_loop(engine)
    engine.shutdown()
    with tempfile.TemporaryDirectory() as tmp:
        weight_results = await bench_weights(Path(tmp))
    results = {**loop_results, **weight_results, "n_sequences": N_SEQ, "cpu_count": os.cpu_count() or 0}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"TIR throughput vs raw vLLM: {results['tir_vs_raw']:.2f}x (target >= 0.8)")
    print(f"C=0 loop vs vLLM generate: {results['c0_loop_vs_vllm']:.2f}x (target >= 0.9)")
    print(f"weight update pause vs raw load_weights: {results['pause_vs_raw_load']:.2f}x (target <= 2)")
    print(f"stream rate: {results['stream_mb_per_s']:.0f} MB/s (target >= 300)")
    sys_exit = os._exit  # vLLM teardown at interpreter exit is slow; results are written
    sys_exit(0)


if __name__ == "__main__":
    asyncio.run(main())
