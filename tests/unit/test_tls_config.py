"""TLS settings: validation names the field; file checks run only for enabled sections and name the
field with its full path; the server and client sections exist on every service that needs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from torl.common.config import ConfigError, TlsClientSettings, load_settings
from torl.common.tls import channel_credentials, check_settings_files, server_credentials
from torl.executor.config import ExecutorSettings
from torl.learner.config import LearnerSettings
from torl.reward.config import RewardSettings
from torl.rollout.config import RolloutSettings


def test_enabled_server_tls_needs_cert_and_key() -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(RewardSettings, overrides={"grpc": {"tls": {"enabled": True, "cert_file": "/x/tls.crt"}}})
    assert str(e.value) == "config error: reward.grpc.tls: Value error, key_file required when enabled=true"


def test_client_cert_needs_its_key() -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(RolloutSettings, overrides={"deps": {"tls": {"enabled": True, "cert_file": "/c.crt"}}})
    assert "rollout.deps.tls: Value error, key_file is required" in str(e.value)


def test_unknown_tls_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"reward\.grpc\.tls\.cert: unknown key"):
        load_settings(RewardSettings, overrides={"grpc": {"tls": {"cert": "/x"}}})


def test_tls_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORL_LEARNER_WEIGHT_SYNC__TLS__ENABLED", "true")
    monkeypatch.setenv("TORL_LEARNER_WEIGHT_SYNC__TLS__SERVER_NAME_OVERRIDE", "torl-rollout")
    monkeypatch.setenv("TORL_LEARNER_GRPC__TLS__ENABLED", "false")
    s = load_settings(LearnerSettings)
    assert s.weight_sync.tls.enabled and s.weight_sync.tls.server_name_override == "torl-rollout"
    assert not s.grpc.tls.enabled


def test_disabled_sections_read_no_files() -> None:
    s = load_settings(ExecutorSettings, overrides={
        "grpc": {"tls": {"cert_file": "/nonexistent/a", "key_file": "/nonexistent/b"}},
        "runners_tls": {"ca_file": "/nonexistent/ca"},
    })
    check_settings_files(s, "executor.")  # nothing enabled: nothing read
    assert server_credentials(s.grpc.tls) is None
    assert channel_credentials(s.runners_tls) is None


def test_file_errors_name_the_full_field(tmp_path: Path) -> None:
    s = load_settings(RolloutSettings, overrides={"deps": {"tls": {"enabled": True, "ca_file": "/nonexistent/ca.crt"}}})
    with pytest.raises(ConfigError) as e:
        check_settings_files(s, "rollout.")
    assert str(e.value) == "config error: rollout.deps.tls.ca_file: file /nonexistent/ca.crt not found"

    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match=r"ex\.ca_file: .*ca\.crt is not a PEM certificate"):
        channel_credentials(TlsClientSettings(enabled=True, ca_file=str(not_pem)), "ex")
    corrupt = tmp_path / "corrupt.crt"
    corrupt.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"ex\.ca_file: .*corrupt\.crt holds no valid CA certificate"):
        channel_credentials(TlsClientSettings(enabled=True, ca_file=str(corrupt)), "ex")


def test_tls_is_off_by_default_everywhere() -> None:
    assert not load_settings(RewardSettings).grpc.tls.enabled
    assert not load_settings(RolloutSettings).deps.tls.enabled
    assert not load_settings(LearnerSettings).weight_sync.tls.enabled
    assert not load_settings(ExecutorSettings).runners_tls.enabled
