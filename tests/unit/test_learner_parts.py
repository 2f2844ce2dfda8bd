"""Learner parts without servers: feed order, datasets, staleness rule, step statistics, config
validation, checkpoint durability markers, the report, and the DeepSpeed engine on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from torl.common.config import ConfigError, load_settings
from torl.learner.checkpoint import CheckpointManager
from torl.learner.config import DataSettings, LearnerSettings
from torl.learner.datasets import ArithDataset, FeedOrder, JsonlDataset, load_dataset
from torl.learner.report import summarize, write_report
from torl.learner.sink import trajectory_stats
from torl.v1 import common_pb2, trajectory_pb2


def test_feed_order_is_a_seeded_permutation_per_epoch() -> None:
    a, b = FeedOrder(10, seed=3, shuffle=True), FeedOrder(10, seed=3, shuffle=True)
    first = [a.index(i)[1] for i in range(10)]
    assert sorted(first) == list(range(10)) and first != list(range(10))
    assert [b.index(i)[1] for i in range(10)] == first  # same seed → same order (resume relies on it)
    second = [a.index(i)[1] for i in range(10, 20)]
    assert sorted(second) == list(range(10)) and second != first
    assert a.index(25) == (2, FeedOrder(10, 3, True).index(25)[1])
    assert [FeedOrder(4, 0, False).index(i)[1] for i in range(6)] == [0, 1, 2, 3, 0, 1]


def test_arith_dataset_keeps_eval_out_of_train() -> None:
    ds = ArithDataset(seed=0, train_size=2000, eval_size=50)
    held = {p.problem for p in ds.eval()}
    assert len(held) == 50
    assert not held & {p.problem for p in ds.train()}
    p = ds.train()[0]
    a, rest = p.problem.removeprefix("What is ").removesuffix("?").split("*")
    b, c = rest.split("+")
    assert int(p.answer) == int(a) * int(b) + int(c)
    assert all(32 <= int(x) <= 99 for x in (a, b)) and 10 <= int(c) <= 99
    assert all(len(q.answer) == 4 for q in (*ds.train(), *ds.eval()))


def test_jsonl_dataset_and_plugin_errors(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text('{"id": "a", "problem": "1+1?", "answer": "2"}\n\n{"problem": "2+2?", "answer": "4"}\n')
    ds = JsonlDataset(str(f), "")
    assert [p.answer for p in ds.train()] == ["2", "4"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "x"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        JsonlDataset(str(bad), "")
    with pytest.raises(ValueError, match="module:callable"):
        load_dataset(DataSettings(dataset="nonsense"))
    plugin = load_dataset(DataSettings(dataset="tests.unit.test_learner_parts:make_plugin"))
    assert [p.id for p in plugin.train()] == ["x"]


def make_plugin(cfg: DataSettings) -> Any:
    """A user dataset plugin (used by the test above)."""
    from torl.learner.datasets import Problem

    class Plugin:
        name = "plugin"

        def train(self) -> list[Problem]:
            return [Problem("x", "q", "1", "plugin")]

        def eval(self) -> list[Problem]:
            return []

    return Plugin()


def test_config_rejects_training_without_model_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="model_dir"):
        load_settings(LearnerSettings, overrides={"train": True})
    with pytest.raises(ConfigError, match=r"learner\.grpo\.clip_low"):
        load_settings(LearnerSettings, overrides={"grpo": {"clip_low": 2}})
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings(LearnerSettings, overrides={"loop": {"max_stalenes": 1}})
    ok = load_settings(LearnerSettings, overrides={"train": True, "model_dir": "/m", "data": {"dataset": "arith"}})
    assert ok.loop.max_staleness == 0 and ok.grpo.clip_high == 0.2


def _traj(reward: float, calls: list[int], n: int, excluded: bool = False, correct: bool = False,
          reason: int = common_pb2.REWARD_REASON_WRONG) -> trajectory_pb2.Trajectory:
    return trajectory_pb2.Trajectory(
        token_ids=[1] * n, logprobs=[0.0] * n, loss_mask=[1] * n, reward=reward, correct=correct, excluded=excluded,
        reward_reason=reason, tool_calls=[trajectory_pb2.ToolCall(status=s) for s in calls],  # type: ignore[misc]
    )


def test_trajectory_stats() -> None:
    g = trajectory_pb2.TrajectoryGroup(trajectories=[
        _traj(1.0, [common_pb2.TOOL_STATUS_OK], 10, correct=True, reason=common_pb2.REWARD_REASON_CORRECT),
        _traj(-1.0, [common_pb2.TOOL_STATUS_ERROR], 20),
        _traj(-1.0, [], 30),
        _traj(-1.0, [common_pb2.TOOL_STATUS_SANDBOX_ERROR], 40, excluded=True),
    ])
    st = trajectory_stats([g])
    assert st["responses"] == 3 and st["excluded"] == 1
    assert st["reward_mean"] == pytest.approx(-1 / 3)
    assert st["accuracy"] == pytest.approx(1 / 3)
    assert st["tool_use_rate"] == pytest.approx(2 / 3)
    assert st["code_error_rate"] == pytest.approx(0.5)
    assert st["response_tokens"] == pytest.approx(20.0)
    assert st["reward_by_reason"] == {"correct": 1, "wrong": 2}


class _FakeEngine:
    """Writes files like DeepSpeed would; checks the durability protocol, not DeepSpeed itself."""

    def save_checkpoint(self, directory: Path, tag: str, client_state: dict[str, Any]) -> None:
        (directory / tag).mkdir(parents=True)
        (directory / tag / "model.pt").write_text(json.dumps(client_state))

    def load_checkpoint(self, directory: Path, tag: str) -> dict[str, Any]:
        return dict(json.loads((directory / tag / "model.pt").read_text()))

    def export_hf(self, directory: Path, tokenizer_dir: str | Path | None = None) -> None:
        directory.mkdir(parents=True)


def test_checkpoint_latest_only_after_complete_and_pruned(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=2)
    eng = _FakeEngine()
    assert mgr.latest() is None and mgr.load(eng) is None
    for step in (2, 4, 6):
        mgr.save(eng, step, {"step": step})
    assert mgr.latest() == "step_6"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["step_4", "step_6"]
    assert mgr.load(eng) == {"step": 6}
    # A save that died before its COMPLETE marker is never "latest".
    (tmp_path / "step_6" / "COMPLETE").unlink()
    assert mgr.latest() is None


def test_report_writes_plots_and_before_after(tmp_path: Path) -> None:
    rows = [{"step": 0, "eval_accuracy": 0.1, "eval_reward_mean": -0.8, "eval_tool_use_rate": 0.3}]
    for s in range(1, 11):
        rows.append({"step": s, "reward_mean": -1 + s * 0.15, "accuracy": s / 10, "tool_use_rate": s / 10,
                     "response_tokens": 50.0, "step_seconds": 1.0})
    rows.append({"step": 10, "eval_accuracy": 0.9, "eval_reward_mean": 0.8, "eval_tool_use_rate": 1.0})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    s = summarize(rows, edge=3)
    assert s["reward_mean_first"] == pytest.approx(-0.7) and s["reward_mean_last"] == pytest.approx(0.35)
    assert s["eval_accuracy_before"] == 0.1 and s["eval_accuracy_after"] == 0.9
    path = write_report(tmp_path, edge=3)
    text = path.read_text()
    assert "| accuracy | 0.100 | 0.900 |" in text
    for name in ("reward.png", "accuracy.png", "tool_use.png", "response_length.png"):
        assert (path.parent / name).read_bytes()[:4] == b"\x89PNG"
