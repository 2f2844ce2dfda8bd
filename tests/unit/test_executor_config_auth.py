"""Executor config safety rules and API-key handling (no servers)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from torl.common.config import ConfigError, load_settings
from torl.common.errors import ResourceExhausted, Unauthenticated
from torl.executor.auth import KeyStore, TokenBucket
from torl.executor.config import ExecutorSettings
from torl.executor.core import Caller, Executor, RunRequest

KEY = "k" * 20


def test_rest_without_keys_refuses_non_loopback() -> None:
    with pytest.raises(ConfigError, match="api_keys_file"):
        load_settings(ExecutorSettings, overrides={"rest": {"host": "0.0.0.0"}})
    s = load_settings(ExecutorSettings, overrides={"rest": {"host": "0.0.0.0", "api_keys_file": "/k.yaml"}})
    assert s.rest.host == "0.0.0.0"
    assert load_settings(ExecutorSettings).rest.port == 8080


def test_config_bounds_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"pool\.size"):
        load_settings(ExecutorSettings, overrides={"pool": {"size": 0}})
    with pytest.raises(ConfigError, match=r"sandbox\.backend"):
        load_settings(ExecutorSettings, overrides={"sandbox": {"backend": "docker"}})


def test_validation_messages() -> None:
    ex = Executor(load_settings(ExecutorSettings), pool=None)  # type: ignore[arg-type]
    caller = Caller("c", "strict", allow_session=False)
    for req, needle in (
        (RunRequest(code="1", language="java"), "supported: python"),
        (RunRequest(code="x" * (2 << 20)), "code is"),
        (RunRequest(code="1", timeout_seconds=1000), "timeout_seconds"),
        (RunRequest(code="1", memory_mb=10), "memory_limit_mb"),
        (RunRequest(code="1", files=[("/abs", b"")]), "relative"),
        (RunRequest(code="1", isolation="session"), "may not use session"),
    ):
        with pytest.raises(Exception, match=needle):
            ex.validate(req, caller)
    assert ex.validate(RunRequest(code="1"), caller) == (10.0, 1024, "strict")


def test_keys_reload_and_limits(tmp_path: Path) -> None:
    f = tmp_path / "keys.yaml"
    f.write_text(f'keys:\n  - name: a\n    key: "{KEY}"\n    rate_per_second: 1\n    burst: 2\n    max_concurrent: 1\n')
    store = KeyStore(f, check_interval=0.0)
    key = store.authenticate(f"Bearer {KEY}")
    assert key.name == "a"
    with pytest.raises(Unauthenticated):
        store.authenticate("Bearer wrong")
    with pytest.raises(Unauthenticated):
        store.authenticate(None)
    store.admit(key)
    with pytest.raises(ResourceExhausted, match="in flight"):
        store.admit(key)
    store.release(key)
    with pytest.raises(ResourceExhausted, match="rate limit") as e:
        store.admit(key)
        store.admit(key)
    assert e.value.retry_after_seconds and e.value.retry_after_seconds > 0
    time.sleep(0.01)
    f.write_text(f'keys:\n  - name: b\n    key: "{"z" * 20}"\n')
    assert store.authenticate("Bearer " + "z" * 20).name == "b"
    with pytest.raises(Unauthenticated):
        store.authenticate(f"Bearer {KEY}")
    with pytest.raises(ValueError, match="invalid"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("keys: [{name: x, key: short}]")
        KeyStore(bad)


def test_token_bucket_refills() -> None:
    b = TokenBucket(rate=100.0, burst=1)
    assert b.take() == 0.0
    assert b.take() > 0.0
    time.sleep(0.02)
    assert b.take() == 0.0


def test_keyless_caller_names_are_reserved(tmp_path: Path) -> None:
    for name in ("grpc", "anonymous"):
        f = tmp_path / f"{name}.yaml"
        f.write_text(f'keys:\n  - name: {name}\n    key: "{KEY}"\n')
        with pytest.raises(ValueError, match="not anonymous or grpc"):
            KeyStore(f)


def test_a_batch_costs_one_token_per_run_up_to_the_burst() -> None:
    b = TokenBucket(rate=0.001, burst=10)
    assert b.take(4) == 0.0 and b.take(4) == 0.0
    assert b.take(4) > 0  # 2 left
    assert b.take(50) > 0  # at most the burst, and that is not there either
