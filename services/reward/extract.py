"""Final-answer extraction: the last `\\boxed{...}` as ToRL scores it, plus eval-only fallbacks.

Training looks at the last `\\boxed{...}` / `\\boxed X` / `\\fbox{...}` of the whole response
(observations included) and nothing else, as the reference does. Evaluation may also accept
"the answer is X", a bare one-line answer, or the last number; those are off in training so the
policy is never rewarded for an unboxed guess. Everything here is linear in the text length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from torl.reward.config import FallbackSettings


class Source(StrEnum):
    """Where an answer came from (or why there is none)."""

    BOXED = "boxed"
    ANSWER_IS = "answer_is"
    BARE = "bare"
    LAST_NUMBER = "last_number"
    NONE = "none"  # nothing found: reason no_answer
    MALFORMED = "malformed"  # the last \boxed is never closed (e.g. cut by the length limit): reason unparsable


@dataclass(frozen=True)
class Extraction:
    answer: str | None
    source: Source


_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_IS_RE = re.compile(r"the\s+(?:final\s+)?answer\s+is\s*:?\s*", re.IGNORECASE)
_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_NUMBER_RE = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")


def _matching_brace(text: str, open_at: int) -> int:
    """Index of the `}` closing the `{` at `open_at`, or -1. Escaped braces (`\\{`) do not count."""
    depth = 0
    i = open_at
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def last_boxed(text: str) -> Extraction:
    """The content of the last `\\boxed{...}`, `\\boxed X` or `\\fbox{...}` in `text`."""
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return Extraction(None, Source.NONE)
    m = matches[-1]
    i = m.end()
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        close = _matching_brace(text, i)
        if close < 0:
            return Extraction(None, Source.MALFORMED)
        inner = text[i + 1 : close].strip()
        return Extraction(inner or None, Source.BOXED if inner else Source.NONE)
    if i == m.end():  # `\boxedx` is not a box; `\boxed{` or `\boxed x` are
        return Extraction(None, Source.NONE)
    # `\boxed 5`: the argument runs to the next whitespace, `$` or end of text.
    end = i
    while end < len(text) and text[end] not in " \t\n$":
        end += 1
    inner = text[i:end].rstrip(".,;")
    return Extraction(inner or None, Source.BOXED if inner else Source.NONE)


def _clean_inline(answer: str) -> str:
    answer = answer.strip()
    answer = answer.strip("$").strip()
    if answer.startswith("\\(") and answer.endswith("\\)"):
        answer = answer[2:-2].strip()
    return answer.rstrip(".").strip()


def _answer_is(text: str) -> str | None:
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :]
    line = rest.split("\n", 1)[0]
    # A sentence ends at ". " (a decimal point is followed by a digit, not a space).
    line = re.split(r"\.\s", line, maxsplit=1)[0]
    answer = _clean_inline(line)
    return answer or None


def _looks_bare(text: str, max_chars: int) -> bool:
    """A short single line that is an answer, not a sentence (at most two plain words)."""
    if not text or "\n" in text or len(text) > max_chars:
        return False
    return len(_WORD_RE.findall(text)) <= 2


def extract_answer(text: str, eval_mode: bool, fallbacks: FallbackSettings) -> Extraction:
    """The answer a response gives. Training (`eval_mode=False`) uses the last boxed answer only."""
    boxed = last_boxed(text)
    if boxed.source is not Source.NONE or not eval_mode:
        return boxed
    if fallbacks.answer_is:
        found = _answer_is(text)
        if found:
            return Extraction(found, Source.ANSWER_IS)
    stripped = text.strip()
    if fallbacks.bare_answer and _looks_bare(stripped, fallbacks.bare_answer_max_chars):
        bare = _clean_inline(stripped)
        if bare:
            return Extraction(bare, Source.BARE)
    if fallbacks.last_number:
        numbers = _NUMBER_RE.findall(text)
        if numbers:
            return Extraction(numbers[-1].replace(" ", ""), Source.LAST_NUMBER)
    return Extraction(None, Source.NONE)
