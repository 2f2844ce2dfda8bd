"""Input screening: pathological answers are refused in microseconds; real answers pass."""

from __future__ import annotations

import pytest

from torl.reward.config import ScreenSettings
from torl.reward.screen import log10_magnitude, nesting_depth, screen_answer, screen_text

LIMITS = ScreenSettings()


@pytest.mark.parametrize(
    "answer",
    [
        "2^{10^{100}}",
        "10^{10^{10}}",
        "2^(10^100)",
        "2**(10**100)",
        "3^{3 \\cdot 10^{9}}",
        "x^{100000}",
        "1e100000",
        "100000000!",
        "9!!!!!!",
        "1" * 500,
        "{" * 40 + "1" + "}" * 40,
        "x" * 5000,
    ],
)
def test_pathological_answers_are_refused(answer: str) -> None:
    assert screen_answer(answer, LIMITS) is not None


@pytest.mark.parametrize(
    "answer",
    [
        "2^{2007}",
        "e^{-x^2}",
        "3^{100} - 1",
        "\\frac{\\sqrt{3}}{2}",
        "\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}",
        "(-\\infty, 0) \\cup (1, \\infty)",
        "10!",
        "n!!",
        "1.24e-8",
        "x^{n+1}",
    ],
)
def test_ordinary_answers_pass(answer: str) -> None:
    assert screen_answer(answer, LIMITS) is None


def test_magnitude_estimates() -> None:
    assert log10_magnitude("100") == pytest.approx(2.0)
    assert log10_magnitude("10^{100}") == pytest.approx(100.0)
    assert log10_magnitude("3 \\cdot 10^{9}") == pytest.approx(9.477, abs=1e-3)
    assert log10_magnitude("n+1") is None


def test_nesting_depth_and_response_size() -> None:
    assert nesting_depth("((a)[b]{c})") == 2
    assert screen_text("x" * (LIMITS.max_response_chars + 1), LIMITS) is not None
    assert screen_text("x" * 1000, LIMITS) is None
    message = screen_answer("x" * 5000, LIMITS, "reference")
    assert message is not None and message.startswith("reference has 5000 characters")
