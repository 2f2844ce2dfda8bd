"""The tiny model kit: a small Qwen2 model directory that vLLM loads, built on CPU in about a minute.

Local runs, CI and tests need a model that speaks the ToRL transcript format (text, a ```python
block, "```output", the observation, a \\boxed{} answer) without downloading anything. This module
trains a byte-level BPE tokenizer (every digit its own token, so numbers copy digit by digit) on
synthetic ToRL transcripts, then briefly trains a Qwen2ForCausalLM (hidden 128, 4 layers, 4 heads,
MLP 512, tied embeddings; PLATFORM.md's measured shape) on the same transcripts so that it emits
code blocks and the stop string. The learner's `torl model pretrain` continues from here.

Everything is deterministic from the seed (one torch thread while training) and cached: a second
call with the same spec returns the existing directory at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torl.rollout.config import TIR_BASE_0309

PROMPT_TEMPLATE = TIR_BASE_0309  # ends with "Assistant:\n", as the reference's template
EOS_TOKEN = "<|endoftext|>"
STAMP_FILE = "torl_tiny_model.json"
# Bump when the builder's output changes for the same spec. 2: the template ends with a newline (tir_base_0309).
KIT_VERSION = 2


@dataclass(frozen=True)
class TinyModelSpec:
    """What a tiny model is built from; its hash names the cache entry."""

    seed: int = 0
    vocab_size: int = 384
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 4096
    corpus_size: int = 3000  # synthetic transcripts for the tokenizer and the training stage
    train_steps: int = 150  # 0 = random weights
    batch_size: int = 16
    seq_len: int = 192
    learning_rate: float = 3e-3
    tool_fraction: float = 0.9  # share of transcripts that use the tool

    def digest(self) -> str:
        blob = json.dumps({"kit": KIT_VERSION, **asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def default_cache_dir() -> Path:
    """`$TORL_CACHE_DIR` or ~/.cache/torl."""
    return Path(os.environ.get("TORL_CACHE_DIR") or Path.home() / ".cache" / "torl")


def _problem(rng: random.Random) -> tuple[str, str, str]:
    """A 'What is A*B+C?' problem, its Python program and its answer."""
    a, b, c = rng.randint(10, 99), rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a}*{b}+{c}?", f"print({a}*{b}+{c})", str(a * b + c)


def synthetic_transcript(rng: random.Random, tool: bool) -> str:
    """One prompt + response in the ToRL format (tool use or a direct answer)."""
    problem, code, answer = _problem(rng)
    prompt = PROMPT_TEMPLATE.format(problem=problem)
    if tool:
        response = (
            "Let me compute it with Python.\n```python\n"
            f"{code}\n```\n```output\n{answer}\n```\n"
            f"The answer is \\boxed{{{answer}}}."
        )
    else:
        guess = str(int(answer) + rng.randint(-50, 50))
        response = f"The result is \\boxed{{{guess}}}."
    return prompt + response + EOS_TOKEN


def corpus(spec: TinyModelSpec) -> list[str]:
    rng = random.Random(spec.seed)
    return [synthetic_transcript(rng, rng.random() < spec.tool_fraction) for _ in range(spec.corpus_size)]


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """Byte-level BPE in which every digit is its own token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _train(model: Any, ids: list[list[int]], spec: TinyModelSpec, eos_id: int) -> float:
    """A short causal-LM stage on packed rows; returns the last loss."""
    import torch

    stream: list[int] = [t for row in ids for t in row]
    rows = len(stream) // spec.seq_len
    data = torch.tensor(stream[: rows * spec.seq_len], dtype=torch.long).view(rows, spec.seq_len)
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.learning_rate, total_steps=spec.train_steps)
    model.train()
    loss_value = float("nan")
    for _ in range(spec.train_steps):
        batch = data[torch.randint(0, rows, (spec.batch_size,), generator=gen)]
        out = model(input_ids=batch, labels=batch)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = float(out.loss.item())
    model.eval()
    return loss_value


def build_tiny(out_dir: str | Path | None = None, seed: int = 0, spec: TinyModelSpec | None = None) -> Path:
    """Build (or reuse) the tiny model directory and return its path.

    `out_dir` None → `<cache>/tiny-<digest>`. An existing directory whose stamp matches the spec is
    returned unchanged; anything else there is replaced. The build writes to a temporary sibling
    and renames it, so a crashed build never leaves a half-written model behind.
    """
    spec = spec or TinyModelSpec(seed=seed)
    if spec.seed != seed and seed != 0:
        raise ValueError(f"seed {seed} disagrees with spec.seed {spec.seed}")
    target = Path(out_dir) if out_dir is not None else default_cache_dir() / f"tiny-{spec.digest()}"
    stamp = target / STAMP_FILE
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("digest") == spec.digest():
                return target
        except (OSError, ValueError):
            pass
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.monotonic()
    loss = _build_into(tmp, spec)
    (tmp / STAMP_FILE).write_text(
        json.dumps(
            {"digest": spec.digest(), "spec": asdict(spec), "final_loss": loss,
             "build_seconds": round(time.monotonic() - started, 2)},
            indent=2,
        )
    )
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def _build_into(path: Path, spec: TinyModelSpec) -> float:
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    texts = corpus(spec)
    tok = train_tokenizer(texts, spec.vocab_size)
    eos_id = tok.token_to_id(EOS_TOKEN)
    vocab = tok.get_vocab_size()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)
    fast.model_max_length = spec.max_position_embeddings
    fast.save_pretrained(str(path))

    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same result on any machine size
    try:
        torch.manual_seed(spec.seed)
        model = Qwen2ForCausalLM(config)
        loss = float("nan")
        if spec.train_steps > 0:
            ids = [tok.encode(t).ids for t in texts]
            loss = _train(model, ids, spec, eos_id)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(str(path), safe_serialization=True)
    gen_cfg = {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}
    (path / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2))
    return loss
