"""One learner engine job under torchrun (or alone), driven the way the orchestrator drives it:
rank 0 through a RankGroup, the other ranks in serve_rank. Used by test_learner_ranks.py.

usage: learner_rank_job.py SPEC_JSON
  spec: {"model": dir, "out": dir, "stage": int, "lr": float, "micro_batch_size": int,
         "load": [ckpt_dir, tag] | null, "train": bool, "save": [ckpt_dir, tag] | null,
         "precision": str, "gradient_checkpointing": bool, "offload_optimizer": bool}
Rank 0 writes out/weights.safetensors (after the optional load and step) and out/result.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from torl.learner.grpo import Sample


def batch() -> list[Sample]:
    """Five sequences of different lengths (they do not split evenly over two ranks)."""
    out = []
    for i, (n, adv) in enumerate([(5, 1.0), (3, -1.0), (7, 0.5), (2, -0.5), (4, 1.5)]):
        prompt = [1 + i, 2, 3]
        resp = [(7 * i + j) % 60 + 4 for j in range(n)]
        mask = [1] * n
        if n > 3:
            mask[1] = 0  # an observation token
        out.append(Sample(prompt, resp, [-1.0] * n, mask, adv))
    return out


def total_tokens() -> int:
    return sum(s.trained_tokens for s in batch())


def main() -> None:
    spec = json.loads(sys.argv[1])
    from torl.learner.config import EngineSettings, GrpoSettings
    from torl.learner.engine import TrainEngine
    from torl.learner.ranks import RankGroup, RankInfo, serve_rank

    cfg = EngineSettings(zero_stage=spec["stage"], lr=spec["lr"], micro_batch_size=spec["micro_batch_size"],
                         precision=spec.get("precision", "fp32"),
                         gradient_checkpointing=spec.get("gradient_checkpointing", False),
                         offload_optimizer=spec.get("offload_optimizer", False), dist_timeout_seconds=60,
                         torch_threads=1)
    grpo = GrpoSettings(old_logprob_source="rollout", tis_cap=0.0)
    ranks = RankInfo.from_env()
    engine = TrainEngine(spec["model"], cfg, grpo)
    forwards = [0]
    layer = getattr(engine.module, "model").layers[0]  # noqa: B009  (typed as Module; the HF decoder here)
    # A pre-hook: the non-reentrant recompute stops once it has what backward needs, before forward hooks run.
    layer.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    if not ranks.is_main:
        serve_rank(engine, ranks)
        return
    group = RankGroup(engine, ranks)
    result: dict[str, object] = {"world_size": ranks.world_size}
    if spec.get("load"):
        result["state"] = group.load_checkpoint(Path(spec["load"][0]), spec["load"][1])
    if spec.get("train"):
        t0 = time.perf_counter()
        res = group.train_step(batch(), total_tokens())
        result.update(step_seconds=time.perf_counter() - t0, loss=res.loss, sequences=res.sequences,
                      micro_batches=res.micro_batches, tokens=res.stats.tokens, grad_norm=res.grad_norm,
                      forwards_layer0=forwards[0])
    if spec.get("save"):
        group.save_checkpoint(Path(spec["save"][0]), spec["save"][1], {"step": 1, "world_size": ranks.world_size})
    from safetensors.torch import save_file

    weights = dict(group.iter_weights(torch.float32))
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "weights.safetensors"))
    params = list(engine.module.parameters())
    result["param_dtype"] = str(params[0].dtype)
    result["param_numel"] = sum(int(getattr(p, "ds_numel", p.numel())) for p in params)
    result["local_param_numel"] = sum(int(getattr(p, "ds_tensor", p).numel()) for p in params)
    masters = (getattr(engine.optimizer, "single_partition_of_fp32_groups", None)
               or getattr(engine.optimizer, "fp32_partitioned_groups_flat", None) or [])
    result["master_dtype"] = str(masters[0].dtype) if masters else ""
    result["master_device"] = str(masters[0].device) if masters else ""
    result["gradient_checkpointing"] = bool(getattr(engine.module, "is_gradient_checkpointing", False))
    (out / "result.json").write_text(json.dumps(result))
    group.close()


if __name__ == "__main__":
    main()
