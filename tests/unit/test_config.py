"""Config validation: good values load, bad ones fail with one line naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from torl.common.config import ConfigError, load_settings, parse_set_options, read_config_file
from torl.executor.config import ExecutorSettings
from torl.reward.config import RewardSettings


def test_defaults_are_the_documented_ports() -> None:
    assert load_settings(ExecutorSettings).grpc.port == 50051
    assert load_settings(RewardSettings).grpc.port == 50052
    assert load_settings(RewardSettings).metrics_port == 9102


def test_precedence_flags_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("grpc:\n  port: 1111\n  host: 0.0.0.0\nlog_level: warning\n")
    s = load_settings(RewardSettings, config_file=cfg)
    assert (s.grpc.port, s.grpc.host, s.log_level) == (1111, "0.0.0.0", "warning")
    monkeypatch.setenv("TORL_REWARD_GRPC__PORT", "2222")
    s = load_settings(RewardSettings, config_file=cfg)
    assert (s.grpc.port, s.grpc.host) == (2222, "0.0.0.0")
    s = load_settings(RewardSettings, config_file=cfg, overrides={"grpc": {"port": 3333}})
    assert (s.grpc.port, s.grpc.host) == (3333, "0.0.0.0")


def test_combined_file_sections(tmp_path: Path) -> None:
    cfg = tmp_path / "all.yaml"
    cfg.write_text("executor:\n  grpc: {port: 4001}\nreward:\n  grpc: {port: 4002}\n")
    assert read_config_file(cfg, "reward") == {"grpc": {"port": 4002}}
    assert load_settings(ExecutorSettings, config_file=cfg).grpc.port == 4001


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"grpc": {"port": 70000}}, "reward.grpc.port: Input should be less than or equal to 65535 (got 70000)"),
        ({"grpc": {"port": -1}}, "reward.grpc.port: Input should be greater than or equal to 0"),
        ({"bogus": 1}, "reward.bogus: unknown key"),
        ({"grpc": {"prot": 1}}, "reward.grpc.prot: unknown key"),
        ({"log_level": "loud"}, "reward.log_level: Input should be 'debug', 'info', 'warning' or 'error'"),
    ],
)
def test_bad_values_name_the_field(overrides: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(RewardSettings, overrides=overrides)
    assert needle in str(e.value)


def test_malformed_and_unknown_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORL_REWARD_GRPC__PORT", "abc")
    with pytest.raises(ConfigError, match=r"reward\.grpc\.port: Input should be a valid integer.*'abc'"):
        load_settings(RewardSettings)
    monkeypatch.delenv("TORL_REWARD_GRPC__PORT")
    monkeypatch.setenv("TORL_REWARD_PROT", "1")
    with pytest.raises(ConfigError, match="unknown environment variable TORL_REWARD_PROT"):
        load_settings(RewardSettings)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_config_file(tmp_path / "missing.yaml", "reward")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpc: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_config_file(bad, "reward")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        read_config_file(scalar, "reward")


def test_set_options_parse_yaml_scalars() -> None:
    assert parse_set_options(["grpc.port=5", "log_json=false", "a.b.c=x"]) == {
        "grpc": {"port": 5},
        "log_json": False,
        "a": {"b": {"c": "x"}},
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_options(["nope"])


def test_cli_bad_value_exits_nonzero_with_one_line() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "torl.cli.main", "config", "show", "executor", "--set", "grpc.port=99999"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == ["config error: executor.grpc.port: Input should be less than or equal to 65535 (got 99999)"]


def test_cli_serve_bad_config_fails_before_heavy_imports() -> None:
    # rollout would import vllm when serving; a bad value must fail before that.
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "torl.cli.main", "rollout", "serve", "--set", "grpc.port=x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "rollout.grpc.port" in r.stderr
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert not ({"torch", "vllm", "deepspeed"} & imported)
