"""The process backend behind the same interface, as a runner pod runs it: a non-root service
(uid != 0, so runs keep its uid), agents as plain child processes.

On this host that is unsandboxed, so the service needs `sandbox.allow_unsandboxed_process=true`;
when the test process is root the service is started as a spare uid (see `as_unprivileged`), so
RLIMIT_NPROC counts and the fork bomb is bounded as it is in the pod. The last test runs the same
backend inside a real gVisor container as uid 10001, where `auto` must pick it by itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, require, require_binary
from tests.integration.executor_helpers import Executor, as_unprivileged, assert_still_serves, execute, run_executor
from torl.executor.config import SandboxSettings
from torl.executor.sandbox import Layout
from torl.executor.sandbox.gvisor import make_rootfs, oci_spec
from torl.executor.sandbox.process import gvisor_markers
from torl.v1 import common_pb2, executor_pb2

pytestmark = pytest.mark.timeout(180)
SESSION = executor_pb2.ISOLATION_SESSION
STRICT = executor_pb2.ISOLATION_STRICT
OK, ERROR, TIMEOUT = common_pb2.TOOL_STATUS_OK, common_pb2.TOOL_STATUS_ERROR, common_pb2.TOOL_STATUS_TIMEOUT
MAX_PROCESSES = 64
FILE_LIMIT_MB = 16
SECRET = "torl-test-secret-value"
DAEMON = (  # a double-forked, setsid'd sleeper outliving its run: prints its pid
    "import os, time\nr, w = os.pipe()\nif os.fork() == 0:\n    os.setsid()\n    pid = os.fork()\n"
    "    if pid == 0:\n        time.sleep(60); os._exit(0)\n    os.write(w, str(pid).encode()); os._exit(0)\n"
    "print(os.read(r, 32).decode())\n"
)
STATE_OF = "try:\n    s = open('/proc/%s/stat').read(); print(s[s.rindex(')') + 2])\nexcept OSError:\n    print('gone')"
FORK_COUNT = (
    "import os, time\nn = 0\ntry:\n    while n < 1000:\n        if os.fork() == 0:\n"
    "            time.sleep(30); os._exit(0)\n        n += 1\n    print('unbounded', n)\n"
    "except OSError as e:\n    print('limited', n, e.errno)\n"
)


@pytest.fixture(scope="module")
def service_uid() -> int:
    return os.getuid() if os.geteuid() != 0 else 20000 + os.getpid() % 10000


@pytest.fixture(scope="module")
def ex(service_uid: int) -> Iterator[Executor]:
    if gvisor_markers():
        pytest.skip("this module tests the process backend on a real kernel")
    tmp = Path(tempfile.mkdtemp(prefix="torl-process-test-"))  # under /tmp: reachable by the service's uid
    stage = tmp / "stage"
    stage.mkdir()
    wrap = None
    if os.geteuid() == 0:
        wrap = as_unprivileged(service_uid, stage)
        require(wrap is not None, "setpriv/unshare to start the service as a non-root uid")
        os.chown(tmp, service_uid, service_uid)
    try:
        with run_executor(
            tmp,
            "sandbox.backend=process",
            "sandbox.allow_unsandboxed_process=true",
            "pool.size=1",
            "pool.slots_per_sandbox=2",
            f"sandbox.max_processes={MAX_PROCESSES}",
            f"sandbox.tmpfs_mb={FILE_LIMIT_MB}",
            wrap=wrap,
            env={"TORL_TEST_SECRET": SECRET, "HOME": str(tmp)},
        ) as e:
            yield e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_health_and_log_say_unsandboxed(ex: Executor) -> None:
    h = httpx.get(f"{ex.rest_url}/healthz", timeout=10).json()
    assert h["backend"] == "process" and h["unsandboxed"] is True and h["weak_isolation"] is True, h
    assert h["process_limit_enforced"] is True and "UNSANDBOXED" in h["warning"], h
    assert '"event": "unsandboxed_process_backend"' in ex.log() and '"level": "error"' in ex.log()


def test_ok_error_timeout_and_observation(ex: Executor) -> None:
    stub = ex.stub()
    r = execute(stub, "import sympy; print(sympy.factorint(360))")
    assert (r.status, r.observation) == (OK, "{2: 3, 3: 2, 5: 1}"), r
    r = execute(stub, "print('before')\n1/0")
    assert r.status == ERROR and r.exit_code == 1 and r.observation == "before", r
    r = execute(stub, "1/0")
    assert r.status == ERROR and r.observation == "ZeroDivisionError: division by zero", r
    t0 = time.monotonic()
    r = execute(stub, "while True: pass", timeout_seconds=1)
    assert r.status == TIMEOUT and r.observation == "timeout_decorator.timeout_decorator.TimeoutError: 'Timed Out'"
    assert time.monotonic() - t0 < 8
    r = execute(stub, "print('x' * 200000)")
    assert r.status == OK and r.stdout_truncated and len(r.stdout) < 200000, (r.status, len(r.stdout))
    assert_still_serves(stub)


def test_runs_keep_the_service_uid_in_a_private_dir_with_a_scrubbed_env(ex: Executor, service_uid: int) -> None:
    code = (
        "import os, sys\n"
        "print(os.getuid(), os.getcwd() == os.environ['HOME'] == os.environ['TMPDIR'])\n"
        "print(os.getcwd())\n"
        "print(','.join(sorted(os.environ)))\n"
        f"for pid in (os.getppid(), {ex.proc.pid}):\n"
        "    try:\n        print(b'SECRET' in open(f'/proc/{pid}/environ', 'rb').read().upper())\n"
        "    except PermissionError:\n        print('denied')\n"
    )
    r = execute(stub := ex.stub(), code)
    assert r.status == OK, r.stderr
    ids, cwd, env, zygote_environ, service_environ = r.stdout.splitlines()
    assert ids == f"{service_uid} True", r.stdout
    assert "/state/process/torl-exec-" in cwd and "/runs/" in cwd, cwd
    assert set(env.split(",")) <= {
        "HOME", "LANG", "LC_ALL", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PATH",
        "PYTHONDONTWRITEBYTECODE", "TMPDIR",
    }, env
    # The service and the agent's processes are non-dumpable: a run of the same uid cannot read them.
    assert (zygote_environ, service_environ) == ("denied", "denied"), r.stdout
    assert SECRET not in r.stdout + r.stderr
    assert_still_serves(stub)


def test_strict_runs_leave_nothing_behind(ex: Executor) -> None:
    stub = ex.stub()
    first = (
        "import os, tempfile, time\n"
        "open('here.txt', 'w').write('1')\n"
        "t = tempfile.NamedTemporaryFile(delete=False); t.write(b'1'); t.close()\n"
        "os.environ['LEAK'] = '1'\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        time.sleep(60); os._exit(0)\n"
        "    os.write(w, str(pid).encode()); os._exit(0)\n"
        "print(os.read(r, 32).decode())\n"
        "print(os.path.abspath('here.txt')); print(t.name)\n"
    )
    r = execute(stub, first)
    assert r.status == OK, r.stderr
    daemon, *paths = r.stdout.split()
    deadline = time.monotonic() + 3
    while _alive(int(daemon)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(int(daemon)), f"the double-forked daemon {daemon} of a finished run survives"
    check = f"import os; print([os.path.exists(p) for p in {paths!r}], os.environ.get('LEAK'))"
    r = execute(stub, check)
    assert r.stdout == "[False, False] None\n", r.stdout


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_session_runs_get_fresh_processes_and_state(ex: Executor) -> None:
    stub = ex.stub()
    kw = {"isolation": SESSION, "session_id": "s1"}
    first = "import os\nx = 41\nos.environ['LEAK'] = '1'\nopen('f', 'w').write('1')\nprint(os.getpid())"
    r1 = execute(stub, first, **kw)
    second = "import os\nprint(os.getpid(), 'x' in globals(), os.environ.get('LEAK'), os.path.exists('f'))"
    r2 = execute(stub, second, **kw)
    assert r1.status == r2.status == OK, (r1.stderr, r2.stderr)
    pid, *state = r2.stdout.split()
    assert pid != r1.stdout.strip() and state == ["False", "None", "False"], (r1.stdout, r2.stdout)


def test_rlimits_hold(ex: Executor) -> None:
    stub = ex.stub()
    r = execute(stub, "x = bytearray(600 * 1024 * 1024)", memory_limit_mb=256)
    assert r.status == ERROR and r.observation == "MemoryError", r
    big = (FILE_LIMIT_MB + 1) * 1024 * 1024
    r = execute(stub, f"open('big', 'wb').write(b'0' * {big})")
    assert r.status == ERROR and "File too large" in r.observation, r
    r = execute(stub, "import resource as r; print(r.getrlimit(r.RLIMIT_NOFILE), r.getrlimit(r.RLIMIT_CORE))")
    assert r.stdout == "(4096, 4096) (0, 0)\n", r.stdout
    assert_still_serves(stub)


def test_fork_bomb_is_bounded_by_rlimit_nproc(ex: Executor) -> None:
    stub = ex.stub()
    for isolation in (STRICT, SESSION):
        r = execute(stub, FORK_COUNT, timeout_seconds=20, isolation=isolation, session_id="bomb")
        assert r.status == OK, r
        word, n, errno = r.stdout.split()
        # The limit is the uid's tasks when the run's process was forked plus MAX_PROCESSES; tasks of
        # the uid that ended since (a previous run's process) leave a little more room.
        assert word == "limited" and int(n) <= MAX_PROCESSES + 16 and errno == "11", r.stdout
        assert_still_serves(stub, isolation=isolation, session_id="bomb")
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    r = execute(stub, bomb, timeout_seconds=2)
    assert r.status == TIMEOUT, r
    assert_still_serves(stub)


# ---------------------------------------------------------------------------------------------
# Inside gVisor, as the runner pod runs it

IN_GVISOR_SCRIPT = """
import asyncio, json, os
from torl.executor.config import ExecutorSettings
from torl.executor.core import Caller, RunRequest, make_executor

BOMB = {bomb!r}
DAEMON = {daemon!r}
STATE_OF = {state_of!r}

async def main() -> None:
    s = ExecutorSettings(
        sandbox={{"state_dir": "/tmp/state", "max_processes": 32}},
        pool={{"size": 1, "slots_per_sandbox": 1}},
        rest={{"enabled": False}},
    )
    ex = make_executor(s)  # backend=auto: runsc (not root) and bwrap fail here, gVisor is detected
    await ex.pool.start(wait=True)
    out = {{"backend": ex.pool.backend.name, "unsandboxed": ex.pool.backend.unsandboxed, "uid": os.getuid()}}

    async def run(code: str, **kw: object) -> dict[str, object]:
        o = await ex.run(RunRequest(code=code, **kw), Caller())
        return {{"status": o.status, "stdout": o.stdout, "observation": o.observation}}

    out["ok"] = await run("import sympy, os; print(sympy.factorint(360), os.getuid())")
    out["write"] = await run("open('f.txt', 'w').write('x'); import os; print(os.path.abspath('f.txt'))")
    out["read"] = await run(f"import os; print(os.path.exists({{out['write']['stdout'].strip()!r}}))")
    out["bomb"] = await run(BOMB, timeout_seconds=20)
    out["daemon"] = await run(DAEMON)
    pid = out["daemon"]["stdout"].strip()
    out["daemon_after"] = await run(STATE_OF % pid)
    out["agent_subreaper"] = ex.pool.slots[0].sandbox.ready_info.get("subreaper")
    out["after"] = await run("print(6 * 7)")
    await ex.pool.close()
    print("RESULT " + json.dumps(out), flush=True)

asyncio.run(main())
"""


@pytest.mark.gvisor
def test_auto_picks_process_backend_inside_gvisor_as_non_root(tmp_path: Path) -> None:
    """The runner pod: gVisor, uid 10001, no capabilities, read-only root. Nested runsc cannot work,
    bwrap cannot either; `auto` detects gVisor and runs the agent as plain processes."""
    runsc = require_binary("runsc")
    require(os.geteuid() == 0, "root, to run an OCI bundle with runsc")
    import sys

    prefix = os.path.realpath(sys.base_prefix)
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "script.py").write_text(IN_GVISOR_SCRIPT.format(bomb=FORK_COUNT, daemon=DAEMON, state_of=STATE_OF))
    binds = [("/usr", "/usr"), (str(REPO), str(REPO)), (str(probe), "/probe")]
    binds += [(p, p) for p in ("/etc/alternatives", "/etc/ld.so.cache") if os.path.exists(p)]
    if not prefix.startswith("/usr"):
        binds.append((prefix, prefix))
    layout = Layout(python=sys.executable, binds=tuple(binds), env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    rootfs = tmp_path / "rootfs"
    make_rootfs(rootfs, layout)
    spec = oci_spec(rootfs, layout, [sys.executable, "-B", "/probe/script.py"], SandboxSettings(max_processes=65536))
    spec["process"]["user"] = {"uid": 10001, "gid": 10001}
    spec["process"]["capabilities"] = {"bounding": [], "effective": [], "permitted": []}
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(spec))
    state = tmp_path / "runsc"
    name = f"torl-process-test-{os.getpid()}"
    cmd = [runsc, "--root", str(state), "--platform=ptrace", "--network=none", "run", "--bundle", str(bundle), name]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, check=False)
    finally:
        subprocess.run([runsc, "--root", str(state), "delete", "-force", name], capture_output=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    out = json.loads(lines[0].removeprefix("RESULT "))
    assert (out["backend"], out["unsandboxed"], out["uid"]) == ("process", False, 10001), out
    assert out["ok"]["status"] == "ok" and out["ok"]["observation"] == "{2: 3, 3: 2, 5: 1} 10001", out
    assert out["write"]["status"] == "ok" and out["read"]["stdout"] == "False\n", out
    word, n, errno = out["bomb"]["stdout"].split()
    assert word == "limited" and int(n) <= 32 + 16 and errno == "11", out["bomb"]
    # gVisor has no PR_SET_CHILD_SUBREAPER (this runsc): the daemon goes to the service (PID 1 here, as
    # in the pod), which kills it before answering. Where gVisor has it, the agent's sweep does.
    assert out["daemon"]["status"] == "ok" and out["daemon_after"]["stdout"] == "gone\n", out
    assert out["after"]["observation"] == "42", out
