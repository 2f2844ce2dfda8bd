"""ToRL's text rules for tool calls: which program a round runs and how its output goes back.

Plain text functions with no engine or transport, so pretraining (torl.learner.pretrain) writes
and grades its corpus by the very rules the rollout loop (torl.rollout.loop) applies.
"""

from __future__ import annotations

STOP_STRING = "```output"  # a tool round stops here; the reference's stop string
OBSERVATION_FORMAT = "\n{observation}\n```\n"  # the executor's output as it is put back into the context


def extract_program(text: str) -> str | None:
    """The reference's `extract_program(text, last_only=True)` (GAIR-NLP/ToRL
    verl/workers/rollout/vllm_rollout/vllm_rollout_spmd.py:79-99), None where it returns "".

    A line starting or ending with ```python opens a block (dropping any earlier one); a line
    starting with ``` closes it; lines inside are kept, each with its newline. A block still open
    at the end gives nothing, and so does an empty block (the reference runs a program only when
    the text is non-empty, :102-105 and :304).
    """
    program = ""
    inside = False
    for line in text.split("\n"):
        if line.startswith("```python") or line.endswith("```python"):
            program = ""
            inside = True
        elif line.startswith("```"):
            inside = False
        elif inside:
            program += line + "\n"
    if inside:
        return None
    return program or None


def round_program(round_text: str, stop_string: str) -> str | None:
    """The program a tool round runs: `extract_program` of this round's text up to the stop string.

    The reference sees vLLM's text of the round, which leaves the stop string out (:279, :300), so the
    "```output" line does not close an open block and earlier rounds' blocks are not seen.
    """
    cut = round_text.find(stop_string)
    return extract_program(round_text if cut < 0 else round_text[:cut])
