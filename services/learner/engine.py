"""The one DeepSpeed adapter: builds the engine from config, runs a GRPO step, gathers weights.

Everything DeepSpeed-specific lives here (ZeRO stage, optimizer, precision, micro-batches, the
process group, checkpoints, ZeRO-3 gathering), so the orchestrator speaks only in samples, steps
and named tensors. One step accumulates gradients over every micro-batch of the step and applies
one optimizer update (`managed_gradient_accumulation: false`: the step is the boundary, whatever
the number of micro-batches), with the loss already normalized by the step's token count.

A torch AdamW is passed to `deepspeed.initialize`, which avoids the fused-Adam JIT build on CPU.
A single process gets RANK/WORLD_SIZE/MASTER_* set here; under torchrun or the deepspeed
launcher they come from the launcher.

Ranks (torl.learner.ranks decides who trains on what): every rank calls `train_micro_batches`
with the same number of micro-batches (empty ones are zero-weight padding, so ZeRO-3's
per-layer gathers stay in lockstep); DeepSpeed averages gradients over the ranks, so each rank's
loss is scaled by the world size and the update is the gradient of the step's global token mean.
With ZeRO-3 the model is built under `zero.Init` (HF's DeepSpeed integration), so no rank holds
the whole model; `iter_weights` gathers it one module at a time, a collective every rank runs,
and only rank 0 keeps the copies. Checkpoints: every rank writes and fsyncs its shard, then a
barrier; `ranks.json` in the tag records the world size, and a checkpoint written by a different
number of ranks is loaded through DeepSpeed's zero_to_fp32 consolidation (fp32 master weights
exact; Adam moments restart from zero; docs/learner.md "Ranks").
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
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
    if cfg.offload_optimizer:
        ds["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        ds["zero_force_ds_cpu_optimizer"] = False  # torch AdamW on the CPU state: no JIT build needed
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
        deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=cfg.dist_timeout_seconds))
        import torch.distributed as dist

        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}" if backend == "nccl" else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            if cfg.cuda_memory_fraction:
                torch.cuda.set_per_process_memory_fraction(cfg.cuda_memory_fraction, self.device)
        ds_config = deepspeed_config(cfg)
        model: Any  # a transformers PreTrainedModel
        if cfg.zero_stage == 3:
            model = self._build_partitioned(Path(model_dir), ds_config)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.pad_id = int(model.config.pad_token_id or model.config.eos_token_id or 0)
        self.model_config = model.config
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=cfg.lr,
            betas=cfg.betas,
            weight_decay=cfg.weight_decay,
        )
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)

    def _build_partitioned(self, model_dir: Path, ds_config: dict[str, Any]) -> Any:
        """ZeRO-3: build the model under zero.Init (each parameter is created as this rank's shard),
        then fill it one parameter at a time: rank 0 reads the tensor and scatters it into the shards."""
        import deepspeed
        from safetensors import safe_open
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(str(model_dir))
        # dtype comes from the config (fp32, or bf16/fp16 when enabled): an explicit dtype is
        # overridden with bf16 on an accelerator without fp16 (the CPU) by zero.Init itself.
        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
        index = model_dir / "model.safetensors.index.json"
        files = (sorted({model_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
                 if index.is_file() else [model_dir / "model.safetensors"])
        where: dict[str, Path] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as sf:
                where.update({k: f for k in sf.keys()})  # noqa: SIM118 (safe_open is not a dict)
        for name, param in model.named_parameters():
            src = where.get(name)
            if src is None and name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
                continue  # tied to the embedding, filled with it
            if src is None:
                raise KeyError(f"{model_dir}: no tensor for parameter {name}")
            with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
                if self.rank == 0:
                    with safe_open(str(src), framework="pt") as sf:
                        param.data.copy_(sf.get_tensor(name).to(torch.float32))
        return model

    @property
    def module(self) -> torch.nn.Module:
        module: torch.nn.Module = self.engine.module
        return module

    def micro_batches(self, samples: Sequence[Sample]) -> list[list[Sample]]:
        """One rank's samples cut into micro-batches; sorting by length keeps padding small."""
        ordered = sorted(samples, key=lambda s: len(s.prompt_ids) + len(s.response_ids))
        return [ordered[i : i + self.cfg.micro_batch_size] for i in range(0, len(ordered), self.cfg.micro_batch_size)]

    def train_step(self, samples: Sequence[Sample], total_tokens: int) -> StepResult:
        """One optimizer step over `samples` on a single rank; `total_tokens` is the token-mean denominator."""
        return self.train_micro_batches(self.micro_batches(samples), total_tokens)

    def train_micro_batches(self, micro_batches: Sequence[Sequence[Sample]], total_tokens: int) -> StepResult:
        """This rank's part of one optimizer step. Every rank passes the same number of micro-batches
        (an empty one is zero-weight padding) and the step's global token count."""
        self.engine.train()
        stats = LossStats()
        loss_sum = 0.0
        n_micro = 0
        sequences = 0
        t0 = time.perf_counter()
        for mb in micro_batches:
            if mb:
                batch = collate(mb, self.pad_id)
            else:  # padding: one pad token, same forward/backward collectives, zero gradient
                batch = collate([Sample([self.pad_id], [self.pad_id], [0.0], [0], 0.0)], self.pad_id)
            batch = type(batch)(*(t.to(self.device) for t in vars(batch).values()))
            lp = token_logprobs(self.engine, batch)
            loss, st = grpo_loss(
                lp, batch.rollout_logprobs, batch.advantages, batch.loss_mask, self.grpo, float(total_tokens)
            )
            # DeepSpeed averages gradients over the ranks; the step's loss is their sum.
            self.engine.backward(loss * self.world_size if mb else lp.sum() * 0.0, scale_wrt_gas=False)
            if mb:
                stats.add(st)
                loss_sum += float(loss.detach())
                sequences += len(mb)
            n_micro += 1
        t1 = time.perf_counter()
        grad_norm = 0.0
        if n_micro:
            if self.cfg.zero_stage == 0:  # grads live on the parameters; DeepSpeed reports no norm here
                # (this rank's norm before the all-reduce; the same as the global one on a single rank)
                grads = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
                grad_norm = float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0
            self.engine.step()
            norm = self.engine.get_global_grad_norm()
            if self.cfg.zero_stage > 0 and norm is not None:
                grad_norm = float(norm)
        t2 = time.perf_counter()
        return StepResult(loss_sum, stats, grad_norm, t1 - t0, t2 - t1, n_micro, sequences)

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

    def iter_weights(self, dtype: torch.dtype = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
        """Full weights as contiguous CPU tensors under their HF names, one module at a time.

        Under ZeRO-3 a collective: every rank must run the iterator to the end in lockstep; each
        module's parameters are gathered, rank 0 copies them, and they are released before the
        next module (rank 0's extra memory is one module's, plus what the caller keeps). Only
        rank 0 yields anything; other ranks just take part.
        """
        seen: set[int] = set()
        for prefix, mod in self.module.named_modules():
            own = [(n, p) for n, p in mod.named_parameters(recurse=False) if id(p) not in seen]
            if not own:
                continue
            seen.update(id(p) for _, p in own)
            names = [f"{prefix}.{n}" if prefix else n for n, _ in own]
            params = [p for _, p in own]
            if self.cfg.zero_stage == 3:
                import deepspeed

                with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                    got = self._copies(params, dtype)
            else:
                got = self._copies(params, dtype)
            yield from zip(names, got, strict=False)

    def _copies(self, params: list[torch.nn.Parameter], dtype: torch.dtype) -> list[torch.Tensor]:
        """CPU copies on rank 0 (other ranks keep nothing)."""
        return [p.detach().to("cpu", dtype).contiguous().clone() for p in params] if self.rank == 0 else []

    def named_weights(self, dtype: torch.dtype = torch.float32) -> list[tuple[str, torch.Tensor]]:
        """`iter_weights` as a list (rank 0 of a single-rank run, or every rank in lockstep)."""
        return list(self.iter_weights(dtype))

    def save_checkpoint(self, directory: Path, tag: str, client_state: dict[str, Any]) -> None:
        """DeepSpeed checkpoint (model, optimizer, ZeRO partitions) with torl's state under `torl`.

        Collective: every rank writes and fsyncs its own shard files, then all meet at a barrier, so
        when rank 0 returns every shard is durable.
        """
        import torch.distributed as dist

        self.engine.save_checkpoint(str(directory), tag=tag, client_state={"torl": client_state}, save_latest=False)
        tag_dir = directory / tag
        if self.rank == 0:
            (tag_dir / "ranks.json").write_text(
                json.dumps({"world_size": self.world_size, "zero_stage": self.cfg.zero_stage}), encoding="utf-8")
        mine = f"rank_{self.rank}_" if self.world_size > 1 else ""
        for f in sorted(tag_dir.rglob("*")):
            if f.is_file() and (self.rank == 0 or mine in f.name):
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        dist.barrier()

    def load_checkpoint(self, directory: Path, tag: str) -> dict[str, Any]:
        """Restore model and optimizer; returns the torl state saved with them (collective).

        A ZeRO checkpoint written by a different number of ranks is consolidated (zero_to_fp32) into
        the fp32 weights, which are loaded into every rank's shards; the optimizer's moments restart.
        """
        meta_path = directory / tag / "ranks.json"
        saved_world = json.loads(meta_path.read_text(encoding="utf-8"))["world_size"] if meta_path.is_file() else 1
        if saved_world != self.world_size and self.cfg.zero_stage > 0:
            return self._load_resharded(directory, tag)
        path, client_state = self.engine.load_checkpoint(str(directory), tag=tag)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")
        return dict((client_state or {}).get("torl") or {})

    def _load_resharded(self, directory: Path, tag: str) -> dict[str, Any]:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=tag, lazy_mode=True)
        with torch.no_grad():
            for name, p in self.module.named_parameters():
                if name not in sd:
                    raise KeyError(f"checkpoint {tag} has no parameter {name}")
                if self.cfg.zero_stage == 3:
                    import deepspeed

                    with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                        if self.rank == 0:
                            p.data.copy_(sd[name].contiguous().to(p.dtype))
                else:
                    p.data.copy_(sd[name].contiguous().to(p.dtype))
        self.optimizer.refresh_fp32_params()
        states = sorted((directory / tag).glob("*model_states.pt"))
        # mmap: only the pickled client state is read, not the module tensors the file may also hold.
        state = torch.load(states[0], map_location="cpu", weights_only=False, mmap=True)
        return dict(state.get("torl") or {})

    def export_hf(self, directory: Path, tokenizer_dir: str | Path | None = None) -> None:
        """Write an HF-format model dir (config + safetensors, tokenizer copied from `tokenizer_dir`); rank 0 writes."""
        from safetensors.torch import save_file

        tensors = dict(self.iter_weights())  # a collective under ZeRO-3: every rank runs it
        if self.rank != 0:
            return
        directory.mkdir(parents=True, exist_ok=True)
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
