"""The Prometheus config a local run writes, and the zero series each service creates at start."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, get_args

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.conftest import require_binary
from torl.cli.monitoring import RULES_DIR, write_config, write_targets


def test_written_config_passes_promtool_with_the_rules(tmp_path: Path) -> None:
    require_binary("promtool")
    targets = write_targets(tmp_path, {"executor": 9101, "learner": 9104})
    groups = json.loads(targets.read_text())
    assert groups[0] == {"targets": ["127.0.0.1:9101"], "labels": {"job": "torl-executor", "service": "executor"}}
    assert [g["labels"]["service"] for g in groups] == ["executor", "learner"]
    config = write_config(tmp_path, scrape_interval_seconds=2)
    res = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    rules = sorted(RULES_DIR.glob("*.yaml"))
    assert rules
    for rule_file in rules:  # promtool checked each rule file the config names
        assert rule_file.name in res.stdout


def test_config_without_rules_dir(tmp_path: Path) -> None:
    config = write_config(tmp_path, rules_dir=tmp_path / "absent")
    assert "rule_files" not in config.read_text()


def _series(metric: object) -> str:
    reg = CollectorRegistry()
    reg.register(metric)  # type: ignore[arg-type]
    return generate_latest(reg).decode()


def test_rollout_zero_series_cover_every_tool_status_and_cause() -> None:
    from torl.rollout import metrics
    from torl.v1 import common_pb2

    metrics.initialize()
    page = _series(metrics.TOOL_CALLS)
    for name, value in common_pb2.ToolStatus.items():
        assert (f'status="{name}"' in page) == (value != 0), name
    assert 'cause="scoring_failed"' in _series(metrics.TRAJECTORIES_EXCLUDED)


def test_reward_and_executor_label_sets_match_their_enums() -> None:
    from torl.executor import metrics as executor_metrics
    from torl.executor.config import Isolation
    from torl.executor.core import Status
    from torl.reward import metrics as reward_metrics
    from torl.reward.grader import Mode
    from torl.reward.rules import Reason

    assert set(reward_metrics.REASONS) == {r.value for r in Reason}
    assert set(reward_metrics.MODES) == {m.value for m in Mode}
    assert set(executor_metrics.STATUSES) == set(get_args(Status))
    assert set(executor_metrics.ISOLATIONS) == set(get_args(Isolation))
    executor_metrics.initialize_caller("team-zz")
    assert 'caller="team-zz",limit="concurrency"' in _series(executor_metrics.RATE_LIMITED)
    page = _series(executor_metrics.REQUESTS)  # labels are sorted by name on the page
    for api in ("grpc", "rest"):
        assert f'api="{api}",caller="team-zz",status="sandbox_error"' in page


def test_learner_zero_series_include_replicas_and_reasons() -> None:
    from torl.learner import metrics

    metrics.initialize()
    metrics.initialize_replicas(["10.0.0.7:50053"])
    assert 'replica="10.0.0.7:50053"' in _series(metrics.WEIGHT_PUSH_FAILURES)
    page = _series(metrics.REWARDS_BY_REASON)
    for reason in ("correct", "wrong", "no_answer", "unparsable", "timeout", "scoring_failed"):
        assert f'reason="{reason}"' in page


def test_zero_series_makes_every_combination() -> None:
    from prometheus_client import Counter

    from torl.common.metrics import zero_series

    c = Counter("torl_test_zero_total", "test", ["a", "b"], registry=None)
    zero_series(c, a=("x", "y"), b=["1", "2", "3"])
    page = _series(c)
    assert page.count("torl_test_zero_total{") == 6 and 'a="y",b="3"} 0.0' in page


def test_prometheus_flag_without_the_binary_fails_before_anything_starts(monkeypatch: Any) -> None:
    from torl.cli.up import Stack, service_sets, validate_all
    from torl.common.config import ConfigError

    stack = Stack(Path("runs/never"), "x", 1, dict.fromkeys(("executor", "reward", "rollout", "learner"), 2))
    sets = service_sets(stack, "", train=False)
    validate_all(None, sets)  # the configs are fine
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="no `prometheus` binary"):
        validate_all(None, sets, prometheus=True)
