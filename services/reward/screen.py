"""Fast rejection of pathological input before any parser sees it.

math-verify (sympy) can spend unbounded time, or unbounded memory in C code that no signal
interrupts, on inputs such as `2^{10^{100}}`, a megabyte of text or thousands of nested braces.
These checks are linear scans with fixed limits, so such an item costs microseconds and returns
`unparsable` instead of occupying a worker until the hard per-item timeout (the last line of
defence, not the normal path).
"""

from __future__ import annotations

import math
import re

from torl.reward.config import ScreenSettings

_OPEN = "{[("
_CLOSE = "}])"
_DIGIT_RUN_RE = re.compile(r"\d+")
_POWER_RE = re.compile(r"\^|\*\*")
_SCI_RE = re.compile(r"\d[eE]([+-]?\d+)")
_FACTORIAL_RE = re.compile(r"(\d+)\s*!")
_NUMBER_RE = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_PRODUCT_SPLIT_RE = re.compile(r"\\cdot|\\times|(?<!\*)\*(?!\*)")


def nesting_depth(text: str) -> int:
    """Deepest nesting of brackets of any kind (types are not matched: intervals mix them)."""
    depth = best = 0
    for c in text:
        if c in _OPEN:
            depth += 1
            if depth > best:
                best = depth
        elif c in _CLOSE and depth > 0:
            depth -= 1
    return best


def _group_after(text: str, start: int) -> str:
    """The exponent that starts at `start`: a bracketed group, or a run of digits, or one character."""
    n = len(text)
    i = start
    while i < n and text[i] == " ":
        i += 1
    if i >= n:
        return ""
    if text[i] in "{(":
        depth = 0
        for j in range(i, n):
            if text[j] in "{(":
                depth += 1
            elif text[j] in "})":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j]
        return text[i + 1 :]
    m = _DIGIT_RUN_RE.match(text, i)
    if m:
        return m.group(0)
    return text[i]


def _strip_group(s: str) -> str:
    s = s.strip().lstrip("+-").strip()
    while len(s) >= 2 and s[0] in "{(" and s[-1] in "})":
        s = s[1:-1].strip().lstrip("+-").strip()
    return s


def _split_top(s: str, pattern: re.Pattern[str]) -> tuple[str, str] | None:
    """Split at the first match of `pattern` outside brackets."""
    depth = 0
    i = 0
    while i < len(s):
        c = s[i]
        if c in "{(":
            depth += 1
        elif c in "})":
            depth -= 1
        elif depth == 0:
            m = pattern.match(s, i)
            if m:
                return s[:i], s[m.end() :]
        i += 1
    return None


def log10_magnitude(expr: str, _depth: int = 0) -> float | None:
    """log10 of |expr| for purely numeric products/powers (e.g. `10^{100}`), else None."""
    if _depth > 20:
        return math.inf
    s = _strip_group(expr)
    if not s:
        return None
    if _NUMBER_RE.fullmatch(s):
        value = float(s) if len(s) < 300 else math.inf
        return math.log10(value) if value > 0 else 0.0
    product = _split_top(s, _PRODUCT_SPLIT_RE)
    if product is not None:
        left = log10_magnitude(product[0], _depth + 1)
        right = log10_magnitude(product[1], _depth + 1)
        return None if left is None or right is None else left + right
    power = _split_top(s, _POWER_RE)
    if power is not None:
        base = log10_magnitude(power[0], _depth + 1)
        exponent = log10_magnitude(power[1], _depth + 1)
        if base is None or exponent is None:
            return None
        if base <= 0:
            return 0.0
        return math.inf if exponent > 300 else base * 10**exponent
    return None


def screen_text(text: str, limits: ScreenSettings) -> str | None:
    """Why a whole response is refused (size only), or None."""
    if len(text) > limits.max_response_chars:
        return f"response has {len(text)} characters; the limit is {limits.max_response_chars}"
    return None


def screen_answer(answer: str, limits: ScreenSettings, what: str = "answer") -> str | None:
    """Why an extracted answer (or a reference) is refused before verification, or None."""
    if len(answer) > limits.max_answer_chars:
        return f"{what} has {len(answer)} characters; the limit is {limits.max_answer_chars}"
    depth = nesting_depth(answer)
    if depth > limits.max_brace_depth:
        return f"{what} nests brackets {depth} deep; the limit is {limits.max_brace_depth}"
    for run in _DIGIT_RUN_RE.finditer(answer):
        if len(run.group(0)) > limits.max_digits:
            return f"{what} has a {len(run.group(0))}-digit number; the limit is {limits.max_digits} digits"
    max_log = math.log10(limits.max_exponent)
    for m in _POWER_RE.finditer(answer):
        exponent = _group_after(answer, m.end())
        magnitude = log10_magnitude(exponent)
        if magnitude is not None and magnitude > max_log:
            return f"{what} has an exponent above {limits.max_exponent}: {exponent[:40]!r}"
    for m in _SCI_RE.finditer(answer):
        if abs(int(m.group(1)[:12])) > limits.max_exponent:
            return f"{what} has a decimal exponent above {limits.max_exponent}"
    if "!!!" in answer.replace(" ", ""):
        return f"{what} has an iterated factorial"
    for m in _FACTORIAL_RE.finditer(answer):
        if len(m.group(1)) > 12 or int(m.group(1)) > limits.max_exponent:
            return f"{what} has a factorial above {limits.max_exponent}!"
    return None
