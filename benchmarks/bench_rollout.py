"""Rollout benchmarks (tiny model on CPU), each a ratio against a baseline measured in the same run.

1. TIR overlap: C=1, 64 sequences that start staggered (exponential inter-arrival, mean 25 ms) with
   different prompts, so they reach their tool call at different times; each tool call takes
   40-60 ms (a sleeping tool runner, so the tool time is fixed and the executor is not measured).
   Model tokens/s vs raw vLLM generation of the same per-sequence token counts on the same arrival
   schedule: 1.0x would mean the tool waits are fully hidden behind other sequences' generation.
2. Loop overhead: the loop with C=0 vs vLLM's own generate on the same prompts and budget (both end
   at EOS), run twice in A/B/B/A order so drift from other jobs on the machine hits both sides.
3. Weight update: a ~100M-parameter state dict streamed over loopback gRPC into a running engine:
   generation pause vs the raw load_weights (reload) time of the same tensors, and the stream rate.

Run: nice .venv/bin/python benchmarks/bench_rollout.py [--only loop|weights]
(writes benchmarks/results/rollout.json; a partial run keeps the other part's last figures there).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import io
import json
import os
import pstats
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from torl.rollout.config import EngineSettings
from torl.rollout.tools import ToolResult
from torl.v1 import common_pb2

RESULTS = Path(__file__).parent / "results" / "rollout.json"
N_SEQ = 64
MAX_TOKENS = 96
MEAN_ARRIVAL_S = 0.025
T = TypeVar("T")
WEIGHT_KEYS = frozenset({"update_params", "update_bytes", "update_total_seconds", "stream_mb_per_s", "pause_seconds",
                         "raw_load_weights_seconds", "pause_vs_raw_load", "weights_measured_at"})


class SleepTool:
    """A tool whose run takes 40-60 ms (seeded), like an executor call of that latency."""

    def __init__(self, low: float, high: float, seed: int) -> None:
        self.low, self.high = low, high
        self.rng = random.Random(seed)
        self.calls = 0

    async def run(self, code: str) -> ToolResult:
        seconds = self.rng.uniform(self.low, self.high)
        self.calls += 1
        await asyncio.sleep(seconds)
        return ToolResult(common_pb2.TOOL_STATUS_OK, "42", "", seconds)


def arrivals(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(1 / MEAN_ARRIVAL_S)
    return out


async def staggered(offsets: list[float], make: Callable[[int], Awaitable[T]]) -> tuple[list[T], float]:
    """Start make(i) at offsets[i] seconds; all results and the wall time from the first start."""

    async def one(i: int) -> T:
        await asyncio.sleep(offsets[i])
        return await make(i)

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(len(offsets))))
    return list(results), time.perf_counter() - t0


async def raw_one(engine: Any, prompt: list[int], max_tokens: int, tag: str, force_length: bool) -> int:
    """vLLM's own generate, no loop: one request, its token count."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    n = max(1, max_tokens)
    # ids + logprobs and no text, the least vLLM work for what the loop needs (the loop, too, only
    # detokenizes rounds that have a stop string)
    sp = SamplingParams(temperature=1.0, max_tokens=n, logprobs=0, min_tokens=n if force_length else 0,
                        output_kind=RequestOutputKind.FINAL_ONLY, detokenize=False)
    final = None
    async for item in engine.llm.generate(TokensPrompt(prompt_token_ids=prompt), sp, tag):
        final = item
    assert final is not None
    return len(final.outputs[0].token_ids)


async def raw_same_counts(engine: Any, prompts: list[list[int]], counts: list[int], tag: str, i: int) -> int:
    return await raw_one(engine, prompts[i], counts[i], f"{tag}-{i}", True)


def ratio_stats(name: str, ours: list[tuple[int, float]], base: list[tuple[int, float]]) -> dict[str, float]:
    """Pooled tokens/s of each side, their ratio, and min/max of the per-pair ratios."""
    rate = [a / s for a, s in ours]
    base_rate = [a / s for a, s in base]
    pairs = [r / b for r, b in zip(rate, base_rate, strict=True)]
    ours_rate = sum(a for a, _ in ours) / sum(s for _, s in ours)
    base_pooled = sum(a for a, _ in base) / sum(s for _, s in base)
    return {
        f"{name}_tokens_per_s": ours_rate,
        f"{name}_baseline_tokens_per_s": base_pooled,
        f"{name}_ratio": ours_rate / base_pooled,
        f"{name}_pair_ratio_min": min(pairs),
        f"{name}_pair_ratio_max": max(pairs),
        f"{name}_runs_tokens_per_s": [round(r, 1) for r in rate],  # type: ignore[dict-item]
        f"{name}_baseline_runs_tokens_per_s": [round(r, 1) for r in base_rate],  # type: ignore[dict-item]
        f"{name}_runs_seconds": [round(sec, 2) for _, sec in ours],  # type: ignore[dict-item]
    }


async def bench_loop(engine: Any, profile: bool) -> dict[str, float]:
    from torl.rollout.config import TIR_BASE_0309
    from torl.rollout.loop import LoopConfig, run_trajectory

    version = common_pb2.WeightVersion
    prompts = [engine.encode(TIR_BASE_0309.format(problem=f"What is {10 + 7 * i}*{20 + i}+{30 + 3 * i}?"))
               for i in range(N_SEQ)]
    out: dict[str, float] = {}
    await asyncio.gather(*(raw_one(engine, p, 8, f"warm-{i}", True) for i, p in enumerate(prompts[:8])))
    # Each side runs three times in A/B/B/A/A/B order, so drift from other jobs on the machine hits
    # both; reported: the pooled ratio (all tokens / all seconds per side) and the spread of the
    # three adjacent-pair ratios.
    order = ("a", "b", "b", "a", "a", "b")

    # 1. TIR overlap: staggered starts, 40-60 ms tools; raw baseline on the same schedule and token counts.
    offsets = arrivals(N_SEQ, 7)
    cfg = LoopConfig(prompt_template=TIR_BASE_0309, max_tool_calls=1, max_response_tokens=MAX_TOKENS)
    tool = SleepTool(0.04, 0.06, 3)
    model_counts: list[int] = []
    tir: list[tuple[int, float]] = []
    raw: list[tuple[int, float]] = []
    calls = responses = 0
    for rep, side in enumerate(order):
        if side == "a":
            trajs, secs = await staggered(offsets, lambda i: run_trajectory(engine, tool, prompts[i], cfg, i, version))
            counts = [sum(t.loss_mask) for t in trajs]
            model_counts = model_counts or counts
            calls += sum(len(t.tool_calls) for t in trajs)
            responses += len(trajs)
            tir.append((sum(counts), secs))
        else:
            got, secs = await staggered(offsets, functools.partial(raw_same_counts, engine, prompts, model_counts,
                                                                   f"tir-raw-{rep}"))
            raw.append((sum(got), secs))
    out.update(ratio_stats("tir", tir, raw))
    out["tir_tool_calls_per_response"] = calls / responses
    out["tir_arrival_window_s"] = offsets[-1]

    # 2. C=0 loop vs vLLM generate, same prompts and budget, both ending at EOS.
    cfg0 = LoopConfig(prompt_template=TIR_BASE_0309, max_tool_calls=0, max_response_tokens=MAX_TOKENS)
    loop_runs: list[tuple[int, float]] = []
    vllm_runs: list[tuple[int, float]] = []
    profiler = cProfile.Profile() if profile else None
    for rep, side in enumerate(order):
        t0 = time.perf_counter()
        if side == "a":
            if profiler is not None:
                profiler.enable()
            trajs0 = await asyncio.gather(*(run_trajectory(engine, tool, p, cfg0, i, version)
                                            for i, p in enumerate(prompts)))
            if profiler is not None:
                profiler.disable()
            loop_runs.append((sum(len(t.token_ids) for t in trajs0), time.perf_counter() - t0))
        else:
            got0 = await asyncio.gather(*(raw_one(engine, p, MAX_TOKENS, f"c0-raw-{rep}-{i}", False)
                                          for i, p in enumerate(prompts)))
            vllm_runs.append((sum(got0), time.perf_counter() - t0))
    out.update(ratio_stats("c0", loop_runs, vllm_runs))
    if profiler is not None:
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(25)
        print(buf.getvalue())
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
    receiver = WeightReceiver(engine, read_checkpoint_specs(model_dir), max_bytes=8 << 30, keep_last_staged=True)

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
    staged = receiver.last_staged  # the last verified update, already on disk in checkpoint format
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", choices=("loop", "weights"), default=None, help="Run one part only.")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the C=0 loop (main thread: loop, vLLM output processing); writes no results.")
    args = parser.parse_args()
    from torl.rollout.engine import VllmEngine
    from torl.rollout.tiny_model import build_tiny

    results: dict[str, Any] = {}
    if args.only == "loop" and RESULTS.exists():  # keep the last weight figures
        old = json.loads(RESULTS.read_text())
        results = {k: v for k, v in old.items() if k in WEIGHT_KEYS}
    elif args.only == "weights" and RESULTS.exists():
        old = json.loads(RESULTS.read_text())
        results = {k: v for k, v in old.items() if k not in WEIGHT_KEYS}
    if args.only != "weights":
        model_dir = build_tiny(None, 0)
        engine = VllmEngine.start(EngineSettings(), str(model_dir), 4096)
        results.update(await bench_loop(engine, args.profile))
        results["loop_measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        engine.shutdown()
    if args.only != "loop":
        with tempfile.TemporaryDirectory() as tmp:
            results.update(await bench_weights(Path(tmp)))
        results["weights_measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results.update({"n_sequences": N_SEQ, "cpu_count": os.cpu_count() or 0, "load_avg_1m": os.getloadavg()[0]})
    if args.profile:  # the profiler slows the loop side: these ratios are not comparable, keep the file
        print("--profile: results not written")
    else:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    if "tir_ratio" in results:
        for key, what, target in (("tir", "TIR overlap (staggered, 40-60 ms tools) vs raw vLLM", ">= 0.8"),
                                  ("c0", "C=0 loop vs vLLM generate", ">= 0.9")):
            print(f"{what}: {results[key + '_ratio']:.2f}x (pairs {results[key + '_pair_ratio_min']:.2f}-"
                  f"{results[key + '_pair_ratio_max']:.2f}; target {target})")
    if "pause_vs_raw_load" in results:
        print(f"weight update pause vs raw load_weights: {results['pause_vs_raw_load']:.2f}x (target <= 2)")
        print(f"stream rate: {results['stream_mb_per_s']:.0f} MB/s (target >= 300)")
    os._exit(0)  # vLLM teardown at interpreter exit is slow; results are written


if __name__ == "__main__":
    asyncio.run(main())
