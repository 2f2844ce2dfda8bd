"""Answer extraction: last boxed (nested braces, `\\boxed 5`, `\\fbox`), eval-only fallbacks."""

from __future__ import annotations

import pytest

from torl.reward.config import FallbackSettings
from torl.reward.extract import Source, extract_answer, last_boxed

FALLBACKS = FallbackSettings()


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so $\\boxed{5}$.", "5"),
        ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("first \\boxed{3} then \\boxed{4}", "4"),
        ("answer: \\boxed 5.", "5"),
        ("$\\boxed 7$", "7"),
        ("\\fbox{12}", "12"),
        ("\\boxed {  8 }", "8"),
        ("```output\n\\boxed{5}\n```\nthen \\boxed{\\text{(C)}}", "\\text{(C)}"),
    ],
)
def test_last_boxed_finds_the_final_answer(text: str, answer: str) -> None:
    got = last_boxed(text)
    assert got.source is Source.BOXED
    assert got.answer == answer


def test_unclosed_last_box_is_malformed_and_empty_box_is_no_answer() -> None:
    assert last_boxed("\\boxed{1} and \\boxed{\\frac{1}{").source is Source.MALFORMED
    assert last_boxed("\\boxed{}").source is Source.NONE
    assert last_boxed("no box here").source is Source.NONE
    assert last_boxed("\\boxedx").source is Source.NONE


def test_training_mode_ignores_fallbacks() -> None:
    assert extract_answer("The answer is 42.", eval_mode=False, fallbacks=FALLBACKS).answer is None
    assert extract_answer("42", eval_mode=False, fallbacks=FALLBACKS).answer is None


@pytest.mark.parametrize(
    ("text", "answer", "source"),
    [
        ("Therefore, the final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}", Source.ANSWER_IS),
        ("The answer is 3.5", "3.5", Source.ANSWER_IS),
        ("42", "42", Source.BARE),
        ("$\\frac{3}{4}$", "\\frac{3}{4}", Source.BARE),
        ("We got 17 apples and then 3 more, total 20", "20", Source.LAST_NUMBER),
        ("\\boxed{9} and the answer is 8", "9", Source.BOXED),
    ],
)
def test_eval_mode_fallbacks(text: str, answer: str, source: Source) -> None:
    got = extract_answer(text, eval_mode=True, fallbacks=FALLBACKS)
    assert (got.answer, got.source) == (answer, source)


def test_fallbacks_can_be_switched_off() -> None:
    off = FallbackSettings(answer_is=False, bare_answer=False, last_number=False)
    assert extract_answer("The answer is 42", eval_mode=True, fallbacks=off).source is Source.NONE


def test_extraction_of_a_megabyte_is_linear_time() -> None:
    import time

    text = "{" * 500_000 + "\\boxed{" + "x" * 500_000
    t0 = time.perf_counter()
    assert last_boxed(text).source is Source.MALFORMED
    assert time.perf_counter() - t0 < 2.0
