"""Staged pretraining of the demo's tiny model on a synthetic ToRL-format corpus.

The demo must start from a model that sometimes writes code and sometimes answers directly, so
GRPO has mixed groups to learn from (PLATFORM.md). The corpus is "What is A*B+C?" with 2-digit
numbers in the tir_base_0309 format: tool transcripts run `print(A*B+C)` and copy the output into
\\boxed{}; direct transcripts guess (almost always wrong, as a small model is). Stages, as measured:
a long stage rich in tool transcripts teaches the format and copying the output; a short final
stage at half tool transcripts sets the starting tool-use rate (0.48 sampled in a probe, docs/demo.md).

Input is the tiny model kit's directory (tokenizer + Qwen2 config, torl.rollout.tiny_model);
output is an HF directory vLLM and the learner both load. Results are cached by a digest of the
input and the stages, so a second `make demo` reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torl.learner.datasets import arith_problem
from torl.rollout.config import TIR_BASE_0309

TEMPLATE = TIR_BASE_0309  # the rollout's template, so the corpus matches what RL prompts look like
EOS = "<|endoftext|>"
STAMP = "torl_pretrain.json"

# One opener: the problem sits at a fixed offset before the code, so copying it is a fixed-offset
# attention pattern rather than a content-matching (induction) task for a ~1M-parameter model.
_TOOL_OPENERS = ("Let me compute it with Python.",)
_DIRECT = ("The result is \\boxed{{{g}}}.", "It is \\boxed{{{g}}}.", "The answer is \\boxed{{{g}}}.")


@dataclass(frozen=True)
class Stage:
    tool_fraction: float
    steps: int
    lr: float
    short_fraction: float = 0.0  # share of transcripts without the template preamble


@dataclass(frozen=True)
class PretrainSpec:
    seed: int = 0
    stages: tuple[Stage, ...] = field(default_factory=lambda: (Stage(0.85, 900, 3e-3, 0.8), Stage(0.5, 40, 5e-4)))
    batch_size: int = 16
    seq_len: int = 256
    # Part of the cache key: 2 = the template ends with "Assistant:\n" (tir_base_0309), so a model
    # pretrained on the old corpus is never reused.
    corpus_version: int = 2
    direct_correct_fraction: float = 0.05  # a direct answer is rarely right
    # Start from freshly initialized weights (the kit's architecture and tokenizer only). Measured
    # here: from the kit's briefly trained weights, 550 steps never learned to copy digits (loss at
    # copied digits stayed at ln 10); from a fresh init, copying emerged after ~400 steps.
    from_scratch: bool = True

    def digest(self, base_digest: str) -> str:
        blob = json.dumps({"base": base_digest, **asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def transcript_parts(
    rng: random.Random, tool: bool, direct_correct_fraction: float = 0.05, short: bool = False
) -> list[tuple[str, bool]]:
    """One prompt + response in the ToRL format as (text, trained) pieces.

    A tool transcript writes `print(A*B+C)`, stops at "```output", gets the observation
    "\\n{result}\\n```\\n" (as rollout appends it) and copies the result into \\boxed{}; a direct one
    guesses (rarely right). Trained pieces are the model's own tokens; the prompt and the
    observation are context only, exactly as the RL loss masks them, so the gradient goes to
    what the model must learn: copying the problem into code and the output into the answer.
    `short` drops the template's fixed preamble: the same lessons in about half the tokens.
    """
    problem, answer = arith_problem(rng)
    expr = problem.removeprefix("What is ").removesuffix("?")
    prompt = f"{problem}\nAssistant:\n" if short else TEMPLATE.format(problem=problem)
    if tool:
        return [
            (prompt, False),
            (f"{rng.choice(_TOOL_OPENERS)}\n```python\nprint({expr})\n```\n```output", True),
            (f"\n{answer}\n```\n", False),
            (f"The answer is \\boxed{{{answer}}}.{EOS}", True),
        ]
    guess = answer if rng.random() < direct_correct_fraction else str(int(answer) + rng.choice((-1, 1))
                                                                       * rng.randint(1, 300))
    return [(prompt, False), (rng.choice(_DIRECT).format(g=guess) + EOS, True)]


def transcript(rng: random.Random, tool: bool, direct_correct_fraction: float = 0.05, short: bool = False) -> str:
    """The full text of one transcript (see transcript_parts)."""
    return "".join(t for t, _ in transcript_parts(rng, tool, direct_correct_fraction, short))


def train_threads() -> int:
    """Torch threads for pretraining: 2 on an idle machine with 2+ cores, else 1.

    Measured on the shared 2-core machine at load average ~7: a step took 6-9 s with 2 threads
    (the threads spin-wait for each other while other processes hold the cores) and 1.1 s with 1."""
    cores = os.cpu_count() or 1
    return 2 if cores >= 2 and os.getloadavg()[0] < cores / 2 else 1


def _dir_digest(path: Path) -> str:
    h = hashlib.sha256()
    # The kit's stamp holds its build time: not content, so not part of the digest.
    for name in sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("torl_")):
        h.update(name.encode())
        h.update((path / name).read_bytes())
    return h.hexdigest()[:16]


def pretrain(
    base_dir: str | Path,
    out_dir: str | Path,
    spec: PretrainSpec | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Train `base_dir`'s model through the stages; write an HF dir to `out_dir` (cached by digest)."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    spec = spec or PretrainSpec()
    base, out = Path(base_dir), Path(out_dir)
    digest = spec.digest(_dir_digest(base))
    stamp = out / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()).get("digest") == digest:
        return out
    say = progress or (lambda _msg: None)
    tok = PreTrainedTokenizerFast.from_pretrained(str(base))
    torch.manual_seed(spec.seed)
    if spec.from_scratch:
        from transformers import AutoConfig

        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(base)), dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(train_threads())
    rng = random.Random(spec.seed)
    started = time.monotonic()
    losses: list[float] = []
    try:
        for n, stage in enumerate(spec.stages, 1):
            def stage_say(msg: str, st: int = n) -> None:
                say(f"stage {st}: {msg}")

            losses.append(_run_stage(model, tok, stage, spec, rng, stage_say))
    finally:
        torch.set_num_threads(threads)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    for f in base.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name not in ("config.json",):
            if f.name.startswith("torl_"):
                continue
            shutil.copy2(f, tmp / f.name)
    (tmp / STAMP).write_text(json.dumps({"digest": digest, "base": str(base), "stage_losses": losses,
                                         "seconds": round(time.monotonic() - started, 1)}, indent=2))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out


def _run_stage(model: object, tok: object, stage: Stage, spec: PretrainSpec, rng: random.Random,
               say: Callable[[str], None]) -> float:
    import torch

    model_ = model  # typed loosely: a transformers causal LM
    opt = torch.optim.AdamW(model_.parameters(), lr=stage.lr, weight_decay=0.0)  # type: ignore[attr-defined]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=stage.lr, total_steps=max(stage.steps, 1),
                                                pct_start=0.1)
    model_.train()  # type: ignore[attr-defined]
    stream: list[int] = []
    trained: list[bool] = []
    need = spec.batch_size * spec.seq_len
    loss_value = float("nan")
    for step in range(stage.steps):
        while len(stream) < need:
            parts = transcript_parts(rng, rng.random() < stage.tool_fraction, spec.direct_correct_fraction,
                                     short=rng.random() < stage.short_fraction)
            for text, train in parts:
                ids = tok.encode(text)  # type: ignore[attr-defined]
                stream.extend(ids)
                trained.extend([train] * len(ids))
        batch = torch.tensor(stream[:need], dtype=torch.long).view(spec.batch_size, spec.seq_len)
        mask = torch.tensor(trained[:need], dtype=torch.bool).view(spec.batch_size, spec.seq_len)
        labels = batch.masked_fill(~mask, -100)
        del stream[:need], trained[:need]
        outp = model_(input_ids=batch, labels=labels)  # type: ignore[operator]
        opt.zero_grad()
        outp.loss.backward()
        torch.nn.utils.clip_grad_norm_(model_.parameters(), 1.0)  # type: ignore[attr-defined]
        opt.step()
        sched.step()
        loss_value = float(outp.loss.item())
        if step % 50 == 0 or step == stage.steps - 1:
            say(f"step {step + 1}/{stage.steps} loss {loss_value:.3f} (tool share {stage.tool_fraction:.0%})")
    model_.eval()  # type: ignore[attr-defined]
    return loss_value


def tool_use_probe(model_dir: str | Path, problems: Sequence[str], max_new_tokens: int = 80,
                   seed: int = 0) -> dict[str, float]:
    """Sample one response per problem (HF generate, temperature 1) and report the tool-call share.

    A quick check of a pretrained model without the services; the demo's real numbers come from
    the rollout service.
    """
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir))
    torch.manual_seed(seed)
    prompts = [TEMPLATE.format(problem=p) for p in problems]
    enc = [tok.encode(p) for p in prompts]
    width = max(len(e) for e in enc)
    pad = int(tok.pad_token_id or 0)
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
    attn = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
    with torch.no_grad():
        gen = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0,
                             max_new_tokens=max_new_tokens, pad_token_id=pad)
    texts = tok.batch_decode(gen[:, width:], skip_special_tokens=True)
    tool = [(p, t) for p, t in zip(problems, texts, strict=True) if "```python" in t]
    copied = sum(1 for p, t in tool if f"print({p.removeprefix('What is ').removesuffix('?')})" in t)
    return {"tool_use_rate": len(tool) / max(len(texts), 1), "samples": float(len(texts)),
            "code_copies_problem": copied / max(len(tool), 1)}
