"""The rollout replica's state and its one operation: prompt → scored TrajectoryGroup.

Both entry points use it: the gRPC adapter (Generate, SubmitPrompts, GetStatus) and the Redis
queue adapter. It owns the engine, the executor and reward adapters and the weight receiver,
turns config plus per-request overrides into a `LoopConfig`, and validates prompts.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace

from torl.common.errors import FailedPrecondition
from torl.common.logging import get_logger
from torl.common.redis_layout import format_version, version_key
from torl.rollout import metrics
from torl.rollout.config import RolloutSettings
from torl.rollout.engine import VllmEngine
from torl.rollout.loop import LoopConfig, PreparedPrompt, PromptRejected, generate_group, prepare_prompt
from torl.rollout.scoring import RewardScorer
from torl.rollout.tools import ExecutorTools
from torl.rollout.weights import WeightReceiver
from torl.v1 import common_pb2, rollout_pb2, trajectory_pb2

log = get_logger("torl.rollout.core")


def loop_config_from(settings: RolloutSettings) -> LoopConfig:
    return LoopConfig(
        prompt_template=settings.loop.prompt_template,
        stop_string=settings.loop.stop_string,
        max_tool_calls=settings.loop.max_tool_calls,
        max_prompt_tokens=settings.loop.max_prompt_tokens,
        max_response_tokens=settings.loop.max_response_tokens,
        prompt_overflow=settings.loop.prompt_overflow,
        group_size=settings.sampling.group_size,
        temperature=settings.sampling.temperature,
        top_p=settings.sampling.top_p,
        seed=settings.sampling.seed,
    )


def apply_overrides(base: LoopConfig, o: rollout_pb2.SamplingOverrides) -> LoopConfig:
    """SamplingOverrides semantics from rollout.proto (0 / unset fields keep the config)."""
    cfg = base
    if o.n:
        cfg = replace(cfg, group_size=int(o.n))
    if o.temperature >= 0:
        cfg = replace(cfg, temperature=float(o.temperature))
    if o.max_tokens:
        cfg = replace(cfg, max_response_tokens=int(o.max_tokens))
    if o.has_max_tool_calls:
        cfg = replace(cfg, max_tool_calls=int(o.max_tool_calls))
    if o.has_seed:
        cfg = replace(cfg, seed=int(o.seed) & 0x7FFFFFFF)
    if o.top_p:
        cfg = replace(cfg, top_p=float(o.top_p))
    return cfg


class RolloutCore:
    def __init__(
        self,
        settings: RolloutSettings,
        engine: VllmEngine,
        tools: ExecutorTools,
        scorer: RewardScorer,
        receiver: WeightReceiver,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.tools = tools
        self.scorer = scorer
        self.receiver = receiver
        self.base_config = loop_config_from(settings)
        self.groups_completed = 0
        self.queued_prompts = 0
        self._in_progress = 0

    def config_for(self, overrides: rollout_pb2.SamplingOverrides | None) -> LoopConfig:
        return self.base_config if overrides is None else apply_overrides(self.base_config, overrides)

    def prepare(self, prompt: trajectory_pb2.Prompt, config: LoopConfig) -> PreparedPrompt:
        """Tokenize and check a prompt; raises InvalidArgument (counted by reason)."""
        try:
            prepared = prepare_prompt(
                self.engine, prompt.problem, config, self.engine.tokenizer.special_ids, self.engine.tokenizer.unk_id
            )
        except PromptRejected as e:
            metrics.PROMPTS_REJECTED.labels(reason=e.reason).inc()
            raise
        if prepared.truncated_from:
            metrics.PROMPTS_TRUNCATED.inc()
            log.warning("prompt_truncated", prompt_id=prompt.prompt_id, tokens=prepared.truncated_from,
                        kept=len(prepared.token_ids))
        return prepared

    def serving_at_least(self, v: common_pb2.WeightVersion) -> bool:
        return version_key(self.receiver.version) >= version_key(v)

    async def wait_for_version(self, v: common_pb2.WeightVersion, poll_seconds: float) -> None:
        while not self.serving_at_least(v):
            await asyncio.sleep(poll_seconds)

    async def run_group(
        self,
        prompt: trajectory_pb2.Prompt,
        config: LoopConfig,
        prepared: PreparedPrompt,
        score: bool = True,
    ) -> trajectory_pb2.TrajectoryGroup:
        """Generate (and score) one group; the caller has validated the prompt."""
        if not prompt.prompt_id:
            prompt.prompt_id = uuid.uuid4().hex
        started = time.perf_counter()
        self._in_progress += 1
        metrics.QUEUE_DEPTH.set(self.queued_prompts + self._in_progress)
        try:
            group = await generate_group(
                self.engine, self.tools, prompt, prepared, config, self.receiver.current, self.settings.replica_id
            )
            if score:
                await self.scorer.score_group(group)
        finally:
            self._in_progress -= 1
            metrics.QUEUE_DEPTH.set(self.queued_prompts + self._in_progress)
        self.groups_completed += 1
        metrics.GROUP_SECONDS.observe(time.perf_counter() - started)
        return group

    def require_version(self, v: common_pb2.WeightVersion) -> None:
        if not self.serving_at_least(v):
            raise FailedPrecondition(
                f"prompt needs weight version {format_version(v)}; serving {format_version(self.receiver.version)}"
            )

    def status(self) -> rollout_pb2.RolloutStatus:
        return rollout_pb2.RolloutStatus(
            version=self.receiver.current(),
            sequences_in_flight=self.engine.stats.in_flight,
            queued_prompts=self.queued_prompts + self._in_progress,
            model=self.engine.model_dir,
            replica=self.settings.replica_id,
            groups_completed=self.groups_completed,
            nccl_group=self.receiver.nccl_group,
        )

    async def close(self) -> None:
        await self.tools.close()
        await self.scorer.close()
        self.receiver.close()
