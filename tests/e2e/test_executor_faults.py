"""Executor faults with real gVisor sandboxes: a sandbox killed from outside (`runsc kill`) in the
middle of a run, and the executor process itself killed with SIGKILL in the middle of a run.

Checked: the affected call comes back promptly with an explicit status (sandbox_error naming the
fault, or gRPC UNAVAILABLE when the service is gone), never a hang or an empty "ok"; the pool
replaces the sandbox and serves again; a restarted executor removes the sandboxes its dead
predecessor left behind, so nothing leaks.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from tests.conftest import free_port, require_binary
from tests.e2e.helpers import metric_sum, pid_alive, processes_mentioning, runsc_sandboxes, scrape, wait_for
from tests.integration.executor_helpers import assert_still_serves, execute, run_executor
from torl.v1 import common_pb2, executor_pb2_grpc

pytestmark = [pytest.mark.timeout(420), pytest.mark.gvisor]
SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(40)\nprint('finished')"


def gvisor_args(state: Path, prefix: str) -> tuple[str, ...]:
    return ("sandbox.backend=gvisor", "pool.size=1", "rest.enabled=false", f"sandbox.state_dir={state}",
            f"sandbox.name_prefix={prefix}", "limits.max_timeout_seconds=60")


def test_sandbox_killed_from_outside_gives_sandbox_error_and_pool_recovers(tmp_path: Path) -> None:
    require_binary("runsc")
    prefix = f"e2e-kill-{os.getpid()}"
    state = tmp_path / "state"
    metrics_port = free_port()
    with run_executor(tmp_path, *gvisor_args(state, prefix), metrics_port=metrics_port, timeout=240) as ex:
        stub = ex.stub()
        assert_still_serves(stub)
        before = runsc_sandboxes(state, prefix)
        assert len(before) == 1, before
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(execute, stub, SLEEPER, timeout_seconds=50, deadline=90)
            time.sleep(3.0)  # the run is inside the sandbox, sleeping
            assert not fut.done()
            t0 = time.monotonic()
            killed = subprocess.run(["runsc", "--root", str(state / "runsc"), "kill", before[0], "KILL"],
                                    capture_output=True, text=True, timeout=30, check=False)
            assert killed.returncode == 0, killed.stderr
            r = fut.result(timeout=60)
            elapsed = time.monotonic() - t0
        assert r.status == common_pb2.TOOL_STATUS_SANDBOX_ERROR, (r.status, r.message)
        assert r.message, "a sandbox_error must say what happened"
        assert "finished" not in r.stdout
        assert elapsed < 25, f"the caller waited {elapsed:.1f}s after its sandbox was killed"
        # The pool starts a replacement and the service answers correctly again.
        recovery = wait_for(lambda: _serves(stub), 180, "a correct run after the sandbox was killed", 1.0)
        after = runsc_sandboxes(state, prefix)
        assert len(after) == 1 and after != before, (before, after)
        m = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert metric_sum(m, "torl_executor_requests_total", status="sandbox_error") >= 1
        assert metric_sum(m, "torl_executor_sandbox_recycled_total") >= 1
        print(f"sandbox kill: sandbox_error {elapsed:.1f}s after the kill ({r.message[:80]!r}), "
              f"serving again {recovery:.1f}s later")


def _serves(stub: executor_pb2_grpc.ExecutorStub) -> bool:
    try:
        assert_still_serves(stub)
        return True
    except (AssertionError, grpc.RpcError):
        return False


def test_killed_executor_gives_unavailable_and_restart_removes_its_sandboxes(tmp_path: Path) -> None:
    require_binary("runsc")
    prefix = f"e2e-exk-{os.getpid()}"
    state = tmp_path / "state"
    with run_executor(tmp_path, *gvisor_args(state, prefix), timeout=240) as ex:
        stub = ex.stub()
        assert_still_serves(stub)
        old = runsc_sandboxes(state, prefix)
        assert old
        dead_pid = ex.proc.pid
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(execute, stub, SLEEPER, timeout_seconds=50, deadline=90)
            time.sleep(3.0)
            t0 = time.monotonic()
            os.kill(dead_pid, signal.SIGKILL)  # the service process only, as the OOM killer would
            with pytest.raises(grpc.RpcError) as err:
                fut.result(timeout=60)
            waited = time.monotonic() - t0
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        assert waited < 15, f"the caller waited {waited:.1f}s after the executor died"
        ex.proc.wait(10)
    assert not pid_alive(dead_pid)
    orphans = runsc_sandboxes(state, prefix)  # what the dead process left running (or half-torn-down)
    print(f"executor kill: UNAVAILABLE after {waited:.1f}s; sandboxes left behind: {orphans}")
    # A new executor on the same state dir and prefix cleans up what the dead one left.
    with run_executor(tmp_path, *gvisor_args(state, prefix), timeout=240) as ex2:
        stub2 = ex2.stub()
        assert_still_serves(stub2)
        now = runsc_sandboxes(state, prefix)
        assert now and not set(now) & set(old + orphans), (old, orphans, now)
        assert not [p for name in old for p in processes_mentioning(name)], "processes of the dead sandboxes remain"
    wait_for(lambda: not runsc_sandboxes(state, prefix), 60, "sandboxes removed at clean shutdown")
