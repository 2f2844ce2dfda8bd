"""The tool-integrated reasoning (TIR) loop: ToRL's generation rules, token in, token out.

For one prompt, `generate_group` runs n independent samples concurrently (while one waits for
its tool result the engine keeps generating the others). Each sample (`run_trajectory`):

1. C+1 generation rounds for a budget of C tool calls. Rounds 1..C stop on "```output" (and
   EOS); the last round has no stop string and runs to EOS or the response budget. Every round
   generated with the stop string counts as a tool round (`tool_rounds`), whatever ended it.
2. When a tool round stopped on "```output", the program is the reference's `extract_program`
   applied to **this round's text** with the stop string left out: the last ```python block,
   taken only if a later line starting with ``` closed it and it is not empty. With no such
   block nothing runs (an earlier round's program is never re-run) and generation continues.
3. The executor computes the observation text; we append the ids of "\\n{observation}\\n```\\n"
   with loss-mask 0 and logprob 0. Sampled ids and logprobs are kept exactly as sampled; model
   text is never re-tokenized.
4. A tool call that failed for an infrastructure reason (sandbox_error, rejected, executor
   unreachable) marks the trajectory `excluded` with the reason; model-caused failures (error,
   timeout) are normal observations. An unreachable executor ends the trajectory (finish reason ERROR).

Where this deliberately differs from the reference (token-in/out, exact masks, no lost round
text) is listed in docs/rollout.md. No transport here: the engine, the tool runner and the
version source are passed in.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torl.common.errors import InvalidArgument
from torl.common.tool_status import INFRASTRUCTURE, status_name
from torl.rollout import metrics
from torl.rollout.engine import GenParams, TokenEngine
from torl.rollout.program import OBSERVATION_FORMAT, STOP_STRING, round_program
from torl.rollout.tools import ToolResult
from torl.v1 import common_pb2, trajectory_pb2

# Tool results the model did not cause (torl.common.tool_status.INFRASTRUCTURE): never trained on (the
# reference's issue 27). The exclusion cause label of each, for metrics.
INFRA_STATUSES = {
    common_pb2.TOOL_STATUS_SANDBOX_ERROR: "sandbox_error",
    common_pb2.TOOL_STATUS_REJECTED: "tool_rejected",
}
assert set(INFRA_STATUSES) == INFRASTRUCTURE


class PromptRejected(InvalidArgument):
    """A prompt the loop cannot take; `reason` is a short label (empty, too_long, bad_tokens)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ToolRunner(Protocol):
    async def run(self, code: str) -> ToolResult: ...


@dataclass(frozen=True)
class LoopConfig:
    """Everything one group's generation depends on (config defaults, per-request overrides applied)."""

    prompt_template: str
    stop_string: str = STOP_STRING
    max_tool_calls: int = 1
    max_prompt_tokens: int = 400
    max_response_tokens: int = 3072
    prompt_overflow: str = "reject"  # "reject" | "truncate"
    group_size: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class PreparedPrompt:
    token_ids: list[int]
    truncated_from: int = 0  # original length when truncated, else 0


def prepare_prompt(engine: TokenEngine, problem: str, config: LoopConfig, special_ids: frozenset[int],
                   unk_id: int | None) -> PreparedPrompt:
    """Render the template and tokenize; bad prompts raise InvalidArgument naming the problem."""
    if not problem.strip():
        raise PromptRejected("empty", "prompt.problem is empty")
    ids = engine.encode(config.prompt_template.format(problem=problem))
    problem_ids = engine.encode(problem)
    bad = [i for i in problem_ids if i in special_ids or i == unk_id]
    if bad:
        shown = sorted(set(bad))[:5]
        raise PromptRejected("bad_tokens", f"prompt.problem contains special or unknown tokens (ids {shown})")
    if len(ids) <= config.max_prompt_tokens:
        return PreparedPrompt(ids)
    if config.prompt_overflow == "reject":
        raise PromptRejected(
            "too_long",
            f"prompt is {len(ids)} tokens, over the prompt budget of {config.max_prompt_tokens} "
            "(loop.prompt_overflow=reject)"
        )
    # Keep the tail so the template's closing "Assistant:" stays where the model expects it.
    return PreparedPrompt(ids[-config.max_prompt_tokens :], truncated_from=len(ids))


def _round_seed(base: int | None, sample: int, round_index: int) -> int | None:
    if base is None:
        return None
    digest = hashlib.sha256(f"{base}:{sample}:{round_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


async def run_trajectory(
    engine: TokenEngine,
    tools: ToolRunner,
    prompt_ids: list[int],
    config: LoopConfig,
    sample_index: int,
    version: Callable[[], common_pb2.WeightVersion],
) -> trajectory_pb2.Trajectory:
    """One response: C+1 rounds, tool calls in between, exact ids/logprobs/mask."""
    traj = trajectory_pb2.Trajectory(trajectory_id=uuid.uuid4().hex)
    traj.version_start.CopyFrom(version())
    ids: list[int] = []
    logprobs: list[float] = []
    mask: list[int] = []
    finish = trajectory_pb2.FINISH_REASON_STOP
    cause = ""  # metrics label of an exclusion (one of metrics.EXCLUSION_CAUSES)
    metrics.SEQUENCES_IN_FLIGHT.inc()
    try:
        for round_index in range(config.max_tool_calls + 1):
            tool_round = round_index < config.max_tool_calls
            budget = config.max_response_tokens - len(ids)
            if budget <= 0:
                finish = trajectory_pb2.FINISH_REASON_LENGTH
                break
            params = GenParams(
                max_tokens=budget,
                temperature=config.temperature,
                top_p=config.top_p,
                seed=_round_seed(config.seed, sample_index, round_index),
                stop=(config.stop_string,) if tool_round else (),
            )
            try:
                out = await engine.generate(prompt_ids + ids, params)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the engine failed this request: record it, keep the group going
                finish = trajectory_pb2.FINISH_REASON_ERROR
                traj.excluded, cause = True, "generation_failed"
                traj.excluded_reason = f"generation failed: {type(e).__name__}: {e}"
                break
            round_start = len(ids)
            ids += out.token_ids
            logprobs += out.logprobs
            mask += [1] * len(out.token_ids)
            metrics.TOKENS.labels(kind="model").inc(len(out.token_ids))
            if tool_round:
                traj.tool_rounds += 1  # counts against C whatever ended it (the reference's counter, :270-272)
            if out.finish_reason == "length":
                finish = trajectory_pb2.FINISH_REASON_LENGTH
                break
            if out.finish_reason != "stop":
                finish = trajectory_pb2.FINISH_REASON_ERROR
                traj.excluded, cause = True, "generation_aborted"
                traj.excluded_reason = f"generation ended with {out.finish_reason!r}"
                break
            if not tool_round or out.stop_string != config.stop_string:
                break  # EOS, or the last round ended
            code = round_program(engine.decode(ids[round_start:]), config.stop_string)
            if code is None:
                continue  # no complete block: nothing runs, generation continues
            result = await tools.run(code)
            call = traj.tool_calls.add(
                round=round_index, status=result.status, seconds=result.seconds, message=result.message,
                passed=result.passed,
            )
            metrics.TOOL_CALLS.labels(status=common_pb2.ToolStatus.Name(result.status)).inc()
            metrics.TOOL_WAIT_SECONDS.observe(result.seconds)
            if not result.reachable:
                finish = trajectory_pb2.FINISH_REASON_ERROR
                traj.excluded, cause = True, "executor_unreachable"
                traj.excluded_reason = f"executor unreachable: {result.message}"
                break
            if result.status in INFRA_STATUSES and not traj.excluded:
                traj.excluded, cause = True, INFRA_STATUSES[result.status]
                traj.excluded_reason = f"{status_name(result.status)}: {result.message or 'no detail'}"
            obs_ids = engine.encode(OBSERVATION_FORMAT.format(observation=result.observation))
            obs_ids = obs_ids[: config.max_response_tokens - len(ids)]
            call.observation_tokens = len(obs_ids)
            ids += obs_ids
            logprobs += [0.0] * len(obs_ids)
            mask += [0] * len(obs_ids)
            metrics.TOKENS.labels(kind="observation").inc(len(obs_ids))
    finally:
        metrics.SEQUENCES_IN_FLIGHT.dec()
    traj.token_ids.extend(ids)
    traj.logprobs.extend(logprobs)
    traj.loss_mask.extend(mask)
    traj.finish_reason = finish
    traj.text = engine.decode(ids)
    traj.version_end.CopyFrom(version())
    metrics.TOOL_CALLS_PER_RESPONSE.observe(len(traj.tool_calls))
    if traj.excluded:
        metrics.TRAJECTORIES_EXCLUDED.labels(cause=cause).inc()
    return traj


async def generate_group(
    engine: TokenEngine,
    tools: ToolRunner,
    prompt: trajectory_pb2.Prompt,
    prepared: PreparedPrompt,
    config: LoopConfig,
    version: Callable[[], common_pb2.WeightVersion],
    replica: str,
) -> trajectory_pb2.TrajectoryGroup:
    """All samples of one prompt, generated concurrently; not yet scored."""
    started = time.perf_counter()
    n = prompt.group_size or config.group_size
    trajectories = await asyncio.gather(
        *(run_trajectory(engine, tools, prepared.token_ids, config, i, version) for i in range(n))
    )
    seconds = time.perf_counter() - started
    model_tokens = sum(sum(t.loss_mask) for t in trajectories)
    if seconds > 0:
        metrics.GENERATED_TOKENS_PER_SECOND.set(model_tokens / seconds)
    group = trajectory_pb2.TrajectoryGroup(
        group_id=prompt.prompt_id,
        prompt=prompt,
        prompt_token_ids=prepared.token_ids,
        trajectories=trajectories,
        replica=replica,
        generation_seconds=seconds,
    )
    if prepared.truncated_from:
        group.prompt_truncated_from = prepared.truncated_from
        group.notes.append(truncation_note(prepared.truncated_from, len(prepared.token_ids)))
    return group


def truncation_note(original: int, kept: int) -> str:
    return (f"prompt truncated: {original} tokens over the prompt budget, only the last {kept} were generated from "
            "(loop.prompt_overflow=truncate)")
