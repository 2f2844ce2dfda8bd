"""Data-parallel learner ranks on CPU (gloo, real DeepSpeed under torchrun, a tiny Qwen2 model).

One optimizer step over a batch of five sequences (uneven over two ranks: one rank pads with a
zero-weight micro-batch) must give the parameters of the same step computed in one process with
plain torch (GRPO loss as the global token mean, grad clip, AdamW): for ZeRO-3 on 2 ranks of one
node, ZeRO-3 on 1 rank, and ZeRO-2 on 2 "nodes" of one rank each (two torchrun launches with
--nnodes 2 meeting over loopback). The checkpoints chain through the three runs, so a 2-rank
checkpoint resumes on 1 rank and a 1-rank checkpoint on 2 (weights consolidated with DeepSpeed's
zero_to_fp32; the optimizer's moments restart, so the reference step starts a fresh AdamW too).
The 1-rank run has gradient checkpointing on: the first decoder layer runs twice per micro-batch.
A last run takes the bf16 + optimizer-offload options: bf16 parameters, fp32 master weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import free_port
from tests.integration.learner_rank_job import batch, total_tokens
from torl.cli.local import torchrun_args

pytestmark = pytest.mark.timeout(600)
JOB = str(Path(__file__).with_name("learner_rank_job.py"))
LR = 1e-3


def job_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(".cache/torch_extensions").resolve()))
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def torchrun(nproc: int, port: int, *job: str, nnodes: int = 1, node_rank: int = 0) -> list[str]:
    return [sys.executable, *torchrun_args(nproc, port, nnodes, node_rank), *job]


def run_jobs(cmds: list[list[str]], timeout: float = 300) -> None:
    procs = [subprocess.Popen(c, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in cmds]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-4000:]


def spec(root: Path, name: str, stage: int, **kw: Any) -> str:
    return json.dumps({"model": str(root / "model"), "out": str(root / name), "stage": stage, "lr": LR,
                       "micro_batch_size": 2, "train": True, **kw})


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return dict(load_file(str(path)))


def reference_step(root: Path, start: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same step in one process, plain torch: global token-mean GRPO loss, clip 1.0, AdamW."""
    from transformers import AutoModelForCausalLM

    from torl.learner.config import GrpoSettings
    from torl.learner.grpo import collate, grpo_loss, token_logprobs

    model = AutoModelForCausalLM.from_pretrained(str(root / "model"), torch_dtype=torch.float32)
    model.load_state_dict(start, strict=False)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), weight_decay=0.0)
    cfg = GrpoSettings(old_logprob_source="rollout", tis_cap=0.0)
    b = collate(batch(), int(model.config.pad_token_id or model.config.eos_token_id or 0))
    loss, _ = grpo_loss(token_logprobs(model, b), b.rollout_logprobs, b.advantages, b.loss_mask, cfg,
                        float(total_tokens()))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(start)
    moved = max(float((want[n] - start[n]).abs().max()) for n in got)
    assert moved > LR / 2, "the reference step did not move the weights"
    worst = {n: float((got[n] - want[n]).abs().max()) for n in got}
    assert max(worst.values()) < LR / 20, sorted(worst.items(), key=lambda kv: -kv[1])[:3]


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    root = tmp_path_factory.mktemp("ranks")
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(root / "model")
    return root


def test_two_ranks_match_one_and_checkpoints_move_between_rank_counts(model_root: Path) -> None:
    root = model_root
    from transformers import AutoModelForCausalLM

    base = {n: p.detach().clone() for n, p in
            AutoModelForCausalLM.from_pretrained(str(root / "model"), torch_dtype=torch.float32).named_parameters()}

    # ZeRO-3 on two ranks of one node; the checkpoint is two shards.
    run_jobs([torchrun(2, free_port(), JOB, spec(root, "z3x2", 3, save=[str(root / "ck"), "a"]))])
    r1 = json.loads((root / "z3x2" / "result.json").read_text())
    assert r1["world_size"] == 2 and r1["sequences"] == 5 and r1["tokens"] == total_tokens()
    assert r1["micro_batches"] == 2  # 3 + 2 sequences in micro-batches of 2: both ranks run 2 (one padded)
    assert r1["param_dtype"] == "torch.float32"  # zero.Init keeps the configured precision
    # ZeRO-3: rank 0 holds about half of every parameter (shards are padded to equal sizes).
    assert r1["param_numel"] / 2 <= r1["local_param_numel"] <= r1["param_numel"] / 2 + 64
    w1 = load_weights(root / "z3x2" / "weights.safetensors")
    assert_close(w1, reference_step(root, base), base)
    assert sorted(p.name for p in (root / "ck" / "a").glob("zero_pp_rank_*_optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]

    # ZeRO-3 on one rank (no launcher), resuming that 2-rank checkpoint; gradient checkpointing on.
    run_jobs([[sys.executable, JOB, spec(root, "z3x1", 3, load=[str(root / "ck"), "a"], save=[str(root / "ck"), "b"],
                                         gradient_checkpointing=True)]])
    r2 = json.loads((root / "z3x1" / "result.json").read_text())
    assert r2["state"] == {"step": 1, "world_size": 2}
    assert r2["gradient_checkpointing"] is True and r2["micro_batches"] == 3
    assert r2["forwards_layer0"] == 2 * 3  # every micro-batch's layer forward is recomputed in backward
    w2 = load_weights(root / "z3x1" / "weights.safetensors")
    assert_close(w2, reference_step(root, w1), w1)

    # ZeRO-2 on two "nodes" of one rank each, rendezvous over loopback, resuming the 1-rank checkpoint.
    port = free_port()
    job = (JOB, spec(root, "z2n2", 2, load=[str(root / "ck"), "b"]))
    run_jobs([torchrun(1, port, *job, nnodes=2, node_rank=0), torchrun(1, port, *job, nnodes=2, node_rank=1)])
    r3 = json.loads((root / "z2n2" / "result.json").read_text())
    assert r3["world_size"] == 2 and r3["state"]["world_size"] == 1
    assert r3["forwards_layer0"] == 2  # no gradient checkpointing: once per micro-batch
    assert_close(load_weights(root / "z2n2" / "weights.safetensors"), reference_step(root, w2), w2)


def test_bf16_and_optimizer_offload_take_effect(model_root: Path) -> None:
    root = model_root
    run_jobs([[sys.executable, JOB, spec(root, "bf16", 2, precision="bf16", offload_optimizer=True)]])
    r = json.loads((root / "bf16" / "result.json").read_text())
    assert r["param_dtype"] == "torch.bfloat16"  # the model trains in bf16 ...
    assert r["master_dtype"] == "torch.float32" and r["master_device"] == "cpu"  # ... on fp32 master weights
    assert r["sequences"] == 5 and r["grad_norm"] > 0.0
    from transformers import AutoModelForCausalLM

    base = {n: p.detach() for n, p in
            AutoModelForCausalLM.from_pretrained(str(root / "model"), torch_dtype=torch.float32).named_parameters()}
    got = load_weights(root / "bf16" / "weights.safetensors")
    assert max(float((got[n] - base[n]).abs().max()) for n in got) > LR / 2  # the step moved the weights
