"""pass@k, avg@k and the paper-layout table, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from torl.evaluation.scoring import SampleRecord, markdown_table, pass_at_k, summarize


def test_pass_at_k_matches_the_combinatorial_definition() -> None:
    for n, c, k in [(4, 1, 1), (4, 1, 2), (10, 3, 5), (16, 0, 4), (16, 16, 1), (5, 2, 4)]:
        expected = 1.0 - (math.comb(n - c, k) / math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(expected)
    with pytest.raises(ValueError, match="exceeds"):
        pass_at_k(2, 1, 3)


def rec(ds: str, pid: str, i: int, correct: bool, calls: int = 1, errors: int = 0, tokens: int = 10) -> SampleRecord:
    return SampleRecord(ds, pid, i, correct, tokens, calls, errors)


def test_summary_per_dataset() -> None:
    records = [
        rec("aime24", "a", 0, True, tokens=10),
        rec("aime24", "a", 1, False, errors=1, tokens=20),
        rec("aime24", "b", 0, False, calls=0, tokens=30),
        rec("aime24", "b", 1, False, calls=2, errors=1, tokens=40),
        rec("math500", "c", 0, True),
        rec("math500", "c", 1, True),
    ]
    s = {x.dataset: x for x in summarize(records, k=2)}
    a = s["aime24"]
    assert (a.problems, a.samples_per_problem) == (2, 2)
    assert a.accuracy == pytest.approx(0.25)  # avg@2
    assert a.pass_at_k == pytest.approx(0.5)  # a solved in 2 tries, b not
    assert a.avg_response_tokens == pytest.approx(25.0)
    assert a.tool_calls_per_response == pytest.approx(1.0)
    assert a.code_error_rate == pytest.approx(2 / 4)
    assert s["math500"].accuracy == 1.0
    table = markdown_table(list(s.values()), k=2, label="tiny")
    assert "| aime24 | 2 | 25.0 | 50.0 | 25.0 | 1.00 | 50.0 | 0 |" in table
    assert "| model | aime24 | math500 | avg |" in table
    assert "| tiny | 25.0 | 100.0 | 62.5 |" in table
