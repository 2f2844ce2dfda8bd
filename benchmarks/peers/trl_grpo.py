"""The TRL side of bench_vs_trl.py: GRPO steps with TRL's GRPOTrainer on the same tiny model and task.

Runs inside benchmarks/.venv-trl (built by benchmarks/peers/setup_trl.sh: trl 1.16.0 over the
project's own torch/transformers). What it runs, exactly:

- model: the model directory given (the torl tiny-model kit's Qwen2, float32), loaded with
  AutoModelForCausalLM; tokenizer from the same directory;
- data: the demo's 'What is A*B+C?' problems (torl.learner.datasets.ArithDataset, seed 0) in
  ToRL's prompt template (plain text, not chat);
- GRPOConfig: 8 prompts x 8 samples per optimizer step (per_device_train_batch_size 64,
  num_generations 8, one generation per step), max_completion_length 48, temperature 1.0,
  beta 0 (no reference model), lr 3e-4 AdamW, use_cpu, float32, no gradient checkpointing (TRL's
  default turns it on, which also turns the KV cache off in generation), no logging/saving;
- generation: TRL's own path (transformers `generate`, no vLLM) without tools; with `--tool`, a
  `rollout_func` that does ToRL's loop by hand: generate (batched, HF `generate`) until
  "```output" or EOS, run the last closed ```python block of each stopped response with a fresh
  `python3 -c` subprocess per call (no isolation; up to 8 at once, timeout 10 s), append the
  observation (torl's observation rule, masked out of the loss via env_mask), then continue
  generating up to the same 48-token budget (observation tokens count against it, as in torl);
- reward: +1 if the last \\boxed{} equals the reference answer, else -1 (in-process, cheap).

Prints one JSON line: per-step seconds (after warm-up) and their rollout part (TRL's
`_generate_and_score_completions`: generation, tool calls, reward, advantages) and the rest
(forward/backward/optimizer), tool calls per step, reward.

    benchmarks/.venv-trl/bin/python benchmarks/peers/trl_grpo.py --model DIR --steps 12 [--tool]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PROMPTS_PER_STEP = 8
GROUP = 8
MAX_COMPLETION = 48  # default; --max-tokens sets it
STOP = "```output"


def last_closed_block(text: str) -> str | None:
    """The last ```python block that a line starting with ``` closes (ToRL's rule)."""
    start = text.rfind("```python")
    if start < 0:
        return None
    body = text[start + len("```python") :]
    lines = body.split("\n")[1:]
    code: list[str] = []
    for line in lines:
        if line.startswith("```"):
            return "\n".join(code)
        code.append(line)
    return None


def run_python(code: str) -> str:
    from torl.executor.observation import observation

    try:
        p = subprocess.run(["python3", "-c", code], capture_output=True, text=True, timeout=10)
        return observation(p.stdout, p.stderr, p.returncode)
    except subprocess.TimeoutExpired:
        return observation("", "", -9)


def boxed_reward(completions: list[str], answer: list[str], **_: Any) -> list[float]:
    from torl.reward.extract import last_boxed

    out = []
    for text, ref in zip(completions, answer, strict=True):
        got = last_boxed(text).answer
        out.append(1.0 if got is not None and got.strip() == ref.strip() else -1.0)
    return out


class ToolRollout:
    """ToRL's C=1 loop on the trainer's own model, with a subprocess per tool call."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.pool = ThreadPoolExecutor(max_workers=8)
        self.calls = 0

    def _generate(self, model: Any, gen_cfg: Any, seqs: list[list[int]], budget: list[int],
                  stop: bool) -> list[tuple[list[int], list[float]]]:
        import torch

        max_new = max(budget)
        pad = self.tok.pad_token_id
        width = max(len(s) for s in seqs)
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "return_dict_in_generate": True, "output_scores": True}
        if stop:
            kwargs.update(stop_strings=[STOP], tokenizer=self.tok)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg, **kwargs)
        new = out.sequences[:, width:]
        logps = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)
        res = []
        eos = set(gen_cfg.eos_token_id if isinstance(gen_cfg.eos_token_id, list) else [gen_cfg.eos_token_id])
        for i in range(len(seqs)):
            toks: list[int] = []
            lps: list[float] = []
            for t in range(new.shape[1]):
                tid = int(new[i, t])
                if tid == pad and tid not in eos:
                    break
                toks.append(tid)
                lps.append(float(logps[i, t, tid]))
                if tid in eos or len(toks) >= budget[i] or (stop and self.tok.decode(toks).endswith(STOP)):
                    break
            res.append((toks, lps))
        return res

    def __call__(self, prompts: list[str], trainer: Any) -> dict[str, Any]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        gen_cfg = trainer.generation_config
        prompt_ids = [self.tok(p)["input_ids"] for p in prompts]
        first = self._generate(model, gen_cfg, prompt_ids, [MAX_COMPLETION] * len(prompts), stop=True)
        comp = [list(t) for t, _ in first]
        lps = [list(lp) for _, lp in first]
        env = [[1] * len(t) for t, _ in first]
        todo: list[tuple[int, str]] = []
        for i, toks in enumerate(comp):
            text = self.tok.decode(toks)
            if text.endswith(STOP) and len(toks) < MAX_COMPLETION:
                code = last_closed_block(text)
                if code is not None:
                    todo.append((i, code))
        self.calls += len(todo)
        observations = list(self.pool.map(run_python, [c for _, c in todo]))
        cont_idx: list[int] = []
        for (i, _), obs in zip(todo, observations, strict=True):
            obs_ids = self.tok("\n" + obs + "\n```\n")["input_ids"][: MAX_COMPLETION - len(comp[i])]
            comp[i] += obs_ids
            lps[i] += [0.0] * len(obs_ids)
            env[i] += [0] * len(obs_ids)
            if len(comp[i]) < MAX_COMPLETION:
                cont_idx.append(i)
        if cont_idx:
            seqs = [prompt_ids[i] + comp[i] for i in cont_idx]
            budget = [MAX_COMPLETION - len(comp[i]) for i in cont_idx]
            for i, (toks, lp) in zip(cont_idx, self._generate(model, gen_cfg, seqs, budget, stop=False), strict=True):
                comp[i] += toks
                lps[i] += lp
                env[i] += [1] * len(toks)
        model.train()
        return {"prompt_ids": prompt_ids, "completion_ids": comp, "logprobs": lps, "env_mask": env}


def main() -> int:
    global MAX_COMPLETION
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2, help="First steps left out of the figures.")
    ap.add_argument("--tool", action="store_true", help="ToRL's C=1 loop through rollout_func.")
    ap.add_argument("--out", default="runs/bench-vs-trl/trl")
    ap.add_argument("--max-tokens", type=int, default=MAX_COMPLETION,
                    help="Completion budget in tokens (observations included).")
    args = ap.parse_args()
    if args.max_tokens < 1:
        raise SystemExit(f"--max-tokens must be >= 1, got {args.max_tokens}")
    MAX_COMPLETION = args.max_tokens  # read by ToolRollout at call time
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from torl.learner.datasets import ArithDataset
    from torl.rollout.tiny_model import PROMPT_TEMPLATE

    torch.set_num_threads(int(os.environ.get("TRL_TORCH_THREADS", "1")))  # as the torl learner (torch_threads: 1)
    tok = AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    problems = ArithDataset(0, PROMPTS_PER_STEP * (args.steps + 1), 1).train()
    ds = Dataset.from_list([{"prompt": PROMPT_TEMPLATE.format(problem=p.problem), "answer": p.answer}
                            for p in problems])
    cfg = GRPOConfig(
        output_dir=args.out, per_device_train_batch_size=PROMPTS_PER_STEP * GROUP, num_generations=GROUP,
        gradient_accumulation_steps=1, steps_per_generation=1, max_completion_length=MAX_COMPLETION,
        temperature=1.0, beta=0.0, learning_rate=3e-4, max_steps=args.steps, use_cpu=True, bf16=False,
        report_to=[], save_strategy="no", gradient_checkpointing=False, logging_steps=1, disable_tqdm=True,
        seed=0, dataloader_num_workers=0,
    )
    rollout = ToolRollout(tok) if args.tool else None
    stamps: list[float] = []
    log_rows: list[dict[str, float]] = []

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            if not stamps:
                stamps.append(time.perf_counter())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            stamps.append(time.perf_counter())

        def on_log(self, _a: Any, _s: Any, _c: Any, logs: dict[str, float] | None = None, **k: Any) -> None:
            if logs:
                log_rows.append(dict(logs))

    trainer = GRPOTrainer(model=model, reward_funcs=boxed_reward, args=cfg, train_dataset=ds, processing_class=tok,
                          rollout_func=rollout, callbacks=[Clock()])
    # Time TRL's rollout part of each step (generate + reward + advantages) to separate it from
    # the forward/backward/optimizer part.
    gen_times: list[float] = []
    generate_and_score = trainer._generate_and_score_completions

    def timed(inputs: Any) -> Any:
        t0 = time.perf_counter()
        out = generate_and_score(inputs)
        gen_times.append(time.perf_counter() - t0)
        return out

    trainer._generate_and_score_completions = timed
    trainer.train()
    steps = [b - a for a, b in itertools.pairwise(stamps)][args.warmup :]
    rewards = [float(x["reward"]) for x in log_rows[args.warmup :] if "reward" in x]
    lengths = [float(x["completions/mean_length"]) for x in log_rows[args.warmup :] if "completions/mean_length" in x]
    print(json.dumps({
        "side": "trl", "tool": args.tool, "steps": len(steps), "step_seconds": steps,
        "step_seconds_p50": statistics.median(steps), "step_seconds_mean": statistics.fmean(steps),
        "rollout_seconds_p50": statistics.median(gen_times[args.warmup :]),
        "rollout_seconds_mean": statistics.fmean(gen_times[args.warmup :]),
        "train_seconds_p50": statistics.median(s - g for s, g in zip(steps, gen_times[args.warmup :], strict=False)),
        "tool_calls_total": rollout.calls if rollout else 0,
        "tool_calls_per_step": (rollout.calls / args.steps) if rollout else 0.0,
        "reward_mean": statistics.fmean(rewards) if rewards else None,
        "completion_tokens_mean": statistics.fmean(lengths) if lengths else None,
        "trl_version": __import__("trl").__version__, "torch_threads": torch.get_num_threads(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
