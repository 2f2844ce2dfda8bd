"""The one DeepSpeed adapter: builds the engine from config, runs a GRPO step, gathers weights.

Everything DeepSpeed-specific lives here (ZeRO stage, optimizer, precision, micro-batches, the
process group, checkpoints, ZeRO-3 gathering), so the orchestrator speaks only in samples, steps
and named tensors. One step accumulates gradients over every micro-batch of the step and applies
one optimizer update (`managed_gradient_accumulation: false`: the step is the boundary, whatever
the number of micro-batches), with the loss already normalized by the step's token count.

A torch AdamW is passed to `deepspeed.initialize`, which avoids the fused-Adam JIT build on CPU.
A single process gets RANK/WORLD_SIZE/MASTER_* set here; under torchrun or the deepspeed
launcher they come from the launcher.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torl.learner.config import EngineSettings, GrpoSettings
from torl.learner.grpo import LossStats, Sample, collate, grpo_loss, token_logprobs


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare_process_env(cfg: EngineSettings) -> None:
    """Environment DeepSpeed needs in a single process; launcher-provided values are kept."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(cfg.torch_extensions_dir).resolve()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(cfg.master_port or _free_port()))
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)


def deepspeed_config(cfg: EngineSettings) -> dict[str, Any]:
    """The DeepSpeed JSON config for these settings."""
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if cfg.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif cfg.precision == "fp16":
        ds["fp16"] = {"enabled": True, "initial_scale_power": 16}
    return ds


@dataclass
class StepResult:
    """What one optimizer step did."""

    loss: float
    stats: LossStats
    grad_norm: float
    forward_backward_seconds: float
    optimizer_seconds: float
    micro_batches: int
    sequences: int
    extra: dict[str, float] = field(default_factory=dict)


class TrainEngine:
    """A causal LM wrapped in a DeepSpeed engine, trained with the GRPO loss."""

    def __init__(self, model_dir: str | Path, cfg: EngineSettings, grpo: GrpoSettings) -> None:
        prepare_process_env(cfg)
        import deepspeed
        from transformers import AutoModelForCausalLM

        self.cfg = cfg
        self.grpo = grpo
        backend = cfg.dist_backend
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend)
        self.device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}" if backend == "nccl" else "cpu")
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.pad_id = int(model.config.pad_token_id or model.config.eos_token_id or 0)
        self.model_config = model.config
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=cfg.lr,
            betas=cfg.betas,
            weight_decay=cfg.weight_decay,
        )
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(cfg)
        )

    @property
    def module(self) -> torch.nn.Module:
        module: torch.nn.Module = self.engine.module
        return module

    def _micro_batches(self, samples: Sequence[Sample]) -> Iterator[list[Sample]]:
        # Sorting by length keeps padding small inside a micro-batch.
        ordered = sorted(samples, key=lambda s: len(s.prompt_ids) + len(s.response_ids))
        for i in range(0, len(ordered), self.cfg.micro_batch_size):
            yield ordered[i : i + self.cfg.micro_batch_size]

    def train_step(self, samples: Sequence[Sample], total_tokens: int) -> StepResult:
        """One optimizer step over `samples`; `total_tokens` is the step's token-mean denominator."""
        self.engine.train()
        stats = LossStats()
        loss_sum = 0.0
        n_micro = 0
        t0 = time.perf_counter()
        for mb in self._micro_batches(samples):
            batch = collate(mb, self.pad_id)
            batch = type(batch)(*(t.to(self.device) for t in vars(batch).values()))
            lp = token_logprobs(self.engine, batch)
            loss, st = grpo_loss(
                lp, batch.rollout_logprobs, batch.advantages, batch.loss_mask, self.grpo, float(total_tokens)
            )
            self.engine.backward(loss, scale_wrt_gas=False)
            stats.add(st)
            loss_sum += float(loss.detach())
            n_micro += 1
        t1 = time.perf_counter()
        grad_norm = 0.0
        if n_micro:
            if self.cfg.zero_stage == 0:  # grads live on the parameters; DeepSpeed reports no norm here
                grads = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
                grad_norm = float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0
            self.engine.step()
            norm = self.engine.get_global_grad_norm()
            if self.cfg.zero_stage > 0 and norm is not None:
                grad_norm = float(norm)
        t2 = time.perf_counter()
        return StepResult(loss_sum, stats, grad_norm, t1 - t0, t2 - t1, n_micro, len(samples))

    def logprobs(self, samples: Sequence[Sample]) -> list[torch.Tensor]:
        """Trainer logprobs of each sample's response tokens (no grad), in input order."""
        self.engine.eval()
        out: list[torch.Tensor] = []
        with torch.no_grad():
            for s in samples:
                batch = collate([s], self.pad_id)
                batch = type(batch)(*(t.to(self.device) for t in vars(batch).values()))
                lp = token_logprobs(self.engine, batch)[0].cpu()
                p = len(s.prompt_ids)
                out.append(lp[p - 1 : p - 1 + len(s.response_ids)])
        return out

    def named_weights(self, dtype: torch.dtype = torch.float32) -> list[tuple[str, torch.Tensor]]:
        """Full (ZeRO-3 gathered) weights as contiguous CPU tensors under their HF names."""
        params = list(self.module.named_parameters())
        if self.cfg.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
                return [(n, p.detach().to("cpu", dtype).contiguous().clone()) for n, p in params]
        return [(n, p.detach().to("cpu", dtype).contiguous().clone()) for n, p in params]

    def save_checkpoint(self, directory: Path, tag: str, client_state: dict[str, Any]) -> None:
        """DeepSpeed checkpoint (model, optimizer, ZeRO partitions) with torl's state under `torl`."""
        self.engine.save_checkpoint(str(directory), tag=tag, client_state={"torl": client_state}, save_latest=False)

    def load_checkpoint(self, directory: Path, tag: str) -> dict[str, Any]:
        """Restore model and optimizer; returns the torl state saved with them."""
        path, client_state = self.engine.load_checkpoint(str(directory), tag=tag)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")
        return dict((client_state or {}).get("torl") or {})

    def export_hf(self, directory: Path, tokenizer_dir: str | Path | None = None) -> None:
        """Write an HF-format model dir (config + safetensors, tokenizer copied from `tokenizer_dir`)."""
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        tensors = dict(self.named_weights())
        if getattr(self.model_config, "tie_word_embeddings", False):
            tensors.pop("lm_head.weight", None)
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        self.model_config.save_pretrained(str(directory))
        if tokenizer_dir is not None:
            import shutil

            for f in Path(tokenizer_dir).iterdir():
                if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges"))
                                    or f.name == "generation_config.json"):
                    shutil.copy2(f, directory / f.name)

    def close(self) -> None:
        """Barrier and process-group teardown; without it the process hangs at exit."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
