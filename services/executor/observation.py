"""The observation text fed back to the model, computed exactly as the ToRL reference does.

The executor owns these rules (docs/architecture.md, DESIGN "The TIR loop"); rollout only
tokenizes the result. Quirks such as the "Timed Out" text for an empty output are copied on
purpose, so a model trained with torl sees what the reference showed it. Shared test vectors:
tests/data/observation_vectors.json.
"""

from __future__ import annotations

TIMED_OUT_TEXT = "timeout_decorator.timeout_decorator.TimeoutError: 'Timed Out'"
HEAD_CHARS = 128
TAIL_CHARS = 128
LONG_CHARS = 256


def observation(stdout: str, stderr: str, exit_code: int) -> str:
    """ToRL's observation for one run.

    stdout if the exit code is 0 or stdout is non-empty, else stderr; if that text contains
    "Error", only its last line is kept (trailing line breaks are ignored, so a traceback gives
    its final `XxxError: ...` line); an empty text becomes the "Timed Out" text; the result is
    stripped, and if 256 characters or longer cut to the first 128 + "..." + the last 128.
    """
    text = stdout if exit_code == 0 or stdout else stderr
    if "Error" in text:
        text = text.rstrip().split("\n")[-1]
    if not text:
        text = TIMED_OUT_TEXT
    text = text.strip()
    if len(text) >= LONG_CHARS:
        text = text[:HEAD_CHARS] + "..." + text[-TAIL_CHARS:]
    return text
