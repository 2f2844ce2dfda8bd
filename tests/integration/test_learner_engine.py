"""The DeepSpeed engine on a tiny Qwen2 model, ZeRO 0 and 3 (gloo, one process each): a GRPO step
moves positively rewarded tokens up, gathered weights have full shapes, and a checkpoint restores
weights and the orchestrator's state exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(400)

SCRIPT = r"""
import json, sys, torch
from pathlib import Path
from transformers import Qwen2Config, Qwen2ForCausalLM
from torl.learner.config import EngineSettings, GrpoSettings
from torl.learner.engine import TrainEngine
from torl.learner.grpo import Sample

stage, root = int(sys.argv[1]), Path(sys.argv[2])
cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
torch.manual_seed(0)
Qwen2ForCausalLM(cfg).save_pretrained(root / "model")
eng = TrainEngine(root / "model", EngineSettings(zero_stage=stage, lr=1e-2, micro_batch_size=2), GrpoSettings())
good = Sample([1, 2, 3], [10, 11, 12], [0.0] * 3, [1, 0, 1], 1.0)
bad = Sample([1, 2, 3], [20, 21], [0.0] * 2, [1, 1], -1.0)
before = eng.logprobs([good, bad])
good.rollout_logprobs, bad.rollout_logprobs = before[0].tolist(), before[1].tolist()
res = eng.train_step([good, bad, good], total_tokens=6)
after = eng.logprobs([good, bad])
weights = dict(eng.named_weights())
eng.save_checkpoint(root / "ckpt", "step_1", {"step": 1, "cursor": 8})
# One more step, then restore: the weights must come back to the checkpoint's.
eng.train_step([good, bad], total_tokens=4)
state = eng.load_checkpoint(root / "ckpt", "step_1")
restored = dict(eng.named_weights())
eng.close()
print(json.dumps({
    "good_up": float((after[0] - before[0])[[0, 2]].mean()),
    "bad_down": float((after[1] - before[1]).mean()),
    "obs_token_delta": float((after[0] - before[0])[1]),
    "micro": res.micro_batches, "grad_norm": res.grad_norm,
    "shapes": {k: list(v.shape) for k, v in weights.items()},
    "restored_equal": all(torch.equal(weights[k], restored[k]) for k in weights),
    "state": state,
}))
"""


@pytest.mark.parametrize("stage", [0, 3])
def test_engine_step_gather_and_checkpoint(stage: int, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(".cache/torch_extensions").resolve()))
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(stage), str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=380)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["good_up"] > 0.01
    assert out["bad_down"] < -0.01
    assert out["micro"] == 2  # three samples, micro-batch 2 → one update over two micro-batches
    assert out["grad_norm"] > 0.0
    assert out["shapes"]["model.embed_tokens.weight"] == [64, 32]  # full, not a ZeRO-3 shard
    assert out["restored_equal"] is True
    assert out["state"] == {"step": 1, "cursor": 8}
