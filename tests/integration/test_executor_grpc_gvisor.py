"""gRPC Execute/ExecuteBatch on the real gVisor backend, both isolation levels, and the hostile-code
suite from the issue: after each hostile program the service still answers a normal run."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import require, require_binary
from tests.integration.executor_helpers import Executor, assert_still_serves, execute, run_executor, sandbox_names
from torl.v1 import common_pb2, executor_pb2

pytestmark = [pytest.mark.gvisor, pytest.mark.timeout(300)]
OK = common_pb2.TOOL_STATUS_OK
ERROR = common_pb2.TOOL_STATUS_ERROR
TIMEOUT = common_pb2.TOOL_STATUS_TIMEOUT
REJECTED = common_pb2.TOOL_STATUS_REJECTED
SESSION = executor_pb2.ISOLATION_SESSION
STRICT = executor_pb2.ISOLATION_STRICT


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executor]:
    require_binary("runsc")
    import os

    require(os.geteuid() == 0, "root (runsc OCI bundles)")
    tmp = tmp_path_factory.mktemp("gvisor-executor")
    with run_executor(tmp, "sandbox.backend=gvisor", "pool.size=2", "limits.max_code_bytes=1048576") as e:
        e.state = tmp / "state"  # type: ignore[attr-defined]
        yield e


def test_execute_ok_error_and_observation(ex: Executor) -> None:
    stub = ex.stub()
    r = execute(stub, "print(2**10)", request_id="abc")
    assert (r.status, r.stdout, r.exit_code, r.observation, r.request_id) == (OK, "1024\n", 0, "1024", "abc")
    r = execute(stub, "print('start')\nprint(1/0)")
    assert r.status == ERROR and r.exit_code == 1
    assert r.stderr.endswith("ZeroDivisionError: division by zero\n")
    assert r.observation == "start"  # stdout non-empty wins, per the ToRL rules
    r = execute(stub, "import sys; sys.exit(3)")
    assert (r.status, r.exit_code) == (ERROR, 3)
    r = execute(stub, "print(input()[::-1])", stdin="olleh\n")
    assert r.observation == "hello"
    files = [executor_pb2.InputFile(path="data/in.txt", content=b"7 8")]
    r = execute(stub, "a,b=map(int,open('data/in.txt').read().split()); print(a*b)", files=files)
    assert r.observation == "56"


def test_invalid_requests_are_invalid_argument(ex: Executor) -> None:
    stub = ex.stub()
    for kw, needle in (
        ({"language": "ruby"}, "supported: python"),
        ({"timeout_seconds": 1e6}, "timeout_seconds"),
        ({"files": [executor_pb2.InputFile(path="../x", content=b"")]}, "'..'"),
    ):
        with pytest.raises(grpc.RpcError) as e:
            execute(stub, "print(1)", **kw)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in (e.value.details() or "")


def test_batch_keeps_order_and_rejects_bad_items(ex: Executor) -> None:
    reqs = [executor_pb2.ExecuteRequest(code=f"print({i}*{i})", isolation=SESSION, session_id="b") for i in range(8)]
    reqs.insert(3, executor_pb2.ExecuteRequest(code="print(1)", language="cobol"))
    resp = ex.stub().ExecuteBatch(executor_pb2.ExecuteBatchRequest(requests=reqs), timeout=60)
    assert len(resp.responses) == 9
    assert resp.responses[3].status == REJECTED and "cobol" in resp.responses[3].message
    good = [r for i, r in enumerate(resp.responses) if i != 3]
    assert [r.observation for r in good] == [str(i * i) for i in range(8)]


def test_deadline_is_honoured_and_service_recovers(ex: Executor) -> None:
    stub = ex.stub()
    with pytest.raises(grpc.RpcError) as e:
        execute(stub, "import time; time.sleep(5)", timeout_seconds=8, deadline=1.0)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_still_serves(stub)


def test_session_runs_get_fresh_processes_and_state(ex: Executor) -> None:
    stub = ex.stub()
    kw = {"isolation": SESSION, "session_id": "replica-1"}
    pids = set()
    for _ in range(4):
        r = execute(stub, "import os; print(os.getpid())", **kw)
        pids.add(r.stdout)
    assert len(pids) == 4  # no process runs two programs, in session mode either
    execute(stub, "import os; x = 41; os.environ['LEAK'] = '1'; os.chdir('/tmp'); open('f','w').write('x')", **kw)
    for _ in range(3):
        r = execute(stub, "import os; print('x' in globals(), os.environ.get('LEAK'), os.listdir('.'))", **kw)
        assert r.observation == "False None []", r


READY_SPARES = """\
import os
me = os.getpid()
print(sum(1 for p in os.listdir('/proc') if p.isdigit() and int(p) != me and os.stat('/proc/' + p).st_uid == 65534))
"""


def test_an_idle_sandbox_keeps_its_stock_of_fresh_spares(tmp_path: Path) -> None:
    """pool.spares_per_sandbox=8 (the default is 2): once idle, a sandbox holds that many forked spares (the
    run that counts took one of them, so it sees the others); runs still never share a process. With
    nothing preloaded (the demo's config) no idle spare imports sympy on its own: that deep warm-up is
    for a preloaded copy, and afresh it cost seconds of CPU under ptrace in every RL step."""
    import os
    import time

    require_binary("runsc")
    require(os.geteuid() == 0, "root (runsc OCI bundles)")
    with run_executor(tmp_path, "sandbox.backend=gvisor", "pool.size=1", "pool.spares_per_sandbox=8",
                      "sandbox.preload=[]") as own:
        stub = own.stub()
        kw = {"isolation": SESSION, "session_id": "stock"}
        seen: list[int] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            time.sleep(1.0)  # idle: the stock is forked one spare at a time
            r = execute(stub, READY_SPARES, **kw)
            assert r.status == OK, (r.status, r.message, r.stderr)
            seen.append(int(r.observation))
            if seen[-1] >= 7:
                break
        assert seen and seen[-1] >= 7, seen
        pids = [execute(stub, "import os; print(os.getpid())", **kw).observation for _ in range(6)]
        assert len(set(pids)) == 6, pids  # taken from the stock, each one fresh
        time.sleep(1.0)  # idle again: long past the deep warm-up's delay, a spare is deep-warmed first
        r = execute(stub, "import sys; print('sympy' in sys.modules)", **kw)
        assert r.observation == "False", (r.status, r.observation, r.stderr)


def test_strict_runs_are_fresh_processes(ex: Executor) -> None:
    stub = ex.stub()
    pids = {execute(stub, "import os; print(os.getpid())", isolation=STRICT).stdout for _ in range(4)}
    assert len(pids) == 4
    execute(stub, "import sympy; sympy.LEAK = 1; import os; os.environ['LEAK']='1'", isolation=STRICT)
    r = execute(stub, "import sympy, os; print(hasattr(sympy, 'LEAK'), os.environ.get('LEAK'))", isolation=STRICT)
    assert r.observation == "False None"


# --- hostile code -------------------------------------------------------------------------------


@pytest.mark.parametrize("isolation", [STRICT, SESSION])
def test_fork_bomb(ex: Executor, isolation: int) -> None:
    stub = ex.stub()
    r = execute(stub, "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", timeout_seconds=2,
                isolation=isolation, session_id="bomb")
    assert r.status == TIMEOUT
    assert_still_serves(stub, isolation=isolation, session_id="bomb")


def test_memory_bomb(ex: Executor) -> None:
    stub = ex.stub()
    r = execute(stub, "x = bytearray(8 * 1024**3)", memory_limit_mb=512)
    assert r.status == ERROR and r.observation == "MemoryError"
    r = execute(stub, "a = []\nwhile True: a.append(' ' * 10**7)", memory_limit_mb=512, timeout_seconds=10)
    assert r.status == ERROR and "MemoryError" in r.stderr
    assert_still_serves(stub)


@pytest.mark.parametrize("code", ["while True: pass", "import time; time.sleep(30)"])
def test_infinite_loop_and_sleep_time_out(ex: Executor, code: str) -> None:
    stub = ex.stub()
    r = execute(stub, code, timeout_seconds=1)
    assert r.status == TIMEOUT
    assert 1.0 <= r.duration_seconds < 4.0
    assert r.observation == "timeout_decorator.timeout_decorator.TimeoutError: 'Timed Out'"
    assert_still_serves(stub)


def test_output_flood_is_capped(ex: Executor) -> None:
    stub = ex.stub()
    r = execute(stub, "import sys\nb = b'x' * (1 << 20)\nfor _ in range(300): sys.stdout.buffer.write(b)",
                timeout_seconds=30)
    assert r.status == OK, r.message
    assert r.stdout_truncated and len(r.stdout) == 64 * 1024
    assert_still_serves(stub)


def test_observation_of_capped_output_comes_from_its_true_end(ex: Executor) -> None:
    """Past the 64 KiB cap the response keeps the head, but the observation is ToRL's for the whole
    output: its last line (when it contains "Error" anywhere) or its first and last 128 characters."""
    stub = ex.stub()
    r = execute(stub, "print('an Error early')\nfor i in range(100000): print(i)\nprint('the last line')")
    assert r.status == OK and r.stdout_truncated and len(r.stdout) == 64 * 1024
    assert r.observation == "the last line"
    r = execute(stub, "for i in range(100000): print(i)")
    full = "\n".join(str(i) for i in range(100000))
    assert r.stdout_truncated and r.observation == full[:128] + "..." + full[-128:]
    # stderr is line-buffered: one write per line, each a trip through gVisor's kernel; 4000 long lines
    # (~440 KB, several times the cap) instead of 50000 short ones keep it seconds away from the timeout.
    code = "import sys\nfor i in range(4000): print('warning', i, 'w' * 100, file=sys.stderr)\nraise KeyError('deep')"
    r = execute(stub, code, timeout_seconds=30)
    assert r.status == ERROR and r.stderr_truncated and r.observation == "KeyError: 'deep'"
    assert len(r.stderr) == 64 * 1024 and r.stderr.startswith("warning 0 www")


def test_non_utf8_stdout(ex: Executor) -> None:
    r = execute(ex.stub(), "import sys; sys.stdout.buffer.write(b'\\xff\\xfeok\\n')")
    assert r.status == OK and r.stdout == "\ufffd\ufffdok\n"


def test_host_files_and_secrets_are_invisible(ex: Executor, tmp_path: Path) -> None:
    stub = ex.stub()
    secret_paths = ["/etc/shadow", "/etc/passwd", "/root/.bash_history", "/work/main/services/executor/config.py",
                    "/var/run/secrets/kubernetes.io/serviceaccount/token", str(ex.log_path)]
    code = (
        "import os\n"
        f"for p in {secret_paths!r}:\n"
        "    print(p, os.path.exists(p))\n"
        "print(sorted(os.listdir('/')))\n"
        "print(open('/proc/1/cmdline','rb').read().split(b'\\0')[:3])\n"
    )
    r = execute(stub, code)
    assert r.status == OK
    for p in secret_paths:
        assert f"{p} False" in r.stdout
    assert "'work'" not in r.stdout and "'home'" not in r.stdout
    assert b"torl.cli" not in r.stdout.encode()  # /proc shows the sandbox, not the host


def test_cannot_write_outside_work_dir(ex: Executor) -> None:
    code = (
        "import os\n"
        "for p in ['/usr/evil', '/opt/site/evil', '/etc/evil', '/evil', '/proc/evil']:\n"
        "    try:\n        open(p, 'w').write('x'); print('WROTE', p)\n"
        "    except OSError as e:\n        print('denied', p, e.errno)\n"
    )
    r = execute(ex.stub(), code)
    assert r.status == OK and "WROTE" not in r.stdout and r.stdout.count("denied") == 5


def test_no_network(ex: Executor) -> None:
    code = (
        "import socket\n"
        "for f in (lambda: socket.create_connection(('1.1.1.1', 80), timeout=2),\n"
        "          lambda: socket.getaddrinfo('example.com', 80)):\n"
        "    try:\n        f(); print('NET OK')\n"
        "    except OSError as e:\n        print('blocked', type(e).__name__)\n"
    )
    r = execute(ex.stub(), code)
    assert r.status == OK and "NET OK" not in r.stdout and r.stdout.count("blocked") == 2


@pytest.mark.parametrize("isolation", [STRICT, SESSION])
def test_kill_parent_and_leave_zombies(ex: Executor, isolation: int) -> None:
    stub = ex.stub()
    code = (
        "import os, signal, subprocess\n"
        "for _ in range(5):\n    if os.fork() == 0: os._exit(0)\n"  # zombies never reaped
        "subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"  # a daemon
        "for pid in (1, os.getppid()):\n"
        "    try: os.kill(pid, signal.SIGKILL); print('killed', pid)\n"
        "    except OSError as e: print('refused', pid, e.errno)\n"
    )
    r = execute(stub, code, isolation=isolation, session_id="killer")
    assert r.status in (OK, ERROR)
    assert "killed" not in r.stdout  # the agent runs as another uid: untrusted code cannot signal it
    # (The previous run's own process may still be exiting, already killed: tolerate it vanishing.)
    r = execute(stub, "import os\ndef cmd(p):\n    try: return open(f'/proc/{p}/cmdline','rb').read()\n"
                      "    except OSError: return b''\n"
                      "print([p for p in os.listdir('/proc') if p.isdigit() and cmd(p).startswith(b'sleep')])",
                isolation=isolation, session_id="killer")
    assert r.observation == "[]"
    assert_still_serves(stub, isolation=isolation, session_id="killer")


@pytest.mark.parametrize("isolation", [STRICT, SESSION])
def test_files_do_not_survive_to_the_next_run(ex: Executor, isolation: int) -> None:
    stub = ex.stub()
    kw = {"isolation": isolation, "session_id": "files"}
    execute(stub, "open('/tmp/planted','w').write('x'); open('here','w').write('y')", **kw)
    for _ in range(4):
        r = execute(stub, "import os; print(os.path.exists('/tmp/planted'), os.listdir('.'))", **kw)
        assert r.observation == "False []"


def test_ten_megabyte_code_is_rejected_cleanly(ex: Executor) -> None:
    stub = ex.stub()
    with pytest.raises(grpc.RpcError) as e:
        execute(stub, "#" + "x" * (10 * 1024 * 1024))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit" in (e.value.details() or "")
    assert_still_serves(stub)


def test_many_concurrent_requests_none_lost(ex: Executor) -> None:
    stub = ex.stub()
    n = 100  # > the 64 concurrent callers; each run is a fresh process

    def one(i: int) -> executor_pb2.ExecuteResponse:
        return execute(stub, f"print({i} + 1)", isolation=SESSION, session_id="load", deadline=120)

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(n)))
    assert [r.observation for r in results] == [str(i + 1) for i in range(n)]


def test_hundreds_of_concurrent_calls_and_a_batch_none_lost(ex: Executor) -> None:
    """400 concurrent Execute calls plus one ExecuteBatch of 100 runs on a pool of 2 sandboxes x 2
    slots: every call is answered (queued, not dropped), in order, with its own result. (Every run is
    a fresh process, forked under gVisor's ptrace platform: a few hundred runs take tens of seconds.)"""
    stub = ex.stub()
    n, batch_n = 400, 100
    futures = [
        stub.Execute.future(
            executor_pb2.ExecuteRequest(code=f"print({i} * 3)", request_id=f"c{i}", isolation=SESSION,
                                        session_id=f"flood-{i % 4}"),
            timeout=240,
        )
        for i in range(n)
    ]
    batch = stub.ExecuteBatch.future(
        executor_pb2.ExecuteBatchRequest(requests=[
            executor_pb2.ExecuteRequest(code=f"print({i} - 1)", request_id=f"b{i}", isolation=SESSION,
                                        session_id="flood-batch")
            for i in range(batch_n)
        ]),
        timeout=240,
    )
    results = [f.result() for f in futures]
    responses = list(batch.result().responses)
    # Every call is answered, in order, with its own id; a result is either its own right answer or a
    # typed sandbox_error, never someone else's output. Known defect (docs/executor.md, limits): under
    # such a flood a sandbox occasionally exits mid-run (seen 2 of ~2,000 runs), failing the runs in its
    # slots as sandbox_error; the pool replaces it. Bounded here so a real regression still fails.
    got = [(r.request_id, r.status, r.observation) for r in [*results, *responses]]
    want = [(f"c{i}", OK, str(i * 3)) for i in range(n)] + [(f"b{i}", OK, str(i - 1)) for i in range(batch_n)]
    assert [g[0] for g in got] == [w[0] for w in want]
    wrong = [(g, w) for g, w in zip(got, want, strict=True) if g != w]
    assert all(g[1] == common_pb2.TOOL_STATUS_SANDBOX_ERROR for g, _ in wrong), wrong[:5]
    assert len(wrong) <= (n + batch_n) // 50, wrong[:5]
    assert_still_serves(stub)


def test_sandboxes_are_removed_on_shutdown(tmp_path: Path) -> None:
    require_binary("runsc")
    with run_executor(tmp_path, "sandbox.backend=gvisor", "pool.size=1") as e:
        assert len(sandbox_names(tmp_path / "state")) == 1
        assert_still_serves(e.stub())
    assert sandbox_names(tmp_path / "state") == []
