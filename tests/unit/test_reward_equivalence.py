"""The cheap judges: normalization, exact numbers with tolerance, shape guards."""

from __future__ import annotations

from fractions import Fraction

import pytest

from torl.reward.equivalence import Outcome, Shape, normalize, parse_number, quick_judge, shape_of, structural_equal


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\tfrac12", "\\frac{1}{2}"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("30^\\circ", "30"),
        ("25\\%", "25"),
        ("5\\text{ cm}", "5"),
        ("18 dollars", "18"),
        ("\\$18", "18"),
        ("7.", "7"),
        ("\\text{(B)}", "B"),
        ("x = 5", "5"),
        ("1,000", "1000"),
        ("\\text{Monday}", "monday"),
        (".5", "0.5"),
    ],
)
def test_normalize(raw: str, norm: str) -> None:
    assert normalize(raw) == norm


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("12", Fraction(12)),
        ("-0.25", Fraction(-1, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("-\\frac{3}{4}", Fraction(-3, 4)),
        ("3/4", Fraction(3, 4)),
        ("1.5e3", Fraction(1500)),
        ("1.5\\times10^{3}", Fraction(1500)),
        ("10^{-3}", Fraction(1, 1000)),
        ("0.\\overline{3}", Fraction(1, 3)),
        ("0.1\\overline{6}", Fraction(1, 6)),
        ("1\\frac{4}{5}", Fraction(9, 5)),
    ],
)
def test_parse_number_is_exact(text: str, value: Fraction) -> None:
    assert parse_number(text) == value


def test_parse_number_refuses_non_numbers() -> None:
    for text in ("x", "\\pi", "(1,2)", "1e999999", ""):
        assert parse_number(text) is None


def test_relative_tolerance_comes_from_the_caller() -> None:
    strict = quick_judge("204.01", "204", rel_tol=1e-6)
    loose = quick_judge("204.01", "204", rel_tol=1e-3)
    assert strict is not None and strict.outcome is Outcome.NOT_EQUAL
    assert loose is not None and loose.outcome is Outcome.EQUAL


def test_shapes_and_the_set_versus_tuple_guard() -> None:
    assert shape_of("\\{1,2\\}") is Shape.SET
    assert shape_of("(1,2]") is Shape.BRACKETED
    assert shape_of("1,2") is Shape.LIST
    assert shape_of("\\begin{pmatrix}1\\\\2\\end{pmatrix}") is Shape.MATRIX
    verdict = quick_judge("\\{1, 2\\}", "(1, 2)", 1e-6)
    assert verdict is not None and (verdict.outcome, verdict.method) == (Outcome.NOT_EQUAL, "shape")


def test_structural_equality() -> None:
    assert structural_equal("\\{2,1\\}", "\\{1,2\\}", 1e-6)
    assert structural_equal("3,-2", "-2,3", 1e-6)
    assert not structural_equal("(2,1)", "(1,2)", 1e-6)
    assert not structural_equal("[1,2)", "(1,2)", 1e-6)
    assert structural_equal("(0.5,2)", "(\\frac{1}{2},2)", 1e-6)
