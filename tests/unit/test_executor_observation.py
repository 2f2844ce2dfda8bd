"""The ToRL observation rules: hand-checked cases and the shared vectors rollout's tests also read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torl.executor.observation import TIMED_OUT_TEXT, observation

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
