"""Pure pieces of the TIR loop: program extraction (ToRL rules), prompt checks, overrides, config."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from torl.common.config import ConfigError, load_settings
from torl.executor.observation import observation
from torl.reward.config import PenaltySettings
from torl.reward.rules import ToolStatus, last_round_failed, reward_for
from torl.rollout.config import RolloutSettings
from torl.rollout.core import apply_overrides, loop_config_from
from torl.rollout.engine import GenOutput, GenParams
from torl.rollout.loop import LoopConfig, PromptRejected, prepare_prompt, run_trajectory
from torl.rollout.program import extract_program, round_program
from torl.rollout.scoring import per_round_passed, per_round_statuses
from torl.rollout.tools import ToolResult, passed
from torl.v1 import common_pb2, rollout_pb2

from .. import reference_oracle

LOOP_VECTORS = json.loads((Path(__file__).parents[1] / "data" / "loop_vectors.json").read_text(encoding="utf-8"))


def test_extract_program_matches_the_reference_line_by_line() -> None:
    texts = [
        "a\n```python\nprint(1)\n```\nb\n```python\nx = 2\nprint(x)\n```\n",
        "```python\nprint(3)\n```", "```python\nprint(1)", "no code here\n", "```python\na\n```\n```python\nb",
        "```python\n```\n", "```python\n\n```", "x ```python\ny\n```", "```python\na\n```\n```\nb\n```\n", "",
    ]
    for text in texts:
        assert extract_program(text) == (reference_oracle.extract_program(text) or None), text


def test_round_program_ignores_the_stop_string_and_earlier_rounds() -> None:
    assert round_program("```python\nprint(3)\n```\n```output", "```output") == "print(3)\n"
    # "```output" does not close an open block: the reference never sees the stop string
    assert round_program("```python\nprint(3)\n```output", "```output") is None
    assert round_program("```python\n```\n```output", "```output") is None  # empty block: nothing runs


class CharEngine:
    """Encodes one id per character (ids are code points), enough to check prompt rules."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)

    async def generate(self, prompt_ids: list[int], params: object) -> object:  # pragma: no cover
        raise NotImplementedError


class ScriptedEngine(CharEngine):
    """Answers each generation round with the next scripted round (the stop string kept, as vLLM's ids do)."""

    def __init__(self, rounds: list[dict[str, str]]) -> None:
        self.rounds = list(rounds)
        self.stops: list[tuple[str, ...]] = []

    async def generate(self, prompt_ids: list[int], params: GenParams) -> GenOutput:  # type: ignore[override]
        self.stops.append(params.stop)
        r = self.rounds.pop(0)
        if r["ended"] == "output":
            ids = self.encode(r["text"] + "```output")
            return GenOutput(ids, [-0.1] * len(ids), "stop", "```output")
        ids = self.encode(r["text"])
        return GenOutput(ids, [-0.1] * len(ids), "length" if r["ended"] == "length" else "stop")


class ScriptedTools:
    """The sandbox's scripted answers, turned into results by torl's own rules (observation, passed)."""

    def __init__(self, runs: list[dict[str, object]]) -> None:
        self.runs = list(runs)
        self.programs: list[str] = []

    async def run(self, code: str) -> ToolResult:
        self.programs.append(code)
        r = self.runs.pop(0)
        stdout, stderr, code_ = str(r["stdout"]), str(r["stderr"]), int(r["exit_code"])  # type: ignore[call-overload]
        status = {0: common_pb2.TOOL_STATUS_OK, -9: common_pb2.TOOL_STATUS_TIMEOUT}.get(
            code_, common_pb2.TOOL_STATUS_ERROR)
        return ToolResult(status, observation(stdout, stderr, code_), "", 0.01, passed=passed(status, code_, stdout))


@pytest.mark.parametrize("v", LOOP_VECTORS["vectors"], ids=[v["name"] for v in LOOP_VECTORS["vectors"]])
def test_loop_matches_the_reference_oracle(v: dict[str, Any]) -> None:
    """Program choice per round, observations and the execution penalty, against the reference's rules (C = 0..3)."""
    engine, tools = ScriptedEngine(v["rounds"]), ScriptedTools(v["runs"])
    cfg = LoopConfig(prompt_template="{problem}", max_tool_calls=v["max_tool_calls"], max_response_tokens=4096)
    traj = asyncio.run(run_trajectory(engine, tools, [ord("Q")], cfg, 0, common_pb2.WeightVersion))  # type: ignore[arg-type]
    assert not engine.rounds, "the loop stopped before the reference did"
    assert tools.programs == [p["code"] for p in v["programs"]]
    assert [c.round for c in traj.tool_calls] == [p["round"] for p in v["programs"]]
    for obs in v["observations"]:
        assert f"```output\n{obs}\n```\n" in traj.text
    # stop string in rounds 1..C only; the last round runs to EOS
    assert all(s == ("```output",) for s in engine.stops[: v["max_tool_calls"]])
    assert all(s == () for s in engine.stops[v["max_tool_calls"]:])
    statuses = [ToolStatus.from_proto(s) for s in per_round_statuses(traj)]
    assert last_round_failed(statuses, traj.tool_rounds, per_round_passed(traj)) is v["penalty"]
    on = PenaltySettings(enabled=True)
    reward, applied = reward_for(True, statuses, traj.tool_rounds, on, per_round_passed(traj))
    assert applied is v["penalty"] and reward == (0.5 if v["penalty"] else 1.0)
    # model tokens (the stop string included) trained on; observation tokens never
    model_text = "".join(r["text"] + ("```output" if r["ended"] == "output" else "") for r in v["rounds"])
    assert "".join(chr(i) for i, m in zip(traj.token_ids, traj.loss_mask, strict=True) if m) == model_text


@pytest.mark.parametrize(
    ("status", "cause"),
    [(common_pb2.TOOL_STATUS_REJECTED, "rejected"), (common_pb2.TOOL_STATUS_SANDBOX_ERROR, "sandbox_error")],
)
def test_infrastructure_tool_results_exclude_the_trajectory(status: int, cause: str) -> None:
    """A run the model did not cause (refused, sandbox failure) is never trained on; the reason is recorded."""

    class Refusing:
        async def run(self, code: str) -> ToolResult:
            return ToolResult(status, "", "executor queue full (64 waiting)", 0.0)

    engine = ScriptedEngine([{"text": CODE_ROUND, "ended": "output"}, {"text": "\\boxed{42}", "ended": "eos"}])
    cfg = LoopConfig(prompt_template="{problem}", max_tool_calls=1)
    traj = asyncio.run(run_trajectory(engine, Refusing(), [ord("Q")], cfg, 0, common_pb2.WeightVersion))  # type: ignore[arg-type]
    assert traj.excluded
    assert traj.excluded_reason == f"{cause}: executor queue full (64 waiting)"
    assert [c.status for c in traj.tool_calls] == [status] and not traj.tool_calls[0].passed


CODE_ROUND = "```python\nprint(6*7)\n```\n"


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

    from torl.rollout.engine import GenOutput
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
    from torl.v1 import trajectory_pb2

    t = trajectory_pb2.Trajectory(tool_rounds=3)
    t.tool_calls.add(round=1, status=common_pb2.TOOL_STATUS_ERROR, passed=True)
    t.tool_calls.add(round=2, status=common_pb2.TOOL_STATUS_OK, passed=True)
    assert per_round_statuses(t) == [
        common_pb2.TOOL_STATUS_UNSPECIFIED,
        common_pb2.TOOL_STATUS_ERROR,
        common_pb2.TOOL_STATUS_OK,
    ]
    assert per_round_passed(t) == [False, True, True]
    # The reward service's rule then sees a successful last round: no execution penalty.
    names = [ToolStatus.from_proto(s) for s in per_round_statuses(t)]
    assert not last_round_failed(names, t.tool_rounds, per_round_passed(t))
    assert last_round_failed(names[:1], 1, per_round_passed(t)[:1])
    assert PenaltySettings().enabled is False


def test_reference_vector_files_are_current() -> None:
    """The JSON vectors are exactly what the oracle computes (regenerate with tests/data/make_reference_vectors.py)."""
    import importlib.util

    path = Path(__file__).parents[1] / "data" / "make_reference_vectors.py"
    spec = importlib.util.spec_from_file_location("make_reference_vectors", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    data = path.parent
    assert (data / "loop_vectors.json").read_text(encoding="utf-8") == mod.render(mod.loop_vectors())
    assert (data / "observation_vectors.json").read_text(encoding="utf-8") == mod.render(mod.observation_vectors())
