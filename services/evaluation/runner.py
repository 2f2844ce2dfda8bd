"""`torl eval`: generate with the TIR loop through a rollout service, grade in-process, summarize.

Generation goes through the rollout service's `Generate` (same prompt template and tool budget
as training; greedy with k=1 at temperature 0, or k samples); scoring in the service is skipped
and every response is graded here with the reward library in eval mode, so evaluation and
training share one grader. `run_local_eval` starts executor and rollout as local processes.

`generate` is the one held-out generation through rollout: the learner's periodic evaluation
(torl.learner.evaluator) calls it too, with the rollout's own scoring, its own tool budget and
the weight version it must be served by.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from torl.common.config import TlsClientSettings
from torl.common.datasets import Problem
from torl.common.grpc_client import aio_channel
from torl.common.tool_status import MODEL_FAILED
from torl.evaluation.scoring import DatasetSummary, EvalRun, SampleRecord, markdown_table, summarize
from torl.v1 import common_pb2, rollout_pb2, rollout_pb2_grpc, trajectory_pb2

_FAILED_CODE = MODEL_FAILED  # torl.common.tool_status: the one meaning of a code error


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
                                                 dataset=p.source, min_version=min_version),
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


def grade(
    problems: Sequence[Problem], groups: Sequence[trajectory_pb2.TrajectoryGroup]
) -> tuple[list[SampleRecord], list[dict[str, object]]]:
    """Grade every response with the reward library (eval mode); return records and JSONL rows."""
    from torl.reward.grader import Grader, Mode, ScoreItem
    from torl.reward.rules import ToolStatus

    def status(code: int) -> ToolStatus:
        return ToolStatus.from_proto(code)

    items = []
    for p, g in zip(problems, groups, strict=True):
        for t in g.trajectories:
            items.append(
                ScoreItem(
                    response=t.text,
                    reference=p.answer,
                    mode=Mode.EVAL,
                    tool_statuses=tuple(status(c.status) for c in t.tool_calls),
                    tool_rounds=t.tool_rounds,
                    id=t.trajectory_id,
                )
            )
    with Grader() as grader:
        results = grader.score_batch(items)
    records, rows = [], []
    it = iter(results)
    for p, g in zip(problems, groups, strict=True):
        for i, t in enumerate(g.trajectories):
            r = next(it)
            errors = sum(c.status in _FAILED_CODE for c in t.tool_calls)
            records.append(
                SampleRecord(
                    dataset=p.source,
                    problem_id=p.id,
                    sample=i,
                    correct=r.correct,
                    response_tokens=len(t.token_ids),
                    tool_calls=len(t.tool_calls),
                    tool_errors=errors,
                    excluded=t.excluded,
                )
            )
            rows.append(
                {
                    "dataset": p.source,
                    "id": p.id,
                    "sample": i,
                    "problem": p.problem,
                    "reference": p.answer,
                    "response": t.text,
                    "extracted_answer": r.extracted_answer,
                    "correct": r.correct,
                    "reason": r.reason.value,
                    "response_tokens": len(t.token_ids),
                    "finish_reason": trajectory_pb2.FinishReason.Name(t.finish_reason),
                    "tool_calls": [common_pb2.ToolStatus.Name(c.status) for c in t.tool_calls],
                    "excluded": t.excluded,
                    "excluded_reason": t.excluded_reason,
                }
            )
    return records, rows


def write_outputs(
    out_dir: Path, rows: Sequence[dict[str, object]], summaries: Sequence[DatasetSummary], opts: EvalOptions, label: str
) -> str:
    """responses.jsonl, summary.json and results.md under out_dir; returns the Markdown table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "responses.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    table = markdown_table(summaries, opts.k, label)
    (out_dir / "summary.json").write_text(
        json.dumps({"model": label, "options": {**asdict(opts), "tls": opts.tls is not None},
                    "datasets": [asdict(s) for s in summaries]}, indent=2)
    )
    (out_dir / "results.md").write_text(f"# Evaluation of {label}\n\n{table}\n")
    return table


def evaluate(
    target: str,
    problems: Sequence[Problem],
    opts: EvalOptions,
    out_dir: Path,
    label: str,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[DatasetSummary], str]:
    t0 = time.monotonic()
    groups = asyncio.run(generate(target, problems, opts, progress))
    records, rows = grade(problems, groups)
    summaries = summarize(records, opts.k)
    table = write_outputs(out_dir, rows, summaries, opts, label)
    (out_dir / "timing.json").write_text(json.dumps({"seconds": time.monotonic() - t0}))
    return summaries, table


def read_run(out_dir: Path, label: str = "") -> EvalRun:
    """A finished run from `out_dir/summary.json` (written by `write_outputs`); `label` overrides its model name."""
    path = out_dir / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (is {out_dir} the --out directory of a finished `torl eval`?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        opts = data["options"]
        summaries = [DatasetSummary(**d) for d in data["datasets"]]
        return EvalRun(label or str(data["model"]), int(opts["k"]), float(opts["temperature"]), summaries)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a torl eval summary ({type(e).__name__}: {e})") from None
