"""`torl eval`: generate with the TIR loop through a rollout service, grade in-process, summarize.

Generation goes through the rollout service's `Generate` (same prompt template and tool budget
as training; greedy with k=1 at temperature 0, or k samples); scoring in the service is skipped
and every response is graded here with the reward library in eval mode, so evaluation and
training share one grader. `run_local_eval` starts executor and rollout as local processes.

Generation itself (`generate`, `EvalOptions`) lives in torl.evaluation.generation, which the
learner's periodic evaluation shares.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from torl.common.datasets import Problem
from torl.common.tool_status import MODEL_FAILED
from torl.evaluation.generation import EvalOptions, generate
from torl.evaluation.scoring import DatasetSummary, EvalRun, SampleRecord, markdown_table, summarize
from torl.v1 import common_pb2, trajectory_pb2


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
            errors = sum(c.status in MODEL_FAILED for c in t.tool_calls)
            records.append(
                SampleRecord(
                    dataset=p.dataset,
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
                    "dataset": p.dataset,
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
