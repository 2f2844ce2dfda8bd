"""Shared helpers for the executor integration tests: start a real `torl executor serve`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from tests.conftest import REPO, free_port, torl_cmd, wait_for_health
from torl.v1 import executor_pb2, executor_pb2_grpc


@dataclass
class Executor:
    grpc_target: str
    rest_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stub(self) -> executor_pb2_grpc.ExecutorStub:
        return executor_pb2_grpc.ExecutorStub(grpc.insecure_channel(self.grpc_target))


@contextmanager
def run_executor(
    tmp: Path,
    *sets: str,
    timeout: float = 120.0,
    metrics_port: int = 0,
    wrap: Callable[[list[str]], list[str]] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Executor]:
    """Start `torl executor serve` (its command passed through `wrap`, with `env` added) and wait for health."""
    port = free_port()
    log_path = tmp / f"executor-{port}.log"
    args = ["--set", "rest.port=0", "--set", f"sandbox.state_dir={tmp / 'state'}"]
    for s in sets:
        args += ["--set", s]
    cmd = torl_cmd(
        "executor", "serve", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port), *args
    )
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            wrap(cmd) if wrap is not None else cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
    try:
        wait_for_health(f"127.0.0.1:{port}", timeout)
        rest_port: int | None = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and rest_port is None:
            for line in log_path.read_text(errors="replace").splitlines():
                if '"event": "serving"' in line:
                    rest_port = int(json.loads(line)["rest_port"])  # 0: no REST (role=runner)
            time.sleep(0.05)
        yield Executor(f"127.0.0.1:{port}", f"http://127.0.0.1:{rest_port or 0}", proc, log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def execute(stub: executor_pb2_grpc.ExecutorStub, code: str, **kw: object) -> executor_pb2.ExecuteResponse:
    timeout = float(kw.pop("deadline", 60.0))  # type: ignore[arg-type]
    return stub.Execute(executor_pb2.ExecuteRequest(code=code, **kw), timeout=timeout)  # type: ignore[arg-type]


def assert_still_serves(stub: executor_pb2_grpc.ExecutorStub, **kw: object) -> None:
    """After hostile code, a normal run must still answer correctly."""
    from torl.v1 import common_pb2

    r = execute(stub, "import sympy; print(sympy.isprime(97), 6*7)", **kw)
    assert r.status == common_pb2.TOOL_STATUS_OK, (r.status, r.message, r.stderr)
    assert r.observation == "True 42"


def sandbox_names(state_dir: Path) -> list[str]:
    out = subprocess.run(
        ["runsc", "--root", str(state_dir / "runsc"), "list", "-quiet"], capture_output=True, text=True, check=False
    )
    return [n for n in out.stdout.split() if re.match(r"^torl-exec-", n)]


def _root_only_ancestor(path: str) -> str | None:
    """The first directory on the way to `path` that other uids cannot enter (e.g. /root)."""
    current = "/"
    for part in Path(path).parts[1:]:
        current = os.path.join(current, part)
        if os.path.isdir(current) and not os.stat(current).st_mode & 0o001:
            return current
    return None


def as_unprivileged(uid: int, stage: Path) -> Callable[[list[str]], list[str]] | None:
    """A command wrapper that runs a command as `uid` (no groups, no capabilities), or None when it
    cannot work here. For a root test process: `setpriv`; when the interpreter lies under a directory
    only root may enter (/root/.pyenv), first a private mount namespace (`unshare`) where a tmpfs
    covers that directory and only the interpreter prefix is bound back at its own path. `stage` is
    an empty directory used for that bind."""
    import shutil
    import sys

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return None
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    prefix = os.path.realpath(sys.base_prefix)
    blocker = _root_only_ancestor(prefix)
    if blocker is None:
        return lambda cmd: [*setpriv, *cmd]
    if not shutil.which("unshare"):
        return None
    script = (
        'set -e; mount --bind "$1" "$2"; mount -t tmpfs -o mode=0755,size=1m tmpfs "$3"; '
        'mkdir -p "$1"; mount --bind "$2" "$1"; shift 3; exec "$@"'
    )
    return lambda cmd: [
        "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
        prefix, str(stage), blocker, *setpriv, *cmd,
    ]
