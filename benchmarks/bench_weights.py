"""Weight push at real model size: a Qwen2.5-1.5B-shaped bf16 state (random, ~3.1 GB) from the
learner's WeightSender to 1 and then 2 rollout receivers on loopback gRPC, each a separate process
running the real WeightReceiver (manifest, sha256, version checks, staging into a safetensors file).

Per run it reports the learner-side push time and bytes/s, each replica's pause (the receiver's
swap: the only time generation would stop) against a raw reload of the same staged file in the
same process right after, and the learner's peak extra memory during the push (RSS sampled every
10 ms, minus the RSS before it) as a multiple of the state size. Goals: pause <= 1.5x raw reload,
2 replicas <= 1.3x the time of 1, peak extra learner memory <= 1.2x the state.

The engine in each receiver is a stand-in for vLLM (`--engine tensors`, the default): it holds the
model-shaped parameters in memory and its reload copies every tensor of the staged safetensors file
into them, which is what vLLM's `reload_weights` does on CPU (safetensors iterator → weight_loader
copy); a vLLM engine at 1.5B on this shared 2-core machine does not fit next to two replicas. With
`--engine vllm` each receiver builds the 1.5B-shaped Qwen2 model directory locally and runs a real
vLLM engine (pause = pause_generation + reload + prefix-cache reset + resume); use it on a machine
with the memory for it.

Run: nice .venv/bin/python benchmarks/bench_weights.py [--gib 0] [--pairs] [--engine tensors|vllm]
(writes benchmarks/results/weights.json)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "weights.json"

# Qwen2.5-1.5B: hidden 1536, 28 layers, 12 heads / 2 KV heads of 128, MLP 8960, vocab 151936, tied embeddings.
QWEN2_1_5B = {"hidden": 1536, "layers": 28, "kv": 256, "mlp": 8960, "vocab": 151936}


def qwen2_shapes(hidden: int, layers: int, kv: int, mlp: int, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a Qwen2 checkpoint (HF names, tied embeddings: no lm_head)."""
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (hidden,)),
            (p + "self_attn.q_proj.weight", (hidden, hidden)), (p + "self_attn.q_proj.bias", (hidden,)),
            (p + "self_attn.k_proj.weight", (kv, hidden)), (p + "self_attn.k_proj.bias", (kv,)),
            (p + "self_attn.v_proj.weight", (kv, hidden)), (p + "self_attn.v_proj.bias", (kv,)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "post_attention_layernorm.weight", (hidden,)),
            (p + "mlp.gate_proj.weight", (mlp, hidden)), (p + "mlp.up_proj.weight", (mlp, hidden)),
            (p + "mlp.down_proj.weight", (hidden, mlp)),
        ]
    out.append(("model.norm.weight", (hidden,)))
    return out


def scaled_shapes(gib: float) -> list[tuple[str, tuple[int, ...]]]:
    """The 1.5B layout with as many layers as make about `gib` GiB of bf16 (all 28 at ~2.9 GiB)."""
    import math

    full = qwen2_shapes(**QWEN2_1_5B)
    if gib <= 0:
        return full
    per_layer = sum(math.prod(s) for n, s in full if ".layers.0." in n) * 2
    fixed = sum(math.prod(s) for n, s in full if ".layers." not in n) * 2
    layers = max(1, min(QWEN2_1_5B["layers"], round((gib * 2**30 - fixed) / per_layer)))
    return qwen2_shapes(**{**QWEN2_1_5B, "layers": layers})


def random_state(shapes: list[tuple[str, tuple[int, ...]]]) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    return {n: (torch.randn(*s, generator=g) * 0.02).to(torch.bfloat16) for n, s in shapes}


# -- receiver process --------------------------------------------------------------------------------


class TensorEngine:
    """Stand-in for vLLM's CPU reload: model-shaped parameters, reload = copy every staged tensor in."""

    def __init__(self, shapes: list[tuple[str, tuple[int, ...]]]) -> None:
        import torch

        self.params = {n: torch.zeros(*s, dtype=torch.bfloat16) for n, s in shapes}

    async def reload_weights(self, weights_dir: str) -> None:
        await asyncio.to_thread(self._load, weights_dir)

    def _load(self, weights_dir: str) -> None:
        from safetensors import safe_open

        with safe_open(str(Path(weights_dir) / "model.safetensors"), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has keys(), not __iter__
                self.params[name].copy_(f.get_tensor(name))

    async def swap_weights(self, weights_dir: str) -> float:
        t0 = time.perf_counter()
        await self.reload_weights(weights_dir)
        return time.perf_counter() - t0

    async def nccl_init(self, init_info: dict[str, Any]) -> None:
        raise NotImplementedError

    async def nccl_update(self, update_info: dict[str, Any], version: str) -> float:
        raise NotImplementedError

    def shutdown(self) -> None:
        pass


def build_qwen2_dir(shapes: list[tuple[str, tuple[int, ...]]], directory: Path) -> Path:
    """An HF Qwen2 model directory with these shapes and random weights (for --engine vllm)."""
    from safetensors.torch import save_file

    from torl.rollout.tiny_model import build_tiny  # its tokenizer files are reused

    tiny = build_tiny(None, 0)
    directory.mkdir(parents=True, exist_ok=True)
    layers = sum(1 for n, _ in shapes if n.endswith("input_layernorm.weight"))
    hidden, vocab = shapes[0][1][1], shapes[0][1][0]
    cfg = json.loads((tiny / "config.json").read_text())
    cfg.update({"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 12,
                "num_key_value_heads": 2, "intermediate_size": QWEN2_1_5B["mlp"], "vocab_size": vocab,
                "tie_word_embeddings": True, "dtype": "bfloat16", "max_position_embeddings": 4096,
                "layer_types": ["full_attention"] * layers, "max_window_layers": layers})
    (directory / "config.json").write_text(json.dumps(cfg))
    for f in tiny.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
            (directory / f.name).write_bytes(f.read_bytes())
    save_file(random_state(shapes), str(directory / "model.safetensors"))
    return directory


def serve_receiver(args: argparse.Namespace) -> int:
    import grpc

    from torl.common.grpc_server import ErrorMappingInterceptor
    from torl.common.weight_stream import TensorShape
    from torl.rollout.weights import WeightReceiver
    from torl.v1 import rollout_pb2, rollout_pb2_grpc

    shapes = scaled_shapes(args.gib)
    expected = [TensorShape(n, "bfloat16", s) for n, s in shapes]
    engine: Any
    if args.engine == "vllm":
        from torl.rollout.config import EngineSettings
        from torl.rollout.engine import VllmEngine

        model_dir = build_qwen2_dir(shapes, Path(args.staging) / "model")
        engine = VllmEngine.start(EngineSettings(dtype=args.engine_dtype), str(model_dir), 512)
    else:
        engine = TensorEngine(shapes)
    receiver = WeightReceiver(engine, expected, staging_dir=args.staging, keep_last_staged=True)
    rows: list[dict[str, float]] = []

    class Servicer(rollout_pb2_grpc.RolloutServicer):
        async def UpdateWeights(self, it: AsyncIterator[rollout_pb2.WeightChunk],
                                context: grpc.aio.ServicerContext) -> rollout_pb2.UpdateWeightsResponse:
            result = await receiver.receive(it)
            staged = receiver.last_staged
            assert staged is not None
            t0 = time.perf_counter()
            await engine.reload_weights(str(staged))  # raw reload of the same tensors, nothing around it
            raw = time.perf_counter() - t0
            rows.append({"receive_seconds": result.receive_seconds, "pause_seconds": result.pause_seconds,
                         "raw_reload_seconds": raw})
            Path(args.report).write_text(json.dumps(rows))
            return result.to_proto()

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)],
                                 interceptors=[ErrorMappingInterceptor()])
        rollout_pb2_grpc.add_RolloutServicer_to_server(Servicer(), server)
        server.add_insecure_port(f"127.0.0.1:{args.port}")
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        Path(args.report).write_text("[]")  # ready
        await stop.wait()
        await server.stop(grace=None)

    asyncio.run(main())
    receiver.close()
    engine.shutdown()
    return 0


# -- learner side ------------------------------------------------------------------------------------


class RssPeak:
    """Peak resident memory of this process while running, sampled every 10 ms."""

    def __init__(self) -> None:
        self.base = self.rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.rss())

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss())
        return self.peak - self.base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_receivers(n: int, args: argparse.Namespace, tmp: Path) -> list[tuple[subprocess.Popen[bytes], str, Path]]:
    procs = []
    tmp.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        port, report = free_port(), tmp / f"receiver-{i}.json"
        staging = tmp / f"staging-{i}"
        cmd = [sys.executable, __file__, "receiver", "--port", str(port), "--gib", str(args.gib),
               "--staging", str(staging), "--report", str(report), "--engine", args.engine,
               "--engine-dtype", args.engine_dtype]
        procs.append((subprocess.Popen(cmd), f"127.0.0.1:{port}", report))
    deadline = time.time() + 1800
    for p, _, report in procs:
        while not report.exists():
            if p.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"receiver exited with {p.returncode} before it was ready")
            time.sleep(0.2)
    return procs


def stop_receivers(procs: list[tuple[subprocess.Popen[bytes], str, Path]]) -> None:
    for p, _, _ in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p, _, _ in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()


def run_pushes(n: int, sd: dict[str, Any], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import torch

    from torl.learner.config import WeightSyncSettings
    from torl.learner.weight_sync import WeightSender
    from torl.v1 import common_pb2

    procs = start_receivers(n, args, tmp / f"n{n}")
    try:
        sender = WeightSender(WeightSyncSettings(replicas=[t for _, t, _ in procs], retries=0,
                                                 deadline_seconds=1800))
        runs = []
        for step in range(1, args.repeats + 1):
            def pairs() -> Iterator[tuple[str, torch.Tensor]]:
                for name, t in sd.items():  # a fresh tensor per name, as a layer-by-layer gather yields
                    yield name, t.clone()

            weights = pairs() if args.pairs else sd
            mem = RssPeak()
            res = sender.push(weights, common_pb2.WeightVersion(incarnation=1, step=step))
            extra = mem.stop()
            del weights
            if res.failed:
                raise RuntimeError(f"push failed: {res.failed}")
            runs.append({"push_seconds": res.seconds, "peak_extra_bytes": extra})
        sender.close()
        replica_rows = [json.loads(report.read_text()) for _, _, report in procs]
    finally:
        stop_receivers(procs)
    best = min(runs, key=lambda r: r["push_seconds"])
    pauses = [r["pause_seconds"] for rows in replica_rows for r in rows]
    raws = [r["raw_reload_seconds"] for rows in replica_rows for r in rows]
    return {"replicas": n, "push_seconds": best["push_seconds"], "runs": runs,
            "peak_extra_bytes": max(r["peak_extra_bytes"] for r in runs),
            "pause_seconds_median": sorted(pauses)[len(pauses) // 2],
            "raw_reload_seconds_median": sorted(raws)[len(raws) // 2], "replica_rows": replica_rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("role", nargs="?", default="bench", choices=["bench", "receiver"])
    ap.add_argument("--gib", type=float, default=0.0,
                    help="state size in GiB: the 1.5B layout with fewer layers (0 = all of it: 1.54B params, 2.88 GiB)")
    ap.add_argument("--engine", choices=["tensors", "vllm"], default="tensors")
    ap.add_argument("--pairs", action="store_true",
                    help="push (name, tensor) pairs made fresh per push (a gather) instead of a held mapping")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-replicas", type=int, choices=[1, 2], default=2, help="1: skip the 2-replica run")
    ap.add_argument("--engine-dtype", choices=["bfloat16", "float32"], default="bfloat16",
                    help="--engine vllm: the dtype vLLM serves in (float32 on CPUs without bf16 support)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--staging", default="")
    ap.add_argument("--report", default="")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.role == "receiver":
        return serve_receiver(args)

    sd = random_state(scaled_shapes(args.gib))
    state_bytes = sum(t.numel() * t.element_size() for t in sd.values())
    print(f"state: {len(sd)} tensors, {state_bytes / 2**30:.2f} GiB bf16", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-weights-", dir=os.environ.get("BENCH_TMP")) as tmp:
        one = run_pushes(1, sd, args, Path(tmp))
        two = run_pushes(2, sd, args, Path(tmp)) if args.max_replicas == 2 else None
    runs = [one] if two is None else [one, two]
    out = {
        "state_bytes": state_bytes, "tensors": len(sd), "engine": args.engine, "pairs": args.pairs,
        "one": one, "two": two,
        "push_gb_per_s_1": state_bytes / one["push_seconds"] / 1e9,
        "push_gb_per_s_2": 2 * state_bytes / two["push_seconds"] / 1e9 if two else None,
        "two_vs_one": two["push_seconds"] / one["push_seconds"] if two else None,
        "pause_vs_raw_reload": max(r["pause_seconds_median"] / r["raw_reload_seconds_median"] for r in runs),
        "peak_extra_vs_state": max(r["peak_extra_bytes"] for r in runs) / state_bytes,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k not in ("one", "two")}, indent=1))
    for n, r in enumerate(runs, start=1):
        print(f"{n} replica(s): push {r['push_seconds']:.2f}s, pause {r['pause_seconds_median']:.2f}s vs raw reload "
              f"{r['raw_reload_seconds_median']:.2f}s, peak extra {r['peak_extra_bytes'] / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
