"""Local process supervisor behind `torl up` and `torl train`: runs services as child processes on
loopback ports, waits until each reports SERVING, and stops them all (SIGTERM, then SIGKILL) on
exit or Ctrl-C so no process is left behind.

`torchrun_args` is the launcher prefix for a learner of several local ranks (gloo on CPU): the
same command the chart runs in each learner pod, on one node.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def redis_server_args(port: int, data_dir: Path, maxmemory_mb: int = 0) -> list[str]:
    """A redis-server on loopback with its own dir, AOF (fsync every second) and noeviction."""
    args = [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        "--maxmemory-policy", "noeviction", "--protected-mode", "yes", "--daemonize", "no",
    ]
    if maxmemory_mb:
        args += ["--maxmemory", f"{maxmemory_mb}mb"]
    return args


def redis_ready(port: int, timeout: float = 1.0) -> bool:
    """PING answered on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def torchrun_args(ranks: int, master_port: int, nnodes: int = 1, node_rank: int = 0,
                  master_addr: str = "127.0.0.1") -> list[str]:
    """`python <these> -m torl.cli.main learner serve ...` runs the learner as `ranks` processes."""
    return ["-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node-rank", str(node_rank),
            "--nproc-per-node", str(ranks), "--master-addr", master_addr, "--master-port", str(master_port)]


@dataclass
class Child:
    name: str
    args: list[str]
    log_path: Path
    grpc_target: str | None = None
    redis_port: int | None = None  # readiness by PING instead of gRPC health
    http_ready_url: str | None = None  # readiness by HTTP 200 instead of gRPC health
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)


def http_ready(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def grpc_healthy(target: str, timeout: float = 1.0) -> bool:
    try:
        with grpc.insecure_channel(target) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


class Supervisor:
    """Owns child processes; use as a context manager."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        args: Sequence[str],
        grpc_target: str | None = None,
        env: dict[str, str] | None = None,
        ports: dict[str, int] | None = None,
    ) -> Child:
        child = Child(name, list(args), self.log_dir / f"{name}.log", grpc_target, ports=dict(ports or {}))
        with open(child.log_path, "ab") as out:
            child.proc = subprocess.Popen(
                child.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # Ctrl-C reaches us; we stop children in order
            )
        self.children.append(child)
        return child

    def start_service(self, service: str, port: int, extra: Sequence[str] = (), launcher: Sequence[str] = (),
                      env: dict[str, str] | None = None, name: str = "") -> Child:
        """`torl <service> serve` on loopback (logging to <name or service>.log); `launcher` runs it
        under another module (torchrun's args)."""
        args = [sys.executable, *launcher, "-m", "torl.cli.main", service, "serve", "--host", "127.0.0.1",
                "--port", str(port)]
        return self.start(name or service, [*args, *extra], grpc_target=f"127.0.0.1:{port}", env=env)

    def start_redis(self, port: int, data_dir: Path, maxmemory_mb: int = 0) -> Child:
        """Our own redis-server for this run (never a shared one); ready when it answers PING."""
        data_dir.mkdir(parents=True, exist_ok=True)
        child = self.start("redis", redis_server_args(port, data_dir.resolve(), maxmemory_mb))
        child.redis_port = port
        return child

    def start_prometheus(self, args: Sequence[str], port: int) -> Child:
        """A Prometheus server (see torl.cli.monitoring); ready when /-/ready answers 200."""
        child = self.start("prometheus", args)
        child.http_ready_url = f"http://127.0.0.1:{port}/-/ready"
        return child

    def wait_healthy(self, child: Child, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert child.proc is not None
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited with {child.proc.returncode}; log: {child.log_path}")
            if child.redis_port is not None:
                if redis_ready(child.redis_port):
                    return
            elif child.http_ready_url is not None:
                if http_ready(child.http_ready_url):
                    return
            elif child.grpc_target is None or grpc_healthy(child.grpc_target):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{child.name} not healthy after {timeout:.0f}s; log: {child.log_path}")

    def check_alive(self) -> None:
        for c in self.children:
            if c.proc is not None and c.proc.poll() is not None:
                raise RuntimeError(f"{c.name} exited with {c.proc.returncode}; log: {c.log_path}")

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every child (reverse start order), wait, SIGKILL what is left (whole process group)."""
        for c in reversed(self.children):
            if c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for c in reversed(self.children):
            if c.proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGKILL)
            if c.proc.poll() is None:
                c.proc.wait(5)
        self.children.clear()
