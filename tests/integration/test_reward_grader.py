"""The Grader library with real verifier worker processes: the labelled set, bounded time,
worker replacement, request order, metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from torl.reward.config import GraderSettings, ScreenSettings
from torl.reward.equivalence import Outcome, Verdict
from torl.reward.grader import Grader, Mode, ScoreItem
from torl.reward.pool import VerifyPool, VerifyTask
from torl.reward.rules import Reason, ToolStatus

PAIRS = Path(__file__).resolve().parents[1] / "data" / "grading_pairs.jsonl"


@pytest.fixture(scope="module")
def grader() -> Iterator[Grader]:
    with Grader(GraderSettings(workers=2)) as g:
        yield g


@pytest.mark.timeout(180)
def test_labelled_set_agreement_is_at_least_99_percent(grader: Grader) -> None:
    rows = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) >= 300
    results = grader.score_batch([ScoreItem(r["prediction"], r["reference"], Mode(r["mode"])) for r in rows])
    wrong = [
        f"{r['family']}: {r['reference']!r} vs {x.extracted_answer!r} expected {r['expected']} got {x.reason.value}"
        for r, x in zip(rows, results, strict=True)
        if x.correct != r["expected"]
    ]
    agreement = 1 - len(wrong) / len(rows)
    assert agreement >= 0.99, "\n".join(wrong)


@pytest.mark.timeout(120)
def test_grading_classes_of_issue_16_agree_fully(grader: Grader) -> None:
    """Integers exact, thousands separators, trailing-dot decimals, \\pm, renamed function variables,
    vectors vs tuples, articles in word answers, percentages vs decimals: every labelled pair, both directions."""
    rows = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r["source"] == "classes"]
    assert len(rows) >= 100 and {r["expected"] for r in rows} == {True, False}
    results = grader.score_batch([ScoreItem(r["prediction"], r["reference"], Mode(r["mode"])) for r in rows])
    wrong = [f"{r['family']}: {x.extracted_answer!r} vs {r['reference']!r} expected {r['expected']} got "
             f"{x.reason.value} ({x.detail})" for r, x in zip(rows, results, strict=True) if x.correct != r["expected"]]
    assert not wrong, "\n".join(wrong)


@pytest.mark.timeout(60)
def test_results_come_back_in_request_order_with_reasons(grader: Grader) -> None:
    items = [
        ScoreItem("\\boxed{x^2+2x+1}", "(x+1)^2", id="a"),
        ScoreItem("no box", "3", id="b"),
        ScoreItem("\\boxed{2^{10^{100}}}", "5", id="c"),
        ScoreItem("\\boxed{\\sqrt{12}}", "2\\sqrt{3}", id="d"),
        ScoreItem("\\boxed{7}", "8", id="e"),
        ScoreItem("\\boxed{\\frac{1}{", "1", id="f"),
        ScoreItem("x" * 2_000_000, "1", id="g"),
        ScoreItem("\\boxed{5}", "", id="h"),
    ]
    results = grader.score_batch(items)
    assert [r.id for r in results] == list("abcdefgh")
    assert [r.reason for r in results] == [
        Reason.CORRECT,
        Reason.NO_ANSWER,
        Reason.UNPARSABLE,
        Reason.CORRECT,
        Reason.WRONG,
        Reason.UNPARSABLE,
        Reason.UNPARSABLE,
        Reason.UNPARSABLE,
    ]
    assert [r.reward for r in results] == [1.0, -1.0, -1.0, 1.0, -1.0, -1.0, -1.0, -1.0]
    assert results[0].extracted_answer == "x^2+2x+1"


@pytest.mark.timeout(60)
def test_pathological_items_fail_fast_and_do_not_block_others(grader: Grader) -> None:
    bad = ["\\boxed{2^{10^{100}}}", "x" * 1_000_000, "\\boxed{" + "{" * 5000 + "}" * 5000 + "}", "\\boxed{\\frac{(}"]
    good = [ScoreItem(f"\\boxed{{\\frac{{{k}}}{{2}}}}", str(k / 2)) for k in range(1, 20)]
    t0 = time.perf_counter()
    results = grader.score_batch([ScoreItem(b, "5") for b in bad] + good)
    elapsed = time.perf_counter() - t0
    assert all(r.reward == -1.0 and r.reason is Reason.UNPARSABLE for r in results[: len(bad)])
    assert all(r.correct for r in results[len(bad) :])
    assert elapsed < 3.0, elapsed


@pytest.mark.timeout(90)
def test_slow_item_times_out_within_the_item_limit() -> None:
    # Screening loosened so the power reaches sympy; whichever fires first (math-verify's signal
    # or the hard kill), the item ends as `timeout` near the 1 s limit and the next item works.
    loose = ScreenSettings(max_exponent=10_000_000, max_digits=100_000)
    with Grader(GraderSettings(workers=1, item_timeout_seconds=1.0, screen=loose)) as g:
        t0 = time.perf_counter()
        first = g.score("\\boxed{7^{9999999} + 1}", "7^{9999999}")
        assert time.perf_counter() - t0 < 5.0
        assert first.reason is Reason.TIMEOUT and first.reward == -1.0
        assert g.score("\\boxed{\\sqrt{12}}", "2\\sqrt{3}").reason is Reason.CORRECT


@pytest.mark.timeout(90)
def test_overrunning_worker_is_killed_and_replaced() -> None:
    # The worker's own signal timeout (30 s) is set past the hard limit (1 s), so only the kill
    # can end this item: 7^9999999 takes ~15 s of sympy/C big-integer work.
    restarts_before = REGISTRY.get_sample_value("torl_reward_worker_restarts_total", {"cause": "timeout"}) or 0.0
    pool = VerifyPool(workers=1, item_timeout_seconds=1.0, memory_mb=4096, inner_timeout_seconds=30)
    try:
        t0 = time.perf_counter()
        verdict = pool.submit(VerifyTask("7^{9999999} + 1", "7^{9999999}", 1e-6)).result(timeout=60)
        assert time.perf_counter() - t0 < 5.0
        assert verdict == Verdict(Outcome.TIMEOUT, "hard_timeout")
        assert pool.restarts == 1
        after = pool.submit(VerifyTask("\\sqrt{12}", "2\\sqrt{3}", 1e-6)).result(timeout=60)
        assert after.outcome is Outcome.EQUAL  # the replacement worker answers
    finally:
        pool.close()
    restarts_after = REGISTRY.get_sample_value("torl_reward_worker_restarts_total", {"cause": "timeout"})
    assert restarts_after == restarts_before + 1


@pytest.mark.timeout(60)
def test_penalty_and_metrics() -> None:
    from torl.reward.config import PenaltySettings

    before = REGISTRY.get_sample_value("torl_reward_scores_total", {"reason": "correct", "mode": "eval"}) or 0.0
    with Grader(GraderSettings(workers=1, penalty=PenaltySettings(enabled=True))) as g:
        ok = g.score("\\boxed{4}", "4", tool_statuses=[ToolStatus.OK], tool_rounds=1, mode=Mode.EVAL)
        no_code = g.score("\\boxed{4}", "4")
        evaluated = g.score("\\boxed{4}", "4", mode=Mode.EVAL)  # eval rewards carry no penalty
        failed = g.score("\\boxed{5}", "4", tool_statuses=[ToolStatus.ERROR], tool_rounds=1)
    assert (ok.reward, ok.penalty_applied) == (1.0, False)
    assert (no_code.reward, no_code.penalty_applied) == (0.5, True)
    assert (evaluated.reward, evaluated.penalty_applied) == (1.0, False)
    assert (failed.reward, failed.penalty_applied) == (-1.5, True)
    after = REGISTRY.get_sample_value("torl_reward_scores_total", {"reason": "correct", "mode": "eval"})
    assert after == before + 2  # ok and evaluated
    assert (REGISTRY.get_sample_value("torl_reward_verification_seconds_count") or 0) >= 3
