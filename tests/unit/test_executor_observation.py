"""The ToRL observation rules: hand-checked cases and the shared vectors rollout's tests also read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torl.executor.observation import TIMED_OUT_TEXT, Captured, observation, observation_of

VECTORS = json.loads((Path(__file__).parents[1] / "data" / "observation_vectors.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("v", VECTORS["vectors"], ids=[v["name"] for v in VECTORS["vectors"]])
def test_shared_vectors(v: dict[str, object]) -> None:
    assert observation(str(v["stdout"]), str(v["stderr"]), int(v["exit_code"])) == v["observation"]  # type: ignore[call-overload]


def test_rules_by_hand() -> None:
    tb = 'Traceback (most recent call last):\n  File "<string>", line 1, in <module>\nKeyError: 3\n'
    assert observation("5\n", "", 0) == "5"
    assert observation("", tb, 1) == "KeyError: 3"
    assert observation("partial\n", tb, 1) == "partial"
    assert observation("", "", 0) == TIMED_OUT_TEXT
    assert observation("", "", -9) == TIMED_OUT_TEXT
    assert observation("Error: x\nlast\n", "", 0) == "last"
    long = "".join(chr(ord("a") + i % 26) for i in range(300))
    assert observation(long, "", 0) == long[:128] + "..." + long[-128:]
    assert observation("z" * 255, "", 0) == "z" * 255
    assert len(observation("z" * 256, "", 0)) == 259


def test_vectors_cover_the_required_cases() -> None:
    names = " ".join(v["name"] for v in VECTORS["vectors"]).lower()
    for needed in ("timeout", "traceback", "long", "unicode", "empty"):
        assert needed in names


def _capture(text: str, cap: int = 1024, tail: int = 256, chunk: int = 100) -> Captured:
    """Feed `text` through the agent's real capture in chunks; return what core.py would build."""
    from torl.executor.agent import Capture
    from torl.executor.core import captured

    c = Capture(cap, tail)
    data = text.encode()
    for i in range(0, len(data), chunk):
        c.add(data[i : i + chunk])
    f = c.fields("s")
    import base64

    return captured(base64.b64decode(f["s"]), base64.b64decode(f["s_tail"]), f["s_omitted"], f["s_has_error"])


LONG = "\n".join(f"line {i}" for i in range(2000))


@pytest.mark.parametrize(
    ("stdout", "stderr", "exit_code"),
    [
        (LONG + "\nthe end\n", "", 0),  # no "Error": first 128 + ... + last 128 of the whole text
        ("Error early\n" + LONG + "\nlast line\n", "", 0),  # "Error" only in the dropped middle... and head
        (LONG[:5000] + " ValueError in the middle " + LONG + "\nfinal\n", "", 0),  # "Error" only in the middle
        (LONG + "\nKeyError: 3\n\n\n", "", 1),  # the last line is at the true end
        ("", LONG + '\nTraceback (most recent call last):\n  File "<string>", line 1\nZeroDivisionError: x\n', 1),
        ("x" * 1500, "", 0),  # over the cap, but head + tail hold it all: exact, no gap
        ("é" * 3000, "", 0),  # a tail cut inside a UTF-8 character
        ("", "", 0),
        ("short\n", "", 0),
    ],
)
def test_capped_output_gives_the_observation_of_the_whole_output(stdout: str, stderr: str, exit_code: int) -> None:
    assert observation_of(_capture(stdout), _capture(stderr), exit_code) == observation(stdout, stderr, exit_code)


def test_error_straddling_two_chunks_is_found() -> None:
    text = "a" * 1100 + "Err" + "or" + "b" * 3000 + "\nend"
    for chunk in (1, 7, 1102, 1103, 1104, 4096):
        c = _capture(text, chunk=chunk)
        assert c.omitted > 0 and c.has_error, chunk
    assert observation_of(_capture(text), Captured(""), 0) == "end"


def test_last_line_longer_than_the_tail_keeps_its_true_end() -> None:
    text = "Error\n" + "y" * 5000 + "z" * 100
    got = observation_of(_capture(text), Captured(""), 0)
    want = observation(text, "", 0)
    assert got.endswith("z" * 100) and got[-128:] == want[-128:]
