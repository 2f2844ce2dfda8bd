"""The observation text fed back to the model, computed exactly as the ToRL reference does.

The executor owns these rules (docs/architecture.md, DESIGN "The TIR loop"); rollout only
tokenizes the result. Quirks such as the "Timed Out" text for an empty output are copied on
purpose, so a model trained with torl sees what the reference showed it. Shared test vectors:
tests/data/observation_vectors.json.
"""

from __future__ import annotations

from dataclasses import dataclass

TIMED_OUT_TEXT = "timeout_decorator.timeout_decorator.TimeoutError: 'Timed Out'"
HEAD_CHARS = 128
TAIL_CHARS = 128
LONG_CHARS = 256


def observation(stdout: str, stderr: str, exit_code: int) -> str:
    """ToRL's observation for one run (GAIR-NLP/ToRL verl/workers/rollout/vllm_rollout/vllm_rollout_spmd.py).

    stdout if the exit code is 0 or stdout is non-empty, else stderr (:229-232); if that text
    contains "Error", only the last line of the stripped text is kept, so a traceback gives its
    final `XxxError: ...` line (:319); a text that is empty or whitespace only (`print()`) becomes
    the "Timed Out" text (:320); the result is stripped, and if 256 characters or longer cut to the
    first 128 + "..." + the last 128 (:321-323).
    """
    return _from_text(stdout if exit_code == 0 or stdout else stderr)


def _from_text(text: str) -> str:
    if "Error" in text:
        text = text.strip().split("\n")[-1]
    if not text.strip():
        text = TIMED_OUT_TEXT
    text = text.strip()
    if len(text) >= LONG_CHARS:
        text = text[:HEAD_CHARS] + "..." + text[-TAIL_CHARS:]
    return text


# The agent keeps this many bytes of the end of a stream whose head overflowed the output cap.
TAIL_BYTES = 4096


@dataclass(frozen=True)
class Captured:
    """A stream as captured under the output cap: its first bytes, its last bytes, and the gap.

    `head + tail` is the whole stream when `omitted == 0`; otherwise `omitted` bytes between them
    were dropped and `has_error` says whether "Error" occurs anywhere in the whole stream.
    """

    head: str
    tail: str = ""
    omitted: int = 0
    has_error: bool = False

    @property
    def text(self) -> str:
        return self.head + self.tail


def observation_of(stdout: Captured, stderr: Captured, exit_code: int) -> str:
    """`observation()` for streams whose middle may have been dropped by the output cap.

    Exact when nothing was dropped, and when the chosen stream's end holds what the rules need:
    its last line (when it contains "Error") or its last 128 characters (otherwise). Only a last
    line longer than the kept tail (4 KiB) loses its beginning.
    """
    chosen = stdout if exit_code == 0 or stdout.text else stderr
    if chosen.omitted == 0:
        return _from_text(chosen.text)
    if chosen.has_error:
        end = chosen.tail.rstrip()
        return _from_text(end.split("\n")[-1] if end else chosen.head.rstrip().split("\n")[-1])
    head, tail = chosen.head.lstrip(), chosen.tail.rstrip()
    if not head:  # over 64 KiB of leading blanks: the stripped text starts in the dropped part
        return _from_text(tail)
    return head[:HEAD_CHARS] + "..." + tail[-TAIL_CHARS:]
