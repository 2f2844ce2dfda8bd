"""Staged pretraining of the demo's tiny model on a synthetic ToRL-format corpus.

The demo must start from a model that sometimes writes code and sometimes answers directly, so
GRPO has mixed groups to learn from (PLATFORM.md). The corpus is "What is A*B+C?" (the RL task's
own generator, torl.learner.datasets.arith_problem: 4-digit answers) in the tir_base_0309 format:
tool transcripts run `print(A*B+C)` and copy the output into \\boxed{}; direct transcripts guess
(almost always wrong, as a small model is). Stages, as measured: a long stage rich in tool transcripts
teaches the format and copying the output; a short final stage at half tool transcripts sets the
starting tool-use rate (measured by `probe`, docs/demo.md).

Input is the tiny model kit's directory (tokenizer + Qwen2 config, torl.rollout.tiny_model);
output is an HF directory vLLM and the learner both load. Results are cached by a digest of the
input and the stages, so a second `make demo` reuses them.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torl.learner.datasets import arith_problem
from torl.rollout.config import TIR_BASE_0309
from torl.rollout.program import OBSERVATION_FORMAT, STOP_STRING, round_program

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
    # As measured from scratch (docs/demo.md, probe on 128 held-out problems): after the first two
    # stages the model copies C and the units digits of A and B but not their tens digits (greedy
    # 4/128 right); a second tool-rich stage finishes the copy (greedy 128/128 right, 98% of sampled
    # tool responses right; 250 steps were not reliably enough) and the last stage sets the starting
    # tool-use rate (0.51 sampled). On another machine the same four stages left a model whose sampled
    # tool responses were right only 87% of the time (greedy still 128/128), and 60 RL steps ended at
    # 0.81 accuracy; 150 more tool-rich steps at a lower rate, then the tool-rate stage again, took
    # that model to 94% (docs/demo.md).
    stages: tuple[Stage, ...] = field(default_factory=lambda: (
        Stage(0.85, 400, 5e-3, 0.9), Stage(0.5, 40, 5e-4), Stage(0.85, 500, 3e-3, 0.9), Stage(0.5, 40, 5e-4),
        Stage(0.85, 150, 1e-3, 0.9), Stage(0.5, 40, 5e-4)))
    batch_size: int = 16
    seq_len: int = 256
    # Part of the cache key, so a model pretrained on an older corpus is never reused. 2: the template
    # ends with "Assistant:\n" (tir_base_0309); 3: A, B in 32..99 (4-digit answers, datasets.arith_problem).
    corpus_version: int = 3
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
            (f"{rng.choice(_TOOL_OPENERS)}\n```python\nprint({expr})\n```\n{STOP_STRING}", True),
            (OBSERVATION_FORMAT.format(observation=answer), False),
            (f"The answer is \\boxed{{{answer}}}.{EOS}", True),
        ]
    guess = answer if rng.random() < direct_correct_fraction else str(int(answer) + rng.choice((-1, 1))
                                                                       * rng.randint(1, 300))
    return [(prompt, False), (rng.choice(_DIRECT).format(g=guess) + EOS, True)]


def transcript(rng: random.Random, tool: bool, direct_correct_fraction: float = 0.05, short: bool = False) -> str:
    """The full text of one transcript (see transcript_parts)."""
    return "".join(t for t, _ in transcript_parts(rng, tool, direct_correct_fraction, short))


def busy_cores(window: float = 0.5) -> float:
    """How many cores other work keeps busy now: two reads of /proc/stat `window` seconds apart.
    The load average lags by minutes: right after `make setup`'s installs it still read >= 1 on an
    idle 2-core machine, and pretraining then ran on 1 thread. Elsewhere: the 1-minute load average."""
    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    try:
        total0, idle0 = read()
        time.sleep(window)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    total = total1 - total0
    return (os.cpu_count() or 1) * (1.0 - (idle1 - idle0) / total) if total > 0 else 0.0


def train_threads() -> int:
    """Torch threads for pretraining: 2 on an idle machine with 2+ cores, else 1.

    Measured on the shared 2-core machine at load average ~7: a step took 6-9 s with 2 threads
    (the threads spin-wait for each other while other processes hold the cores) and 1.1 s with 1;
    on an idle one 0.50 s with 2 and 0.83 s with 1."""
    cores = os.cpu_count() or 1
    return 2 if cores >= 2 and busy_cores() < cores / 2 else 1


def _dir_digest(path: Path) -> str:
    h = hashlib.sha256()
    # The kit's stamp holds its build time: not content, so not part of the digest.
    for name in sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("torl_")):
        h.update(name.encode())
        h.update((path / name).read_bytes())
    return h.hexdigest()[:16]


def build_base(spec: PretrainSpec | None = None) -> Path:
    """The kit model (torl.rollout.tiny_model, cached) that `pretrain(spec)` starts from. From scratch
    only its tokenizer and config are used, so the kit skips its own training (~40 s of a fresh demo)."""
    from torl.rollout.tiny_model import TinyModelSpec, build_tiny

    spec = spec or PretrainSpec()
    return build_tiny(spec=TinyModelSpec(train_steps=0) if spec.from_scratch else None)


def pretrain(
    base_dir: str | Path,
    out_dir: str | Path,
    spec: PretrainSpec | None = None,
    progress: Callable[[str], None] | None = None,
    threads: int | None = None,
) -> Path:
    """Train `base_dir`'s model through the stages; write an HF dir to `out_dir` (cached by digest).
    `threads`: torch threads (default: train_threads()). The result depends on it (float order)."""
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
    saved_threads, n_threads = torch.get_num_threads(), threads or train_threads()
    torch.set_num_threads(n_threads)
    rng = random.Random(spec.seed)
    started, cpu0, load0 = time.monotonic(), time.process_time(), os.getloadavg()[0]
    losses: list[float] = []
    try:
        for n, stage in enumerate(spec.stages, 1):
            def stage_say(msg: str, st: int = n) -> None:
                say(f"stage {st}: {msg}")

            losses.append(_run_stage(model, tok, stage, spec, rng, stage_say))
    finally:
        torch.set_num_threads(saved_threads)
    steps = sum(st.steps for st in spec.stages)
    cpu = time.process_time() - cpu0
    timing = {"seconds": round(time.monotonic() - started, 1), "cpu_seconds": round(cpu, 1),
              "cpu_seconds_per_step": round(cpu / max(steps, 1), 3), "torch_threads": n_threads,
              "load_average_start": round(load0, 2), "load_average_end": round(os.getloadavg()[0], 2)}
    say(f"{steps} steps: {timing}")
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    for f in base.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name not in ("config.json",):
            if f.name.startswith("torl_"):
                continue
            shutil.copy2(f, tmp / f.name)
    (tmp / STAMP).write_text(json.dumps({"digest": digest, "base": str(base), "stage_losses": losses, **timing},
                                        indent=2))
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
    cpu0 = time.process_time()
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
            say(f"step {step + 1}/{stage.steps} loss {loss_value:.3f} (tool share {stage.tool_fraction:.0%}, "
                f"{time.process_time() - cpu0:.0f} CPU s)")
    model_.eval()  # type: ignore[attr-defined]
    return loss_value


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
OUTCOMES = ("right", "direct_right", "no_tool", "code_wrong", "answer_wrong")


def _arith_value(code: str) -> str | None:
    """The stdout of `print(<integer + - * expression>)`, computed without running anything; else None."""
    m = re.fullmatch(r"print\(([0-9+*\- ]+)\)", code.strip())
    if m is None:
        return None
    try:
        tree = ast.parse(m.group(1), mode="eval")
    except SyntaxError:
        return None

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left - right if isinstance(
                node.op, ast.Sub) else left * right
        raise ValueError("not an integer + - * expression")

    try:
        return str(ev(tree.body))
    except (ValueError, RecursionError):
        return None


def classify(problem: str, answer: str, response: str) -> str:
    """One probe response's outcome (OUTCOMES): right (tool), direct_right, no_tool (a wrong direct
    answer), code_wrong (the program is not the problem's expression), answer_wrong (right program,
    wrong \\boxed{} copy of its output)."""
    program = round_program(response, STOP_STRING)
    boxed = _BOXED.findall(response)
    got = boxed[-1].strip() if boxed else None
    if program is None:
        return "direct_right" if got == answer else "no_tool"
    if program.strip() != f"print({problem.removeprefix('What is ').removesuffix('?')})":
        return "code_wrong"
    return "right" if got == answer else "answer_wrong"


@dataclass(frozen=True)
class ProbeResult:
    """Outcome shares over `samples` responses (one per problem) at one temperature."""

    temperature: float
    samples: int
    counts: dict[str, int]

    @property
    def tool_use_rate(self) -> float:
        return 1.0 - (self.counts["no_tool"] + self.counts["direct_right"]) / self.samples

    @property
    def accuracy(self) -> float:
        return (self.counts["right"] + self.counts["direct_right"]) / self.samples

    @property
    def tool_accuracy(self) -> float:
        """Right answers among responses that called the tool."""
        tool = self.samples - self.counts["no_tool"] - self.counts["direct_right"]
        return self.counts["right"] / max(tool, 1)

    def line(self) -> str:
        kinds = " ".join(f"{k} {self.counts[k]}" for k in OUTCOMES)
        return (f"T={self.temperature:g} n={self.samples}: accuracy {self.accuracy:.3f}, tool use "
                f"{self.tool_use_rate:.3f}, tool accuracy {self.tool_accuracy:.3f} ({kinds})")


def probe(model_dir: str | Path, problems: Sequence[tuple[str, str]], temperature: float,
          max_new_tokens: int = 80, seed: int = 0, model: Any = None) -> ProbeResult:
    """Answer each (problem, answer) once with the ToRL loop at C = 1, through HF `generate`.

    Round 1 stops at "```output"; a `print(<integer expression>)` program gets its output as the
    observation ("\\n{stdout}\\n```\\n", as the rollout appends it; computed, not executed, since
    the corpus has no other programs), anything else an empty one; round 2 continues to the answer.
    Temperature 0 is greedy. A check of a pretrained model without the services: the demo's real
    figures come from the rollout service.
    """
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    lm: Any = model if model is not None else AutoModelForCausalLM.from_pretrained(str(model_dir))
    lm.eval()
    torch.manual_seed(seed)
    pad = int(tok.pad_token_id or 0)

    def generate(prompts: list[str]) -> list[str]:
        enc = [tok.encode(p) for p in prompts]
        width = max(len(e) for e in enc)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
        attn = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
        sampling: dict[str, Any] = ({"do_sample": True, "temperature": temperature, "top_k": 0}
                                    if temperature > 0 else {"do_sample": False})
        with torch.no_grad():
            gen = lm.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                              pad_token_id=pad, eos_token_id=pad, **sampling)
        return list(tok.batch_decode(gen[:, width:], skip_special_tokens=True))

    prompts = [TEMPLATE.format(problem=p) for p, _ in problems]
    first = generate(prompts)
    responses = list(first)
    cont: list[int] = []
    for i, text in enumerate(first):
        cut = text.find(STOP_STRING)
        if cut < 0:
            continue
        program = round_program(text, STOP_STRING)
        value = _arith_value(program) if program is not None else None
        responses[i] = text[: cut + len(STOP_STRING)] + OBSERVATION_FORMAT.format(observation=value or "")
        cont.append(i)
    if cont:
        for i, more in zip(cont, generate([prompts[i] + responses[i] for i in cont]), strict=True):
            responses[i] += more
    counts = dict.fromkeys(OUTCOMES, 0)
    for (p, a), r in zip(problems, responses, strict=True):
        counts[classify(p, a, r)] += 1
    return ProbeResult(temperature, len(problems), counts)
