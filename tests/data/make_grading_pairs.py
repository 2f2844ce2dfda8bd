"""Regenerate tests/data/grading_pairs.jsonl: labelled (prediction, reference, expected) cases.

Two parts: (1) answers drawn from data/eval (seeded, deterministic), each rewritten into forms
that are equivalent by construction (same value, other notation) or not equivalent (another
value or another structure), inside a realistic ToRL response; (2) hand-labelled hard families
(units, e-notation, intervals, sets vs tuples, repeating decimals, matrices, multiple choice,
text wrappers, percent, degrees, extraction edge cases). Labels say what a careful human grader
decides, never what the grader under test returns.

    .venv/bin/python tests/data/make_grading_pairs.py
"""

from __future__ import annotations

import json
import random
import re
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_name("grading_pairs.jsonl")

TEMPLATES = (
    "We set up the equation and solve it.\n```python\nprint(42)\n```\n```output\n42\n```\n"
    "So the final answer is $\\boxed{{{a}}}$.",
    "Let me reason step by step. The computation gives the result, hence $\\boxed{{{a}}}$.",
    "```python\nfrom sympy import *\nprint(solve(x-1))\n```\n```output\n[1]\n```\n"
    "Earlier I guessed $\\boxed{{0}}$ but the code shows the answer is \\boxed{{{a}}}.",
    "\\[ \\text{{Answer: }} \\boxed{{{a}}} \\]",
)


def response(answer: str, rng: random.Random) -> str:
    return rng.choice(TEMPLATES).format(a=answer)


def load_answers() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in sorted((REPO / "data" / "eval").glob("*.jsonl")):
        if path.stem == "torl_test":  # a union of the others
            continue
        out[path.stem] = [json.loads(line)["answer"] for line in path.read_text().splitlines() if line.strip()]
    return out


INT_RE = re.compile(r"-?\d+")
FRAC_RE = re.compile(r"(-?)\\frac\{(\d+)\}\{(\d+)\}")
DEG_RE = re.compile(r"(\d+)\^\\circ")
SCI_RE = re.compile(r"(\d+(?:\.\d+)?)e(-?\d+)")


def terminating(f: Fraction) -> str | None:
    d = f.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:
        return None
    s = f"{float(f):.12f}".rstrip("0").rstrip(".")
    return s if Fraction(s) == f else None


def variants(ans: str) -> list[tuple[str, bool, str]]:
    """(prediction answer, expected, family) for one reference answer."""
    out: list[tuple[str, bool, str]] = [(ans, True, "identical")]
    if INT_RE.fullmatch(ans):
        n = int(ans)
        out += [(f"{n}.0", True, "int_decimal"), (f"\\text{{{n}}}", True, "text_wrapper")]
        if abs(n) >= 1000:
            out.append((f"{n:,}", True, "thousands_separator"))
        out += [(str(n + 1), False, "int_off_by_one"), (str(n * 10), False, "int_times_10")]
        if n != 0:
            out.append((str(-n), False, "int_sign"))
        return out
    m = FRAC_RE.fullmatch(ans)
    if m:
        sign, a, b = m.group(1), int(m.group(2)), int(m.group(3))
        f = Fraction(a, b) * (-1 if sign else 1)
        out += [
            (f"{sign}\\dfrac{{{a}}}{{{b}}}", True, "dfrac"),
            (f"{sign}{a}/{b}", True, "slash_fraction"),
            (f"{sign}\\frac{{{2 * a}}}{{{2 * b}}}", True, "unreduced_fraction"),
        ]
        dec = terminating(f)
        if dec is not None:
            out.append((dec, True, "fraction_as_decimal"))
        if a != b:
            out.append((f"{sign}\\frac{{{b}}}{{{a}}}", False, "fraction_inverted"))
        out.append((f"{sign}\\frac{{{a + 1}}}{{{b}}}", False, "fraction_off"))
        return out
    m = DEG_RE.fullmatch(ans)
    if m:
        d = int(m.group(1))
        out += [(str(d), True, "degrees_dropped"), (f"{d}^{{\\circ}}", True, "degrees_braced"),
                (f"{d + 1}^\\circ", False, "degrees_off")]
        return out
    m = SCI_RE.fullmatch(ans)
    if m:
        mant, exp = m.group(1), int(m.group(2))
        out += [
            (f"{mant} \\times 10^{{{exp}}}", True, "e_notation_times"),
            (f"{mant}\\cdot10^{{{exp}}}", True, "e_notation_cdot"),
            (f"{mant}e{exp + 1}", False, "e_notation_off"),
        ]
        return out
    if "\\begin{pmatrix}" in ans:
        out.append((ans.replace("pmatrix", "bmatrix"), True, "matrix_brackets"))
        nums = re.findall(r"-?\d+", ans)
        if nums:
            changed = re.sub(re.escape(nums[0]), str(int(nums[0]) + 1), ans, count=1)
            out.append((changed, False, "matrix_entry_off"))
        return out
    if "\\left(" in ans and "\\right)" in ans:
        plain = ans.replace("\\left(", "(").replace("\\right)", ")")
        out.append((plain, True, "left_right_dropped"))
        return out
    return out


def generated(rng: random.Random) -> list[dict[str, object]]:
    answers = load_answers()
    picks: list[tuple[str, str]] = []
    counts = (("aime24", 8), ("aime25", 8), ("amc23", 8), ("gsm8k", 14), ("olympiadbench", 10), ("minerva_math", 6))
    for ds, n in counts:
        picks += [(ds, a) for a in rng.sample(answers[ds], n)]
    math500 = answers["math500"]
    fracs = [a for a in math500 if FRAC_RE.fullmatch(a)]
    degs = [a for a in math500 if DEG_RE.fullmatch(a)]
    mats = [a for a in math500 if "\\begin{pmatrix}" in a]
    lr = [a for a in math500 if "\\left(" in a and "\\right)" in a]
    ints = [a for a in math500 if INT_RE.fullmatch(a)]
    sci = [a for a in answers["minerva_math"] if SCI_RE.fullmatch(a)]
    for group, n in ((fracs, 14), (degs, 5), (mats, 5), (lr, 5), (ints, 10), (sci, 6)):
        picks += [("math500" if group is not sci else "minerva_math", a) for a in rng.sample(group, min(n, len(group)))]
    rows: list[dict[str, object]] = []
    seen: set[tuple[str, str]] = set()
    for ds, ans in picks:
        for pred, expected, family in variants(ans):
            if (pred, ans) in seen:
                continue
            seen.add((pred, ans))
            rows.append({"prediction": response(pred, rng), "reference": ans, "expected": expected,
                         "family": family, "source": ds, "mode": "training"})
    return rows


# Hand-labelled hard families: (prediction, reference, expected, family, mode).
# Predictions are bare answers wrapped in \boxed{} unless they start with "RAW:" (used verbatim).
HARD: list[tuple[str, str, bool, str, str]] = [
    # units
    ("5\\text{ cm}", "5", True, "units", "training"),
    ("5 \\text{cm}^2", "5", True, "units", "training"),
    ("18 \\text{ dollars}", "18", True, "units", "training"),
    ("\\$18", "18", True, "units", "training"),
    ("\\$18.00", "18", True, "units", "training"),
    ("18 dollars", "18", True, "units", "training"),
    ("12 \\text{ square units}", "12", True, "units", "training"),
    ("3\\text{ hours}", "3", True, "units", "training"),
    ("6 \\text{ cm}", "7", False, "units", "training"),
    ("90 \\text{ minutes}", "1.5", False, "units", "training"),
    ("4\\mbox{ inches}", "4", True, "units", "training"),
    # e-notation
    ("1.5e3", "1500", True, "e_notation", "training"),
    ("1.5 \\times 10^3", "1500", True, "e_notation", "training"),
    ("1.5\\times10^{3}", "1.5e3", True, "e_notation", "training"),
    ("4.46 \\times 10^{19}", "4.46e19", True, "e_notation", "training"),
    ("4.46e18", "4.46e19", False, "e_notation", "training"),
    ("1.24 \\times 10^{-8}", "1.24e-8", True, "e_notation", "training"),
    ("1.24 \\times 10^{8}", "1.24e-8", False, "e_notation", "training"),
    ("9.35 \\cdot 10^5", "9.35e5", True, "e_notation", "training"),
    ("935000", "9.35e5", True, "e_notation", "training"),
    ("10^{-3}", "0.001", True, "e_notation", "training"),
    ("2E-3", "0.002", True, "e_notation", "training"),
    # intervals
    ("(1, 2]", "(1,2]", True, "interval", "training"),
    ("\\left(1, 2\\right]", "(1,2]", True, "interval", "training"),
    ("[1, 2]", "(1,2]", False, "interval", "training"),
    ("(1,2)", "(1,2]", False, "interval", "training"),
    ("[-3, \\infty)", "[-3,\\infty)", True, "interval", "training"),
    ("(-\\infty, 0) \\cup (1, \\infty)", "(-\\infty,0)\\cup(1,\\infty)", True, "interval", "training"),
    ("(-\\infty, 0) \\cup (1, \\infty)", "(-\\infty,0]\\cup(1,\\infty)", False, "interval", "training"),
    ("(-\\infty,5]", "(-\\infty, 5]", True, "interval", "training"),
    ("x \\in [2, 7]", "[2,7]", True, "interval", "training"),
    ("[2,7)", "[2,7]", False, "interval", "training"),
    ("\\left[ -\\frac{1}{2}, \\frac{1}{2} \\right]", "[-0.5, 0.5]", True, "interval", "training"),
    # sets vs tuples
    ("\\{1, 2\\}", "\\{2, 1\\}", True, "sets", "training"),
    ("\\{1,2,3\\}", "\\{1,2\\}", False, "sets", "training"),
    ("\\{1, 2\\}", "(1, 2)", False, "sets_vs_tuples", "training"),
    ("(1, 2)", "\\{1, 2\\}", False, "sets_vs_tuples", "training"),
    ("(2, 1)", "(1, 2)", False, "tuples", "training"),
    ("(1, 2)", "(1,2)", True, "tuples", "training"),
    ("(3, -4)", "(3,-4)", True, "tuples", "training"),
    ("(-4, 3)", "(3,-4)", False, "tuples", "training"),
    ("(1, 2, 3)", "(1,2,3)", True, "tuples", "training"),
    ("(1, 2)", "(1, 2, 3)", False, "tuples", "training"),
    ("1, 2", "2, 1", True, "solution_list", "training"),
    ("-2, 3", "3, -2", True, "solution_list", "training"),
    ("-2, 3", "3, 2", False, "solution_list", "training"),
    ("\\{3, -2\\}", "-2, 3", True, "solution_list", "training"),
    ("x = 1, 2", "1,2", True, "solution_list", "training"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)", True, "tuples", "training"),
    ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", True, "tuples", "training"),
    ("(3, \\frac{\\pi}{3})", "\\left( 3, \\frac{\\pi}{2} \\right)", False, "tuples", "training"),
    ("(\\frac{\\pi}{2}, 3)", "\\left( 3, \\frac{\\pi}{2} \\right)", False, "tuples", "training"),
    ("\\emptyset", "\\varnothing", True, "sets", "training"),
    ("\\{\\}", "\\{1\\}", False, "sets", "training"),
    # repeating decimals
    ("0.\\overline{3}", "\\frac{1}{3}", True, "repeating_decimal", "training"),
    ("0.\\overline{6}", "\\frac{2}{3}", True, "repeating_decimal", "training"),
    ("0.1\\overline{6}", "\\frac{1}{6}", True, "repeating_decimal", "training"),
    ("0.\\overline{36}", "\\frac{4}{11}", True, "repeating_decimal", "training"),
    ("1.\\overline{142857}", "\\frac{8}{7}", True, "repeating_decimal", "training"),
    ("0.\\overline{3}", "\\frac{1}{4}", False, "repeating_decimal", "training"),
    ("0.3", "\\frac{1}{3}", False, "repeating_decimal", "training"),
    ("0.33", "\\frac{1}{3}", False, "repeating_decimal", "training"),
    ("\\frac{1}{3}", "0.\\overline{3}", True, "repeating_decimal", "training"),
    # matrices and vectors
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True, "matrix", "training"),
    ("\\begin{bmatrix} 1 & 0 \\\\ 0 & 1 \\end{bmatrix}", "\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}", True,
     "matrix", "training"),
    ("\\begin{pmatrix} 0 & 1 \\\\ 1 & 0 \\end{pmatrix}", "\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}", False,
     "matrix", "training"),
    ("\\begin{pmatrix} 1/2 \\\\ -3 \\end{pmatrix}", "\\begin{pmatrix} \\frac{1}{2} \\\\ -3 \\end{pmatrix}", True,
     "matrix", "training"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 & 2 \\end{pmatrix}", False, "matrix", "training"),
    # A column vector is the tuple of its entries (MATH's vector notation; issue 16 relabelled this pair).
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(1, 2)", True, "matrix", "training"),
    # multiple choice
    ("(A)", "A", True, "multiple_choice", "training"),
    ("\\text{(B)}", "B", True, "multiple_choice", "training"),
    ("\\textbf{(C)}", "C", True, "multiple_choice", "training"),
    ("C", "\\text{(C)}", True, "multiple_choice", "training"),
    ("(D)", "E", False, "multiple_choice", "training"),
    ("\\text{A}", "B", False, "multiple_choice", "training"),
    ("c", "C", True, "multiple_choice", "training"),
    # text wrappers
    ("\\text{Monday}", "\\text{Monday}", True, "text", "training"),
    ("Monday", "\\text{Monday}", True, "text", "training"),
    ("\\text{monday}", "\\text{Monday}", True, "text", "training"),
    ("\\text{Tuesday}", "\\text{Monday}", False, "text", "training"),
    ("\\text{even}", "\\text{odd}", False, "text", "training"),
    ("\\textbf{yes}", "\\text{Yes}", True, "text", "training"),
    ("\\mathrm{no}", "\\text{No}", True, "text", "training"),
    # percent
    ("25\\%", "25", True, "percent", "training"),
    ("25\\%", "25\\%", True, "percent", "training"),
    ("25", "25\\%", True, "percent", "training"),
    ("26\\%", "25\\%", False, "percent", "training"),
    ("12.5\\%", "12.5", True, "percent", "training"),
    # degrees
    ("30^\\circ", "30", True, "degrees", "training"),
    ("30^{\\circ}", "30^\\circ", True, "degrees", "training"),
    ("30", "30^\\circ", True, "degrees", "training"),
    ("60^\\circ", "30^\\circ", False, "degrees", "training"),
    ("30 \\text{ degrees}", "30", True, "degrees", "training"),
    # dfrac / tfrac / left-right / spaces / trailing dot
    ("\\dfrac{3}{4}", "\\frac{3}{4}", True, "frac_forms", "training"),
    ("\\tfrac{3}{4}", "\\frac34", True, "frac_forms", "training"),
    ("\\frac34", "0.75", True, "frac_forms", "training"),
    ("\\frac12", "0.5", True, "frac_forms", "training"),
    ("0.5", "\\frac{1}{2}", True, "frac_forms", "training"),
    (".5", "\\frac{1}{2}", True, "frac_forms", "training"),
    ("-\\frac{1}{2}", "-0.5", True, "frac_forms", "training"),
    ("\\frac{-1}{2}", "-\\frac{1}{2}", True, "frac_forms", "training"),
    ("\\frac{1}{2}", "-\\frac{1}{2}", False, "frac_forms", "training"),
    ("\\frac{2}{4}", "\\frac{1}{2}", True, "frac_forms", "training"),
    ("\\frac{9}{5}", "1\\frac{4}{5}", True, "mixed_number", "training"),
    ("1.8", "1\\frac{4}{5}", True, "mixed_number", "training"),
    ("\\frac{4}{5}", "1\\frac{4}{5}", False, "mixed_number", "training"),
    ("\\left( 1, 2 \\right)", "(1,2)", True, "left_right", "training"),
    ("  7 ", "7", True, "spaces", "training"),
    ("7.", "7", True, "trailing_dot", "training"),
    ("1 000", "1000", True, "spaces", "training"),
    ("10{,}000", "10000", True, "thousands_separator", "training"),
    # numbers and tolerance
    ("3.14159", "\\pi", False, "numeric_vs_symbolic", "training"),
    ("204.01", "204", False, "tolerance", "training"),
    ("204.0000001", "204", True, "tolerance", "training"),
    ("0.333333333", "\\frac{1}{3}", True, "tolerance", "training"),
    ("1.4142", "\\sqrt{2}", False, "numeric_vs_symbolic", "training"),
    ("-0", "0", True, "zero", "training"),
    ("0.0", "0", True, "zero", "training"),
    # symbolic
    ("2\\sqrt{3}", "\\sqrt{12}", True, "radicals", "training"),
    ("\\sqrt{3}/3", "\\frac{\\sqrt{3}}{3}", True, "radicals", "training"),
    ("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}", True, "radicals", "training"),
    ("\\sqrt{3}", "\\frac{\\sqrt{3}}{3}", False, "radicals", "training"),
    ("\\sqrt2", "\\sqrt{2}", True, "radicals", "training"),
    ("x^2+2x+1", "(x+1)^2", True, "polynomial", "training"),
    ("x^2+2x-1", "(x+1)^2", False, "polynomial", "training"),
    ("1+n^2", "n^{2}+1", True, "polynomial", "training"),
    ("-q + p", "p - q", True, "polynomial", "training"),
    ("q - p", "p - q", False, "polynomial", "training"),
    ("6+9i", "6+9i", True, "complex", "training"),
    ("9i+6", "6+9i", True, "complex", "training"),
    ("6-9i", "6+9i", False, "complex", "training"),
    ("\\frac{\\pi}{2}", "\\frac{\\pi}{2}", True, "pi", "training"),
    ("\\pi/2", "\\frac{\\pi}{2}", True, "pi", "training"),
    ("90^\\circ", "\\frac{\\pi}{2}", False, "pi", "training"),
    ("2\\pi", "\\pi", False, "pi", "training"),
    ("\\infty", "\\infty", True, "infinity", "training"),
    ("-\\infty", "\\infty", False, "infinity", "training"),
    ("\\log_2 8", "3", True, "logs", "training"),
    ("e^{2}", "e^2", True, "exp", "training"),
    # assignments / equations
    ("x = 5", "5", True, "assignment", "training"),
    ("k=-3", "-3", True, "assignment", "training"),
    ("x = 5", "6", False, "assignment", "training"),
    ("y = 2x + 3", "y=2x+3", True, "equation", "training"),
    ("y = 2x - 3", "y=2x+3", False, "equation", "training"),
    ("p(x)=\\frac{(x-1)(x-2)}{6}", "p(x)=\\frac{(x-1)(x-2)}{6}", True, "equation", "training"),
    # extraction edge cases (RAW: the whole response is given)
    ("RAW:The result is \\boxed{\\frac{1}{\\sqrt{2}}} indeed.", "\\frac{\\sqrt{2}}{2}", True, "nested_braces",
     "training"),
    ("RAW:First \\boxed{3}, then on reflection \\boxed{4}.", "4", True, "last_boxed", "training"),
    ("RAW:First \\boxed{4}, then on reflection \\boxed{3}.", "4", False, "last_boxed", "training"),
    ("RAW:so the answer is \\boxed 5.", "5", True, "boxed_no_braces", "training"),
    ("RAW:$\\boxed 7$", "7", True, "boxed_no_braces", "training"),
    ("RAW:final: \\fbox{12}", "12", True, "fbox", "training"),
    ("RAW:\\boxed{\\text{(C)}}", "C", True, "multiple_choice", "training"),
    ("RAW:The answer is 42.", "42", False, "no_box_training", "training"),
    ("RAW:The answer is 42.", "42", True, "answer_is", "eval"),
    ("RAW:Therefore, the final answer is $\\frac{1}{2}$. I hope it is correct.", "0.5", True, "answer_is", "eval"),
    ("RAW:42", "42", True, "bare_answer", "eval"),
    ("RAW:$\\frac{3}{4}$", "0.75", True, "bare_answer", "eval"),
    ("RAW:42", "42", False, "no_box_training", "training"),
    ("RAW:After computing we get 17 apples and then 3 more, total 20", "20", True, "last_number", "eval"),
    ("RAW:After computing we get 17 apples and then 3 more, total 20", "17", False, "last_number", "eval"),
    ("RAW:I could not solve it.", "3", False, "no_answer", "training"),
    ("RAW:", "3", False, "no_answer", "training"),
    ("RAW:\\boxed{}", "3", False, "no_answer", "training"),
    ("RAW:The answer is \\boxed{\\frac{1}{", "3", False, "malformed", "training"),
    ("RAW:```output\n\\boxed{5}\n```\nSo \\boxed{6}", "6", True, "observation_boxed", "training"),
    ("RAW:```python\nprint(5)\n```\n```output\n\\boxed{5}\n```\n", "5", True, "observation_boxed", "training"),
    # pathological inputs (must be wrong, fast)
    ("2^{10^{100}}", "5", False, "pathological", "training"),
    ("10^{10^{10}}", "1", False, "pathological", "training"),
    ("9!!!!!!!!!!", "1", False, "pathological", "training"),
    ("100000000!", "1", False, "pathological", "training"),
    ("\\frac{\\frac{\\frac{\\frac{\\frac{\\frac{\\frac{\\frac{\\frac{\\frac{\\frac{\\frac{\\frac{1}{2}}{2}}{2}}{2}}{2}}{2}}"
     "{2}}{2}}{2}}{2}}{2}}{2}}{2}", "1", False, "pathological", "training"),
    ("\\sqrt{\\sqrt{\\frac{(}{", "1", False, "pathological", "training"),
    ("\\left( \\right] \\begin{pmatrix", "1", False, "pathological", "training"),
]


# Classes a new user found wrong verdicts in (issue 16), both directions: equivalent forms and
# near misses. Integers and exact forms compare exactly; only inexact decimals get a tolerance.
CLASSES: list[tuple[str, str, bool, str, str]] = [
    # integers are exact: no relative tolerance between two integers
    ("1234567", "1234568", False, "integer_exact", "training"),
    ("1234568", "1234567", False, "integer_exact", "training"),
    ("1000000", "1000001", False, "integer_exact", "training"),
    ("9999999", "10000000", False, "integer_exact", "training"),
    ("123456789", "123456788", False, "integer_exact", "training"),
    ("-2000001", "-2000000", False, "integer_exact", "training"),
    ("1499999", "1.5e6", False, "integer_exact", "training"),
    ("1500000", "1.5e6", True, "integer_exact", "training"),
    ("1234567", "1234567", True, "integer_exact", "training"),
    ("1234567.0", "1234567", True, "integer_exact", "training"),
    ("2^{20}", "1048576", True, "integer_exact", "training"),
    ("1048577", "2^{20}", False, "integer_exact", "training"),
    ("\\frac{1000001}{1000000}", "1", False, "integer_exact", "training"),
    ("0.30000000000000004", "0.3", True, "integer_exact", "training"),
    ("0.3333333333", "\\frac{1}{3}", True, "integer_exact", "training"),
    ("0.33", "\\frac{1}{3}", False, "integer_exact", "training"),
    # thousands separators
    ("12,500", "12500", True, "thousands_separator", "training"),
    ("12500", "12,500", True, "thousands_separator", "training"),
    ("12{,}500", "12500", True, "thousands_separator", "training"),
    ("12,500", "12{,}500", True, "thousands_separator", "training"),
    ("12\\,500", "12500", True, "thousands_separator", "training"),
    ("\\$12,500", "12500", True, "thousands_separator", "training"),
    ("1,234,567", "1234567", True, "thousands_separator", "training"),
    ("1,234,567.5", "1234567.5", True, "thousands_separator", "training"),
    ("12,500 \\text{ dollars}", "12500", True, "thousands_separator", "training"),
    ("12,500", "12501", False, "thousands_separator", "training"),
    ("12,500", "1250", False, "thousands_separator", "training"),
    ("1,250", "12500", False, "thousands_separator", "training"),
    ("12{,}500", "125000", False, "thousands_separator", "training"),
    ("1,234,567", "1234568", False, "thousands_separator", "training"),
    ("12,500", "12", False, "thousands_separator", "training"),
    # decimals written with a trailing dot
    ("-2./5", "-\\frac{2}{5}", True, "trailing_dot_decimal", "training"),
    ("7./4", "\\frac{7}{4}", True, "trailing_dot_decimal", "training"),
    ("2./5", "0.4", True, "trailing_dot_decimal", "training"),
    ("\\frac{3.}{4}", "0.75", True, "trailing_dot_decimal", "training"),
    ("7./4", "1.75", True, "trailing_dot_decimal", "training"),
    ("12.", "12", True, "trailing_dot_decimal", "training"),
    ("(1., 2.)", "(1,2)", True, "trailing_dot_decimal", "training"),
    ("-2./5", "\\frac{2}{5}", False, "trailing_dot_decimal", "training"),
    ("7./4", "\\frac{7}{5}", False, "trailing_dot_decimal", "training"),
    ("2./5", "0.5", False, "trailing_dot_decimal", "training"),
    ("7./4", "\\frac{4}{7}", False, "trailing_dot_decimal", "training"),
    ("(1., 3.)", "(1,2)", False, "trailing_dot_decimal", "training"),
    ("1.\\overline{3}", "\\frac{4}{3}", True, "trailing_dot_decimal", "training"),
    # \pm against the listed values
    ("3 \\pm \\sqrt{2}", "3+\\sqrt{2}, 3-\\sqrt{2}", True, "plus_minus", "training"),
    ("3 \\pm \\sqrt{2}", "3-\\sqrt{2}, 3+\\sqrt{2}", True, "plus_minus", "training"),
    ("\\pm 2", "2, -2", True, "plus_minus", "training"),
    ("\\pm 2", "-2, 2", True, "plus_minus", "training"),
    ("1 \\pm i", "1+i, 1-i", True, "plus_minus", "training"),
    ("\\frac{1 \\pm \\sqrt{5}}{2}", "\\frac{1+\\sqrt{5}}{2}, \\frac{1-\\sqrt{5}}{2}", True, "plus_minus", "training"),
    ("3 \\pm \\sqrt{3}", "3+\\sqrt{2}, 3-\\sqrt{2}", False, "plus_minus", "training"),
    ("\\pm 2", "2", False, "plus_minus", "training"),
    ("\\pm 3", "2, -2", False, "plus_minus", "training"),
    ("1 \\pm 2i", "1+i, 1-i", False, "plus_minus", "training"),
    ("-3 \\pm \\sqrt{2}", "3+\\sqrt{2}, 3-\\sqrt{2}", False, "plus_minus", "training"),
    # equations whose variable names differ but define the same function
    ("g(t)=2t", "g(s)=2s", True, "renamed_function", "training"),
    ("g(s)=2s", "g(t)=2t", True, "renamed_function", "training"),
    ("f(x)=x^2+1", "f(t)=t^2+1", True, "renamed_function", "training"),
    ("f(t) = 1 + t^2", "f(x)=x^2+1", True, "renamed_function", "training"),
    ("f(x)=\\tan x", "f(t)=\\tan t", True, "renamed_function", "training"),
    ("f(x)=ax+b", "f(t)=at+b", True, "renamed_function", "training"),
    ("f(x,y)=x-y", "f(a,b)=a-b", True, "renamed_function", "training"),
    ("h(n)=\\frac{n(n+1)}{2}", "h(k)=\\frac{k(k+1)}{2}", True, "renamed_function", "training"),
    ("p(z)=z^3-z", "p(x)=x^3-x", True, "renamed_function", "training"),
    ("g(t)=2t", "g(s)=3s", False, "renamed_function", "training"),
    ("g(t)=2t", "g(s)=2t", False, "renamed_function", "training"),
    ("f(x)=x^2+1", "f(t)=t^2-1", False, "renamed_function", "training"),
    ("f(x)=x^2+1", "g(t)=t^2+1", False, "renamed_function", "training"),
    ("f(x)=ax+b", "f(t)=bt+a", False, "renamed_function", "training"),
    ("f(x,y)=y-x", "f(a,b)=a-b", False, "renamed_function", "training"),
    ("h(n)=\\frac{n(n-1)}{2}", "h(k)=\\frac{k(k+1)}{2}", False, "renamed_function", "training"),
    # a vector as a matrix against a tuple
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(1,2)", True, "vector_tuple", "training"),
    ("(1,2)", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", True, "vector_tuple", "training"),
    ("\\begin{bmatrix} 5 \\\\ 6 \\end{bmatrix}", "(5, 6)", True, "vector_tuple", "training"),
    ("\\begin{bmatrix} -1 \\\\ 0 \\\\ 4 \\end{bmatrix}", "(-1, 0, 4)", True, "vector_tuple", "training"),
    ("\\begin{pmatrix} \\frac{1}{2} \\\\ -3 \\end{pmatrix}", "(0.5,-3)", True, "vector_tuple", "training"),
    ("\\begin{pmatrix} 1/\\sqrt{2} \\\\ 1 \\end{pmatrix}", "\\left(\\frac{\\sqrt{2}}{2}, 1\\right)", True,
     "vector_tuple", "training"),
    ("(3, -7)", "\\begin{pmatrix} 3 \\\\ -7 \\end{pmatrix}", True, "vector_tuple", "training"),
    ("\\begin{pmatrix} 1 \\\\ 3 \\end{pmatrix}", "(1,2)", False, "vector_tuple", "training"),
    ("\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}", "(1,2)", False, "vector_tuple", "training"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\\\ 3 \\end{pmatrix}", "(1,2)", False, "vector_tuple", "training"),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "(1,2,3,4)", False, "vector_tuple", "training"),
    ("(1,2)", "\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}", False, "vector_tuple", "training"),
    ("\\{1, 2\\}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", False, "vector_tuple", "training"),
    ("\\begin{pmatrix} 1/\\sqrt{2} \\\\ 2 \\end{pmatrix}", "\\left(\\frac{\\sqrt{2}}{2}, 1\\right)", False,
     "vector_tuple", "training"),
    # word answers with or without an article
    ("\\text{a parabola}", "\\text{parabola}", True, "text_article", "training"),
    ("\\text{parabola}", "\\text{a parabola}", True, "text_article", "training"),
    ("\\text{the parabola}", "\\text{parabola}", True, "text_article", "training"),
    ("\\text{an ellipse}", "\\text{ellipse}", True, "text_article", "training"),
    ("\\text{A Hyperbola}", "\\text{hyperbola}", True, "text_article", "training"),
    ("\\text{a circle}", "\\text{(B) circle}", False, "text_article", "training"),
    ("\\text{an ellipse}", "\\text{parabola}", False, "text_article", "training"),
    ("\\text{a parabola}", "\\text{hyperbola}", False, "text_article", "training"),
    ("\\text{the line}", "\\text{circle}", False, "text_article", "training"),
    ("\\text{a}", "\\text{parabola}", False, "text_article", "training"),
    ("\\text{parabolas}", "\\text{a parabola}", False, "text_article", "training"),
    # percentages: the number written with or without the sign, never its decimal fraction
    ("25\\%", "25", True, "percent_vs_decimal", "training"),
    ("25", "25\\%", True, "percent_vs_decimal", "training"),
    ("25 \\text{ percent}", "25\\%", True, "percent_vs_decimal", "training"),
    ("12.5\\%", "12.5\\%", True, "percent_vs_decimal", "training"),
    ("40\\%", "40", True, "percent_vs_decimal", "training"),
    ("0.25", "25\\%", False, "percent_vs_decimal", "training"),
    ("25\\%", "0.25", False, "percent_vs_decimal", "training"),
    ("\\frac{1}{4}", "25\\%", False, "percent_vs_decimal", "training"),
    ("0.125", "12.5\\%", False, "percent_vs_decimal", "training"),
    ("0.4", "40", False, "percent_vs_decimal", "training"),
    ("0.25\\%", "25\\%", False, "percent_vs_decimal", "training"),
    ("26\\%", "25\\%", False, "percent_vs_decimal", "training"),
]


def classes() -> list[dict[str, object]]:
    return [{"prediction": f"Working through it, we get $\\boxed{{{pred}}}$.", "reference": ref, "expected": expected,
             "family": family, "source": "classes", "mode": mode} for pred, ref, expected, family, mode in CLASSES]


def hard() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for pred, ref, expected, family, mode in HARD:
        text = pred[4:] if pred.startswith("RAW:") else f"Working through it, we get $\\boxed{{{pred}}}$."
        rows.append({"prediction": text, "reference": ref, "expected": expected, "family": family,
                     "source": "hand", "mode": mode})
    return rows


def main() -> None:
    rng = random.Random(20250305)
    rows = generated(rng) + hard() + classes()
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    n_true = sum(1 for r in rows if r["expected"])
    print(f"wrote {len(rows)} cases ({n_true} equivalent, {len(rows) - n_true} not) to {OUT}")


if __name__ == "__main__":
    main()
