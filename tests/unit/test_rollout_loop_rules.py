"""Pure pieces of the TIR loop: program extraction (ToRL rules), prompt checks, overrides, config."""

from __future__ import annotations

import pytest

from torl.common.config import ConfigError, load_settings
from torl.rollout.config import RolloutSettings
from torl.rollout.core import apply_overrides, loop_config_from
from torl.rollout.loop import LoopConfig, PromptRejected, last_closed_python_block, prepare_prompt
from torl.v1 import rollout_pb2


def test_last_closed_block_is_taken() -> None:
    text = "a\n```python\nprint(1)\n```\nb\n```python\nx = 2\nprint(x)\n```\n```output"
    assert last_closed_python_block(text) == "x = 2\nprint(x)\n"


def test_output_line_closes_a_block() -> None:
    # "a line starting with ``` closes it": the stop string line itself closes the block.
    assert last_closed_python_block("```python\nprint(3)\n```output") == "print(3)\n"


def test_unclosed_or_absent_block_runs_nothing() -> None:
    assert last_closed_python_block("```python\nprint(1)") is None
    assert last_closed_python_block("no code here\n```output") is None
    # an earlier closed block does not count when the last one is still open
    assert last_closed_python_block("```python\na\n```\n```python\nb") is None


def test_earlier_block_is_rerun_when_no_new_block() -> None:
    text = "```python\nprint(5)\n```\n```output\n5\n```\nagain\n```output"
    assert last_closed_python_block(text) == "print(5)\n"


class CharEngine:
    """Encodes one id per character (ids are code points), enough to check prompt rules."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)

    async def generate(self, prompt_ids: list[int], params: object) -> object:  # pragma: no cover
        raise NotImplementedError


def test_prompt_checks() -> None:
    cfg = LoopConfig(prompt_template="Q: {problem}\nA:", max_prompt_tokens=20)
    eng = CharEngine()
    assert eng.decode(prepare_prompt(eng, "1+1?", cfg, frozenset(), None).token_ids) == "Q: 1+1?\nA:"
    with pytest.raises(PromptRejected, match="empty") as e:
        prepare_prompt(eng, "  ", cfg, frozenset(), None)
    assert e.value.reason == "empty"
    with pytest.raises(PromptRejected, match="over the prompt budget of 20") as e:
        prepare_prompt(eng, "x" * 50, cfg, frozenset(), None)
    assert e.value.reason == "too_long"
    truncated = prepare_prompt(
        eng, "x" * 50, LoopConfig(**{**cfg.__dict__, "prompt_overflow": "truncate"}), frozenset(), None
    )
    assert len(truncated.token_ids) == 20 and truncated.truncated_from == len("Q: \nA:") + 50
    assert eng.decode(truncated.token_ids).endswith("\nA:")
    with pytest.raises(PromptRejected, match="special or unknown") as e:
        prepare_prompt(eng, "hi\x00", cfg, frozenset({0}), None)
    assert e.value.reason == "bad_tokens"


def test_truncation_is_recorded_on_the_group() -> None:
    import asyncio

    from torl.rollout.engine import GenOutput, GenParams
    from torl.rollout.loop import generate_group
    from torl.v1 import common_pb2, trajectory_pb2

    class OneTokenEngine(CharEngine):
        async def generate(self, prompt_ids: list[int], params: GenParams) -> GenOutput:  # type: ignore[override]
            return GenOutput([ord("!")], [-0.5], "stop", None)

    class NoTools:
        async def run(self, code: str) -> object:  # pragma: no cover - C=0 never calls it
            raise AssertionError("no tool call expected")

    eng = OneTokenEngine()
    cfg = LoopConfig(prompt_template="Q: {problem}\nA:", max_prompt_tokens=20, prompt_overflow="truncate",
                     max_tool_calls=0, group_size=2)
    prompt = trajectory_pb2.Prompt(prompt_id="p1", problem="x" * 50)

    def run(problem: str) -> trajectory_pb2.TrajectoryGroup:
        prepared = prepare_prompt(eng, problem, cfg, frozenset(), None)
        return asyncio.run(generate_group(eng, NoTools(), prompt, prepared, cfg,  # type: ignore[arg-type]
                                          common_pb2.WeightVersion, "r0"))

    group = run("x" * 50)
    assert group.prompt_truncated_from == 56 and len(group.prompt_token_ids) == 20
    assert len(group.notes) == 1
    assert "prompt truncated: 56 tokens" in group.notes[0] and "last 20" in group.notes[0]
    assert "loop.prompt_overflow=truncate" in group.notes[0]
    assert [t.text for t in group.trajectories] == ["!", "!"]
    short = run("1+1?")
    assert short.prompt_truncated_from == 0 and list(short.notes) == []


def test_overrides() -> None:
    base = loop_config_from(RolloutSettings())
    assert (base.group_size, base.max_tool_calls, base.max_response_tokens) == (16, 1, 3072)
    assert base.temperature == 1.0 and base.stop_string == "```output" and base.max_prompt_tokens == 400
    o = rollout_pb2.SamplingOverrides(
        temperature=-1, n=4, has_max_tool_calls=True, max_tool_calls=0, seed=7, has_seed=True
    )
    cfg = apply_overrides(base, o)
    assert (cfg.group_size, cfg.max_tool_calls, cfg.seed, cfg.temperature) == (4, 0, 7, 1.0)
    assert apply_overrides(base, rollout_pb2.SamplingOverrides(temperature=0)).temperature == 0.0


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match=r"rollout\.loop\.max_tool_calls"):
        load_settings(RolloutSettings, overrides={"loop": {"max_tool_calls": -1}})
    with pytest.raises(ConfigError, match="prompt_template"):
        load_settings(RolloutSettings, overrides={"loop": {"prompt_template": "no field"}})
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings(RolloutSettings, overrides={"engine": {"modle_dir": "x"}})


def test_per_round_statuses_keep_rounds_without_code() -> None:
    from torl.rollout.scoring import per_round_statuses
    from torl.v1 import common_pb2, trajectory_pb2

    t = trajectory_pb2.Trajectory(tool_rounds=3)
    t.tool_calls.add(round=1, status=common_pb2.TOOL_STATUS_ERROR)
    t.tool_calls.add(round=2, status=common_pb2.TOOL_STATUS_OK)
    assert per_round_statuses(t) == [
        common_pb2.TOOL_STATUS_UNSPECIFIED,
        common_pb2.TOOL_STATUS_ERROR,
        common_pb2.TOOL_STATUS_OK,
    ]
    # The reward service's rule then sees a successful last round: no execution penalty.
    from torl.reward.config import PenaltySettings
    from torl.reward.rules import ToolStatus, last_round_failed

    names = [
        ToolStatus(common_pb2.ToolStatus.Name(s).removeprefix("TOOL_STATUS_").lower()) for s in per_round_statuses(t)
    ]
    assert not last_round_failed(names, t.tool_rounds)
    assert last_round_failed(names[:2], 2)
    assert PenaltySettings().enabled is False
