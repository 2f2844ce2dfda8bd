"""Held-out evaluation during training, through rollout (torl.evaluation.generation.generate, the
same generation `torl eval` uses) with the rollout's own rewards and tool budget, one greedy
(or eval_temperature) sample per problem, served by the weights of the step being evaluated."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from torl.common.config import TlsClientSettings
from torl.common.datasets import Problem as EvalProblem
from torl.common.logging import get_logger
from torl.evaluation.generation import EvalOptions, generate
from torl.learner import metrics as m
from torl.learner.datasets import Problem
from torl.learner.sink import trajectory_stats
from torl.v1 import common_pb2

log = get_logger("torl.learner.evaluator")


class HeldOutEval:
    def __init__(self, problems: Sequence[Problem], temperature: float, tls: TlsClientSettings,
                 deadline_seconds: float = 300.0, concurrency: int = 8) -> None:
        self.problems = [EvalProblem(p.id, p.problem, p.answer, p.dataset) for p in problems]
        self.opts = EvalOptions(k=1, temperature=temperature, max_tool_calls=None, deadline_seconds=deadline_seconds,
                                concurrency=concurrency, tls=tls, score_in_rollout=True)

    def run(self, target: str, version: common_pb2.WeightVersion) -> dict[str, float]:
        """Accuracy, mean reward, tool use and length on the held-out problems (empty: none configured)."""
        if not self.problems:
            return {}
        t0 = time.perf_counter()
        groups = asyncio.run(generate(target, self.problems, self.opts, min_version=version,
                                      id_prefix=f"eval-{version.step}-"))
        st = trajectory_stats(groups)
        result = {"accuracy": st["accuracy"], "reward_mean": st["reward_mean"], "tool_use_rate": st["tool_use_rate"],
                  "response_tokens": st["response_tokens"], "seconds": time.perf_counter() - t0,
                  "problems": float(len(groups))}
        m.EVAL_ACCURACY.set(result["accuracy"])
        log.info("evaluated", step=version.step, **result)
        return result
