"""Per-dataset statistics in the paper's layout: accuracy, avg@k, pass@k, response length, tool use.

pass@k uses the unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models
Trained on Code"): 1 - C(n-c, k) / C(n, k) per problem, averaged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples (drawn from n with c correct) is correct."""
    if k > n:
        raise ValueError(f"k={k} exceeds samples per problem n={n}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


@dataclass
class SampleRecord:
    """One graded response."""

    dataset: str
    problem_id: str
    sample: int
    correct: bool
    response_tokens: int
    tool_calls: int
    tool_errors: int  # calls whose status was error or timeout (the model's code failed)
    excluded: bool = False  # an infrastructure failure made the sample unusable
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class DatasetSummary:
    dataset: str
    problems: int
    samples_per_problem: int
    accuracy: float  # mean over all samples (= greedy accuracy when k=1, avg@k otherwise)
    pass_at_k: float
    avg_response_tokens: float
    tool_calls_per_response: float
    code_error_rate: float  # failed calls / calls (0 when no calls)
    excluded: int


def summarize(records: Sequence[SampleRecord], k: int) -> list[DatasetSummary]:
    """One summary per dataset, in first-seen order."""
    by_ds: dict[str, dict[str, list[SampleRecord]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_ds[r.dataset][r.problem_id].append(r)
    out = []
    for ds, problems in by_ds.items():
        samples = [r for rs in problems.values() for r in rs]
        n = min(len(rs) for rs in problems.values())
        calls = sum(r.tool_calls for r in samples)
        pass_k = [pass_at_k(len(rs), sum(r.correct for r in rs), min(k, len(rs))) for rs in problems.values()]
        out.append(
            DatasetSummary(
                dataset=ds,
                problems=len(problems),
                samples_per_problem=n,
                accuracy=sum(r.correct for r in samples) / len(samples),
                pass_at_k=sum(pass_k) / len(pass_k),
                avg_response_tokens=sum(r.response_tokens for r in samples) / len(samples),
                tool_calls_per_response=calls / len(samples),
                code_error_rate=(sum(r.tool_errors for r in samples) / calls) if calls else 0.0,
                excluded=sum(r.excluded for r in samples),
            )
        )
    return out


PAPER_COLUMNS = ("aime24", "aime25", "math500", "olympiadbench", "amc23")


def markdown_table(summaries: Sequence[DatasetSummary], k: int, label: str) -> str:
    """Per-dataset table plus the paper's one-row layout (AIME24 / AIME25 / MATH500 / OlympiadBench / AMC23)."""
    acc_name = "accuracy" if k == 1 else f"avg@{k}"
    lines = [
        f"| dataset | problems | {acc_name} % | pass@{k} % | avg response tokens | tool calls / response "
        "| code error rate % | excluded |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.dataset} | {s.problems} | {100 * s.accuracy:.1f} | {100 * s.pass_at_k:.1f} | "
            f"{s.avg_response_tokens:.1f} | {s.tool_calls_per_response:.2f} | {100 * s.code_error_rate:.1f} | "
            f"{s.excluded} |"
        )
    by_name = {s.dataset: s for s in summaries}
    present = [c for c in PAPER_COLUMNS if c in by_name]
    if present:
        lines += ["", f"| model | {' | '.join(present)} | avg |", "|---|" + "---|" * (len(present) + 1)]
        accs = [100 * by_name[c].accuracy for c in present]
        lines.append(f"| {label} | {' | '.join(f'{a:.1f}' for a in accs)} | {sum(accs) / len(accs):.1f} |")
    return "\n".join(lines)


@dataclass
class EvalRun:
    """One finished `torl eval` run, as read back from its summary.json."""

    label: str
    k: int
    temperature: float
    summaries: list[DatasetSummary]


_COMPARE_METRICS: tuple[tuple[str, str, float, str], ...] = (
    # (DatasetSummary field, column header, scale, format)
    ("accuracy", "avg@{k} %", 100.0, ".1f"),
    ("pass_at_k", "pass@{k} %", 100.0, ".1f"),
    ("tool_calls_per_response", "tool calls / response", 1.0, ".2f"),
    ("code_error_rate", "code error rate %", 100.0, ".1f"),
    ("avg_response_tokens", "avg response tokens", 1.0, ".1f"),
)


def comparison_table(runs: Sequence[EvalRun]) -> str:
    """Runs side by side per dataset (e.g. before and after RL), with the change from the first run.

    All runs must share k and temperature, since avg@k and pass@k are not comparable otherwise;
    only datasets present in every run are shown.
    """
    if len(runs) < 2:
        raise ValueError(f"comparison needs at least 2 runs, got {len(runs)}")
    first = runs[0]
    for r in runs[1:]:
        if (r.k, r.temperature) != (first.k, first.temperature):
            raise ValueError(
                f"runs differ in sampling: {first.label!r} k={first.k} T={first.temperature}, "
                f"{r.label!r} k={r.k} T={r.temperature}: avg@k and pass@k are not comparable"
            )
    by_run = [{s.dataset: s for s in r.summaries} for r in runs]
    datasets = [s.dataset for s in first.summaries if all(s.dataset in m for m in by_run)]
    if not datasets:
        raise ValueError("the runs have no dataset in common")
    headers = [h.format(k=first.k) for _, h, _, _ in _COMPARE_METRICS]
    lines = [
        f"| dataset | model | problems | {' | '.join(headers)} |",
        "|---|---|---|" + "---|" * len(headers),
    ]
    for ds in datasets:
        base = by_run[0][ds]
        for r, m in zip(runs, by_run, strict=True):
            s = m[ds]
            cells = [format(scale * float(getattr(s, f)), fmt) for f, _, scale, fmt in _COMPARE_METRICS]
            lines.append(f"| {ds} | {r.label} | {s.problems} | {' | '.join(cells)} |")
        for r, m in zip(runs[1:], by_run[1:], strict=True):
            s = m[ds]
            cells = [
                format(scale * (float(getattr(s, f)) - float(getattr(base, f))), "+" + fmt)
                for f, _, scale, fmt in _COMPARE_METRICS
            ]
            lines.append(f"| {ds} | change {first.label} → {r.label} | | {' | '.join(cells)} |")
    return "\n".join(lines)
