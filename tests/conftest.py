"""Shared fixtures: free ports, real service processes on loopback, capability checks.

In CI (env CI=true) a missing capability (runsc, redis-server, vLLM) fails the test instead of
skipping it: CI installs them, so a skip there would hide a broken setup.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"


def require(ok: bool, what: str) -> None:
    """Skip (locally) or fail (in CI) when a capability is missing."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing, and CI must have it")
    pytest.skip(f"{what} is missing")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"binary {name!r} on PATH")
    assert path is not None
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_health(
    target: str, timeout: float = 30.0, service: str = "", credentials: grpc.ChannelCredentials | None = None
) -> None:
    """Wait for SERVING; `credentials` for a TLS server (plaintext otherwise)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    channel = grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)
    with channel as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as e:
                last = e
            time.sleep(0.1)
    raise TimeoutError(f"{target} not healthy after {timeout}s: {last}")


@dataclass
class ServiceProcess:
    """A `torl <service> serve` child process on loopback."""

    service: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def torl_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "torl.cli.main", *args]


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: start_service("reward", "--set", "x=1") → a healthy ServiceProcess, stopped at teardown."""
    started: list[ServiceProcess] = []

    def _start(
        service: str,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 60.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> ServiceProcess:
        port = free_port()
        log_path = tmp_path / f"{service}-{port}.log"
        out = open(log_path, "wb")  # noqa: SIM115 - the child process owns it for its lifetime
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.Popen(
            torl_cmd(service, "serve", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", *args),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=REPO,
        )
        sp = ServiceProcess(service, port, proc, log_path)
        started.append(sp)
        try:
            wait_for_health(sp.target, timeout, credentials=credentials)
        except TimeoutError:
            sp.stop()
            raise AssertionError(f"{service} did not become healthy; log:\n{sp.log()}") from None
        return sp

    yield _start
    for sp in started:
        sp.stop()
