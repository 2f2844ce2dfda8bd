"""The one held-out generation through a rollout service (`Generate`): `torl eval` grades what it
returns in-process (torl.evaluation.runner); the learner's periodic evaluation
(torl.learner.evaluator) keeps the rollout's own scoring, its tool budget and the weight version
it must be served by. No grading here, so the learner's image needs no grader library.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from torl.common.config import TlsClientSettings
from torl.common.datasets import Problem
from torl.common.grpc_client import aio_channel
from torl.v1 import common_pb2, rollout_pb2, rollout_pb2_grpc, trajectory_pb2


@dataclass(frozen=True)
class EvalOptions:
    k: int = 1
    temperature: float = 0.0
    max_tool_calls: int | None = 1  # None: the rollout's configured budget
    max_tokens: int = 0  # 0: the rollout's configured response budget
    seed: int = 0
    concurrency: int = 8
    max_prompt_tokens: int = 1024  # for a locally started rollout (ToRL trains with 400)
    deadline_seconds: float = 900.0
    tls: TlsClientSettings | None = None  # TLS / mTLS to a running rollout (--rollout)
    score_in_rollout: bool = False  # True: keep the rollout's rewards (the learner's evaluation)


async def generate(
    target: str,
    problems: Sequence[Problem],
    opts: EvalOptions,
    progress: Callable[[int, int], None] | None = None,
    *,
    min_version: common_pb2.WeightVersion | None = None,
    id_prefix: str = "",
) -> list[trajectory_pb2.TrajectoryGroup]:
    """One group of `opts.k` responses per problem, in problem order, sampled with weights at least
    `min_version` (prompt ids are `id_prefix` + the problem's id)."""
    sampling = rollout_pb2.SamplingOverrides(
        n=opts.k,
        temperature=opts.temperature,
        max_tokens=opts.max_tokens,
        max_tool_calls=opts.max_tool_calls or 0,
        has_max_tool_calls=opts.max_tool_calls is not None,
        seed=opts.seed,
        has_seed=True,
    )
    sem = asyncio.Semaphore(opts.concurrency)
    done = 0
    async with aio_channel(target, tls=opts.tls) as channel:
        stub = rollout_pb2_grpc.RolloutStub(channel)

        async def one(p: Problem) -> trajectory_pb2.TrajectoryGroup:
            nonlocal done
            async with sem:
                req = rollout_pb2.GenerateRequest(
                    prompt=trajectory_pb2.Prompt(prompt_id=id_prefix + p.id, problem=p.problem, answer=p.answer,
                                                 dataset=p.dataset, min_version=min_version),
                    sampling=sampling,
                    skip_scoring=not opts.score_in_rollout,
                )
                try:
                    group = (await stub.Generate(req, timeout=opts.deadline_seconds)).group
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                        raise
                    # The problem itself was refused (e.g. over the prompt budget): it counts as
                    # k wrong, excluded samples with the reason kept, and the run goes on.
                    group = trajectory_pb2.TrajectoryGroup(group_id=id_prefix + p.id)
                    for i in range(opts.k):
                        group.trajectories.add(
                            trajectory_id=f"{p.id}-{i}",
                            finish_reason=trajectory_pb2.FINISH_REASON_ERROR,
                            excluded=True,
                            excluded_reason=f"rejected by rollout: {e.details()}",
                        )
            done += 1
            if progress is not None:
                progress(done, len(problems))
            return group

        return list(await asyncio.gather(*(one(p) for p in problems)))
