"""Is a predicted answer equivalent to the reference?

Two layers, as the design asks:
- `quick_judge` (cheap, no sympy; runs in the caller's process): the usual MATH string
  normalizations, numbers compared exactly (a tolerance only where a side is an inexact decimal,
  see `numbers_equal`), and shape guards (a set is never a tuple or interval). It answers
  definitively when it can, and None when a symbolic judge is needed.
- `full_judge` (runs inside a worker process, see pool.py): function definitions compared with
  their variables renamed (`g(t)=2t` is `g(s)=2s`), math-verify parse + verify with its
  signal-based timeouts, then the structural string fallback (tuples, sets, comma lists compared
  element by element with the same normalizations).

The final verdict is the OR of the judges, except that a shape mismatch vetoes math-verify, which
would otherwise accept e.g. `\\{1,2\\}` against the interval `(1,2)`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from functools import lru_cache
from typing import Any

# ---------------------------------------------------------------- normalization


_TEXT_CMDS_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname)\s*\{")
_SPACING_RE = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~")
_SIZING_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])|\\displaystyle")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree")
_FRAC_SHORT_RE = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_HALF_SHORT_RE = re.compile(r"\\frac\s*\{([^{}]*)\}\s*(\d)")
_SQRT_SHORT_RE = re.compile(r"\\sqrt\s*(\d)")
_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_ASSIGN_RE = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(?!.*=)")
_CHOICE_RE = re.compile(r"^\(?([A-Ea-e])\)?$")
_ARTICLE_RE = re.compile(r"^(?:a|an|the)\s+(?=[A-Za-z])", re.IGNORECASE)
_WORDS_RE = re.compile(r"[A-Za-z][A-Za-z \-]*")
_TRAILING_DOT_RE = re.compile(r"(\d)\.(?![\d\\])")  # "7./4" → "7/4"; "1.\overline{3}" keeps its dot
_VECTOR_RE = re.compile(r"^\\begin\{([pb])matrix\}(.*)\\end\{\1matrix\}$", re.DOTALL)
_UNIT_WORDS = (
    "square units|square feet|square inches|square meters|square centimeters|sq units|units|unit|"
    "dollars|dollar|cents|cent|degrees|degree|cm|mm|km|meters|meter|centimeters|inches|inch|feet|foot|"
    "miles|mile|mph|hours|hour|minutes|minute|seconds|second|days|day|weeks|years|grams|kg|liters|ml|"
    "pounds|ounces|people|students|ways|points|times"
)
_UNIT_SUFFIX_RE = re.compile(rf"^(.*?\d)\s*(?:\\text\{{\s*(?:{_UNIT_WORDS})\s*\}}|(?:{_UNIT_WORDS}))(?:\^[23])?$")


def _unwrap_text_commands(s: str) -> str:
    """`\\text{abc}` → `abc` (nested braces respected)."""
    for _ in range(20):
        m = _TEXT_CMDS_RE.search(s)
        if not m:
            return s
        depth = 1
        j = m.end()
        while j < len(s) and depth:
            if s[j] == "{":
                depth += 1
            elif s[j] == "}":
                depth -= 1
            j += 1
        inner = s[m.end() : j - 1] if depth == 0 else s[m.end() :]
        s = s[: m.start()] + inner + s[j:]
    return s


def _vector_as_tuple(s: str) -> str:
    """A one-column pmatrix/bmatrix (a vector, MATH's notation) → the tuple `(a,b,...)`.

    MATH writes vectors as column matrices; a tuple with the same entries in order is the same
    vector. A row matrix or anything with two or more columns stays a matrix."""
    m = _VECTOR_RE.fullmatch(s)
    if not m:
        return s
    body = m.group(2).strip().removesuffix("\\\\")
    rows = [r.strip() for r in body.split("\\\\")]
    cells = [[c.strip() for c in r.split("&")] for r in rows]
    if len(cells) < 2 or any(len(r) != 1 for r in cells):
        return s  # a row vector or a matrix: not a tuple (a row is not a column)
    items = [r[0] for r in cells]
    if any(not i or "\\begin" in i for i in items):
        return s
    return "(" + ",".join(items) + ")"


def normalize(answer: str) -> str:
    """A canonical string form of an answer (the MATH normalizations plus a few more)."""
    s = answer.strip()
    s = s.replace("\n", " ").replace("\\$", "").replace("$", "")
    s = _UNIT_SUFFIX_RE.sub(r"\1", s.strip()) if _UNIT_SUFFIX_RE.match(s.strip()) else s
    s = _unwrap_text_commands(s)
    s = _UNIT_SUFFIX_RE.sub(r"\1", s.strip()) if _UNIT_SUFFIX_RE.match(s.strip()) else s
    if _WORDS_RE.fullmatch(s.strip()):  # a word answer: "a parabola" is "parabola"
        s = _ARTICLE_RE.sub("", s.strip())
    s = _vector_as_tuple(s.strip())
    s = _SIZING_RE.sub("", s)
    s = _SPACING_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _DEGREE_RE.sub("", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("\\varnothing", "\\emptyset").replace("\\infty", "\\infty ")
    s = s.replace("\\le ", "\\leq ").replace("\\ge ", "\\geq ")
    s = s.strip()
    while s.endswith((".", "\\")) and not s.endswith("\\\\"):
        s = s[:-1].rstrip()
    s = _ASSIGN_RE.sub("", s) if len(s) < 200 else s
    s = s.replace(" ", "")
    s = _FRAC_SHORT_RE.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF_SHORT_RE.sub(r"\\frac{\1}{\2}", s)
    s = _SQRT_SHORT_RE.sub(r"\\sqrt{\1}", s)
    s = _TRAILING_DOT_RE.sub(r"\1", s)
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    if s.startswith("."):
        s = "0" + s
    s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)
    s = s.replace("infinity", "\\infty").replace("inf", "\\infty") if s in ("inf", "infinity", "-inf") else s
    choice = _CHOICE_RE.match(s)
    if choice:
        return choice.group(1).upper()
    if re.fullmatch(r"[A-Za-z][A-Za-z ]+", s) and len(s) > 1:
        return s.lower()
    return s


# ---------------------------------------------------------------- numbers


_DEC_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")
_SCI_E_RE = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))[eE]([+-]?\d{1,6})")
_SCI_TIMES_RE = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))(?:\\times|\\cdot|\*)10\^\{?([+-]?\d{1,6})\}?")
_POW10_RE = re.compile(r"10\^\{?([+-]?\d{1,6})\}?")
_FRAC_RE = re.compile(r"([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}")
_SLASH_RE = re.compile(r"([+-]?\d+)/([+-]?\d+)")
_MIXED_RE = re.compile(r"([+-]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}")
_REPEAT_RE = re.compile(r"([+-]?)(\d*)\.(\d*)\\overline\{(\d+)\}")


def parse_number(s: str) -> Fraction | None:
    """A normalized answer that is one plain number (int, decimal, fraction, e-notation,
    `a\\times10^{b}`, repeating decimal `0.\\overline{3}`), exactly; else None."""
    if not s or len(s) > 120:
        return None
    try:
        if _DEC_RE.fullmatch(s):
            return Fraction(s)
        m = _FRAC_RE.fullmatch(s)
        if m:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) == "-" else value
        m = _SLASH_RE.fullmatch(s)
        if m:
            return Fraction(int(m.group(1)), int(m.group(2)))
        m = _SCI_E_RE.fullmatch(s) or _SCI_TIMES_RE.fullmatch(s)
        if m and abs(int(m.group(2))) <= 400:
            return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2))
        m = _POW10_RE.fullmatch(s)
        if m and abs(int(m.group(1))) <= 400:
            return Fraction(10) ** int(m.group(1))
        m = _MIXED_RE.fullmatch(s)
        if m:  # a mixed number: 1\frac{4}{5} = 9/5 (the MATH convention)
            value = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))
            return -value if m.group(1) == "-" else value
        m = _REPEAT_RE.fullmatch(s)
        if m:
            sign, whole, fixed, rep = m.groups()
            base = Fraction(int(whole or "0")) + (Fraction(int(fixed), 10 ** len(fixed)) if fixed else 0)
            value = base + Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(fixed))
            return -value if sign == "-" else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def decimal_unit(s: str) -> Fraction | None:
    """The place value of the last written digit of a decimal with a fractional part (`0.333` → 1/1000), else None.

    Only a plain decimal with digits after its point is inexact: integers, fractions, e-notation,
    radicals and every other exact form have no unit and compare exactly."""
    if not _DEC_RE.fullmatch(s) or "." not in s:
        return None
    digits = len(s.split(".", 1)[1])
    return Fraction(1, 10**digits) if digits else None


def numbers_equal(a: Fraction, b: Fraction, unit_a: Fraction | None, unit_b: Fraction | None,
                  rel_tol: float) -> bool:
    """Exact equality, except where a side is an inexact decimal: then a relative tolerance.

    `unit_a`/`unit_b` (see `decimal_unit`) say whether each side is written as a decimal with a
    fractional part. Only then may the values differ, by at most `rel_tol` relatively:
    `0.3333333` is 1/3 and `0.30000000000000004` is 0.3, but two integers or any two exact forms
    must be equal (1234567 is not 1234568, 1499999 is not 1.5e6)."""
    if a == b:
        return True
    if (unit_a is None and unit_b is None) or rel_tol == 0.0:
        return False
    return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=0.0)


def _numbers(x: str, y: str, rel_tol: float) -> bool | None:
    """Equal / not equal when both normalized answers are plain numbers, else None."""
    a, b = parse_number(x), parse_number(y)
    if a is None or b is None:
        return None
    return numbers_equal(a, b, decimal_unit(x), decimal_unit(y), rel_tol)


# ---------------------------------------------------------------- structure


class Shape(StrEnum):
    SET = "set"
    BRACKETED = "bracketed"  # tuple or interval: (a,b), [a,b), ...
    LIST = "list"  # bare comma list: a, b
    MATRIX = "matrix"
    SCALAR = "scalar"


def split_top_level(s: str, sep: str = ",") -> list[str]:
    parts: list[str] = []
    depth = 0
    start = 0
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in "{}":
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        if c in "{([":
            depth += 1
        elif c in "})]":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(s[start:i])
            start = i + 1
        i += 1
    parts.append(s[start:])
    return parts


def shape_of(s: str) -> Shape:
    if "\\begin{" in s and "matrix" in s:
        return Shape.MATRIX
    if s.startswith("\\{") and s.endswith("\\}"):
        return Shape.SET
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and len(split_top_level(s[1:-1])) > 1:
        return Shape.BRACKETED
    if len(split_top_level(s)) > 1:
        return Shape.LIST
    return Shape.SCALAR


def shapes_conflict(a: Shape, b: Shape) -> bool:
    """True when the two answers cannot be equal whatever their elements (a set is not a tuple)."""
    pair = {a, b}
    return pair == {Shape.SET, Shape.BRACKETED} or (Shape.MATRIX in pair and len(pair) == 2)


def _items(s: str, shape: Shape) -> list[str]:
    if shape is Shape.SET:
        return split_top_level(s[2:-2])
    if shape is Shape.BRACKETED:
        return split_top_level(s[1:-1])
    return split_top_level(s)


def _scalar_equal(a: str, b: str, rel_tol: float) -> bool:
    return a == b or bool(_numbers(a, b, rel_tol))


def structural_equal(pred: str, ref: str, rel_tol: float) -> bool:
    """Normalized answers equal element by element: tuples/intervals in order (same brackets),
    sets and bare comma lists in any order."""
    sp, sr = shape_of(pred), shape_of(ref)
    if sp is Shape.SCALAR and sr is Shape.SCALAR:
        return _scalar_equal(pred, ref, rel_tol)
    if shapes_conflict(sp, sr) or Shape.SCALAR in (sp, sr) or Shape.MATRIX in (sp, sr):
        return False
    ip, ir = _items(pred, sp), _items(ref, sr)
    if len(ip) != len(ir):
        return False
    if sp is Shape.BRACKETED and sr is Shape.BRACKETED:
        return pred[0] == ref[0] and pred[-1] == ref[-1] and all(
            _scalar_equal(x, y, rel_tol) for x, y in zip(ip, ir, strict=True)
        )
    if Shape.BRACKETED in (sp, sr):
        return False
    remaining = list(ir)
    for x in ip:
        hit = next((k for k, y in enumerate(remaining) if _scalar_equal(x, y, rel_tol)), None)
        if hit is None:
            return False
        remaining.pop(hit)
    return True


# ---------------------------------------------------------------- verdicts


class Outcome(StrEnum):
    EQUAL = "equal"
    NOT_EQUAL = "not_equal"
    UNPARSABLE = "unparsable"  # the prediction could not be parsed into math at all
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    method: str  # which judge decided: string, numeric, shape, math_verify, structure


def quick_judge(pred: str, ref: str, rel_tol: float) -> Verdict | None:
    """A definitive verdict from cheap checks, or None when the symbolic judge must decide."""
    np_, nr = normalize(pred), normalize(ref)
    if np_ == nr:
        return Verdict(Outcome.EQUAL, "string")
    numeric = _numbers(np_, nr, rel_tol)
    if numeric is not None:
        return Verdict(Outcome.EQUAL if numeric else Outcome.NOT_EQUAL, "numeric")
    if shapes_conflict(shape_of(np_), shape_of(nr)):
        return Verdict(Outcome.NOT_EQUAL, "shape")
    return None


def _mv_parse(text: str, timeout_s: int) -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return list(
        parse(
            "\\boxed{" + text + "}",
            extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
            parsing_timeout=timeout_s,
            raise_on_error=True,
        )
    )


@lru_cache(maxsize=4096)
def _mv_parse_reference(text: str, timeout_s: int) -> tuple[Any, ...]:
    # A group of 16 responses shares one reference; parse it once per worker.
    return tuple(_mv_parse(text, timeout_s))


_FUNC_DEF_RE = re.compile(
    r"^([A-Za-z](?:_\{?\w+\}?)?)\s*\(\s*([A-Za-z](?:\s*,\s*[A-Za-z])*)\s*\)\s*=\s*(?!.*=)(.+)$", re.DOTALL
)
_CANONICAL_VARS = "xyzwuvpqrt"


def _function_definition(s: str) -> tuple[str, list[str], str] | None:
    """`g(t) = 2t` → ("g", ["t"], "2t") for an answer that defines a function, else None."""
    m = _FUNC_DEF_RE.fullmatch(s.strip().strip("$").strip())
    return (m.group(1), [v.strip() for v in m.group(2).split(",")], m.group(3).strip()) if m else None


_SYMBOL_RE = re.compile(r"\\[A-Za-z]+|[A-Za-z]")


def _letters(expr: str) -> set[str]:
    """The single-letter symbols of a LaTeX expression (letters of commands such as \\tan are not symbols)."""
    return {m for m in _SYMBOL_RE.findall(expr) if not m.startswith("\\")}


def _rename(expr: str, old: list[str], new: list[str]) -> str:
    mapping = dict(zip(old, new, strict=True))
    return _SYMBOL_RE.sub(lambda m: mapping.get(m.group(0), m.group(0)), expr)


def renamed_definitions(pred: str, ref: str) -> tuple[str, str] | None:
    """Both answers define the same function name with as many variables, named differently: their
    right-hand sides with the variables renamed alike (`g(t)=2t`, `g(s)=2s` → "2x", "2x").

    The common names are letters that occur in neither side, so a constant is never captured and a
    name math-verify reads as a unit (`s`, seconds) is not used."""
    dp, dr = _function_definition(pred), _function_definition(ref)
    if dp is None or dr is None or dp[0] != dr[0] or len(dp[1]) != len(dr[1]) or dp[1] == dr[1]:
        return None
    used = _letters(dp[2]) | _letters(dr[2])
    free = [c for c in _CANONICAL_VARS if c not in used]
    if len(free) < len(dr[1]):
        return None
    common = free[: len(dr[1])]
    return _rename(dp[2], dp[1], common), _rename(dr[2], dr[1], common)


def _expand_plus_minus(answer: str, other: str) -> str:
    """`a \\pm b` → `a+b, a-b` when `other` lists values and has no \\pm itself (one \\pm only)."""
    if answer.count("\\pm") != 1 or "\\pm" in other or len(split_top_level(other)) < 2:
        return answer
    return f"{answer.replace(chr(92) + 'pm', '+')}, {answer.replace(chr(92) + 'pm', '-')}"


def full_judge(pred: str, ref: str, rel_tol: float, timeout_s: int) -> Verdict:
    """math-verify, then the structural fallback. Must run in a process's main thread (signals)."""
    from math_verify.errors import TimeoutException

    quick = quick_judge(pred, ref, rel_tol)
    if quick is not None:
        return quick
    pred, ref = _expand_plus_minus(pred, ref), _expand_plus_minus(ref, pred)
    renamed = renamed_definitions(pred, ref)
    if renamed is not None:  # the same function with other variable names: compare the right-hand sides
        pred, ref = renamed
        quick = quick_judge(pred, ref, rel_tol)
        if quick is not None:
            return quick
    np_, nr = normalize(pred), normalize(ref)
    # A vector written as a matrix is compared as its tuple (see `_vector_as_tuple`).
    if _VECTOR_RE.fullmatch(pred.strip()) and np_.startswith("("):
        pred = np_
    if _VECTOR_RE.fullmatch(ref.strip()) and nr.startswith("("):
        ref = nr
    timed_out = False
    parsed_pred = False
    try:
        target = _mv_parse(pred, timeout_s)
        parsed_pred = any(not isinstance(t, str) for t in target)
        gold = list(_mv_parse_reference(ref, timeout_s))
        from math_verify import verify

        if gold and target and verify(gold, target, strict=True, timeout_seconds=timeout_s, raise_on_error=True):
            return Verdict(Outcome.EQUAL, "math_verify")
    except TimeoutException:
        timed_out = True
    except Exception:
        pass
    if structural_equal(np_, nr, rel_tol):
        return Verdict(Outcome.EQUAL, "structure")
    if timed_out:
        return Verdict(Outcome.TIMEOUT, "math_verify")
    return Verdict(Outcome.NOT_EQUAL if parsed_pred else Outcome.UNPARSABLE, "math_verify")
