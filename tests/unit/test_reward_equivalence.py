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


def _judge(pred: str, ref: str, rel_tol: float = 1e-6) -> Outcome:
    from torl.reward.equivalence import full_judge

    return full_judge(pred, ref, rel_tol, 5).outcome


@pytest.mark.parametrize(
    ("pred", "ref", "equal"),
    [
        ("1234567", "1234568", False),  # two integers: exact, whatever the tolerance
        ("1000000", "1000001", False),
        ("1499999", "1.5e6", False),  # e-notation is exact
        ("1500000", "1.5e6", True),
        ("0.3333333", "\\frac{1}{3}", True),  # an inexact decimal: relative tolerance
        ("0.30000000000000004", "0.3", True),
        ("0.33", "\\frac{1}{3}", False),
        ("204.01", "204", False),
    ],
)
def test_integers_and_exact_forms_compare_exactly(pred: str, ref: str, equal: bool) -> None:
    verdict = quick_judge(pred, ref, rel_tol=1e-6)
    assert verdict is not None and verdict.outcome is (Outcome.EQUAL if equal else Outcome.NOT_EQUAL)
    # even a loose tolerance never makes two different integers equal
    assert quick_judge("1234567", "1234568", rel_tol=0.01).outcome is Outcome.NOT_EQUAL  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("12,500", "12500"),
        ("12{,}500", "12{,}500"),  # LaTeX's grouping braces: math-verify reads it (see the full-judge case)
        ("-2./5", "-2/5"),
        ("7./4", "7/4"),
        ("\\frac{3.}{4}", "\\frac{3}{4}"),
        ("1.\\overline{3}", "1.\\overline{3}"),
        ("\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}", "(1,-2)"),
        ("\\begin{bmatrix} a \\\\ b \\\\ c \\end{bmatrix}", "(a,b,c)"),
        ("\\begin{pmatrix} 1 & 2 \\end{pmatrix}", "\\begin{pmatrix}1&2\\end{pmatrix}"),  # a row stays a matrix
        ("\\text{a parabola}", "parabola"),
        ("\\text{The Ellipse}", "ellipse"),
        ("\\text{a}", "A"),  # a lone letter is a choice, not an article
    ],
)
def test_normalize_grading_classes(raw: str, norm: str) -> None:
    assert normalize(raw) == norm


@pytest.mark.parametrize(
    ("pred", "ref", "equal"),
    [
        ("12,500", "12500", True),
        ("12{,}500", "12500", True),
        ("12,500", "1250", False),
        ("-2./5", "-\\frac{2}{5}", True),
        ("7./4", "\\frac{7}{5}", False),
        ("3 \\pm \\sqrt{2}", "3+\\sqrt{2}, 3-\\sqrt{2}", True),
        ("\\frac{1 \\pm \\sqrt{5}}{2}", "\\frac{1-\\sqrt{5}}{2}, \\frac{1+\\sqrt{5}}{2}", True),
        ("\\pm 2", "2", False),
        ("-3 \\pm \\sqrt{2}", "3+\\sqrt{2}, 3-\\sqrt{2}", False),
        ("g(t)=2t", "g(s)=2s", True),
        ("f(x)=ax+b", "f(t)=at+b", True),
        ("f(x)=\\tan x", "f(t)=\\tan t", True),
        ("g(t)=2t", "g(s)=2t", False),  # renamed, the reference's right side is constant in s
        ("f(x)=x^2+1", "g(t)=t^2+1", False),  # another function name
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(1,2)", True),
        ("(1,2)", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", True),
        ("\\begin{pmatrix} 1/\\sqrt{2} \\\\ 1 \\end{pmatrix}", "(\\frac{\\sqrt{2}}{2}, 1)", True),
        ("\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}", "(1,2)", False),
        ("\\text{a parabola}", "\\text{parabola}", True),
        ("\\text{an ellipse}", "\\text{parabola}", False),
        ("25\\%", "25", True),
        ("0.25", "25\\%", False),  # a percentage is asked for: its decimal fraction is another number
        ("25\\%", "0.25", False),
    ],
)
def test_grading_classes(pred: str, ref: str, equal: bool) -> None:
    assert _judge(pred, ref) is (Outcome.EQUAL if equal else Outcome.NOT_EQUAL)
