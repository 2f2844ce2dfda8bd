"""The executor against hostile callers and hostile code (issue 17's attacks), each against the real
backend it concerns, each asserting that the attack fails AND that the service keeps serving.

- runner impersonation (gateway + runner processes): code running on a runner calls the runner's
  own gRPC port as the rollout's tenant; the runner refuses it (no gateway token).
- session poisoning and status forgery (gVisor): a session run rewrites the function that runs code
  and forges a completion line; later runs of that session are untouched, the forger is stopped.
- cancel (gVisor): runs whose callers gave up are killed before their slot is given back.
- batch admission and unauthenticated amplification (REST on gVisor): a bad batch item is that
  item's answer; an unauthenticated body is never parsed; a huge list is refused by its length.
- fail closed (service start): keys required without keys, anonymous gRPC off loopback, a runner
  without the gateway's token digest: each refuses to start.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from tests.conftest import REPO, require, require_binary, torl_cmd
from tests.integration.executor_helpers import (
    Executor,
    as_unprivileged,
    assert_still_serves,
    execute,
    run_executor,
)
from torl.v1 import common_pb2, executor_pb2

pytestmark = [pytest.mark.timeout(420), pytest.mark.gvisor]
OK = common_pb2.TOOL_STATUS_OK
SESSION = executor_pb2.ISOLATION_SESSION
STRICT = executor_pb2.ISOLATION_STRICT
KEY = "hostile-key-0123456789abcdef"
STRICT_KEY = "strict-only-key-0123456789abcdef"
SANDBOX_MEMORY_MB = 1536
RUNNER_TOKEN = "runner-token-0123456789abcdef0123456789abcdef"
KEYS = f"""
keys:
  - name: team-h
    key: "{KEY}"
    max_concurrent: 8
    allow_session: true
  - name: team-s
    key: "{STRICT_KEY}"
    max_concurrent: 4
"""


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def gv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executor]:
    require_binary("runsc")
    tmp = tmp_path_factory.mktemp("hostile-gvisor")
    keys = tmp / "keys.yaml"
    keys.write_text(KEYS)
    with run_executor(
        tmp, "sandbox.backend=gvisor", "pool.size=1", "pool.slots_per_sandbox=2", f"rest.api_keys_file={keys}",
        f"sandbox.memory_mb={SANDBOX_MEMORY_MB}",
        f"sandbox.name_prefix=e2e-hostile-{os.getpid()}", timeout=300,
    ) as ex:
        yield ex


# -- 2, 3: session worker poisoning and status forgery ---------------------------------------------

POISON = """
import os, signal, sys
f = sys._getframe()
while f is not None and "_run_code" not in f.f_globals:
    f = f.f_back
g = f.f_globals
def fake(code):
    os.write(1, b"POISONED\\n")
    return 0
g["_run_code"] = fake
os.environ["POISON"] = "1"
os.putenv("POISON", "1")
sys.modules["math"] = None
print("planted")
"""

FORGE = """
import json, os, sys, time
f = sys._getframe()
while f is not None and "ctx" not in f.f_locals:
    f = f.f_back
fd = f.f_locals["ctx"].status_w
os.write(fd, b'{"exit_code": 0, "reset_problem": null}\\n')
time.sleep(40)
"""


def test_session_poisoning_does_not_reach_later_runs(gv: Executor) -> None:
    stub = gv.stub()
    kw = {"isolation": SESSION, "session_id": "replica-p"}
    r = execute(stub, POISON, **kw)
    assert (r.status, r.observation) == (OK, "planted"), (r.status, r.stderr)
    for _ in range(3):
        r = execute(stub, "import math, os; print(6 * 7, os.environ.get('POISON'), math.sqrt(4))", **kw)
        assert (r.status, r.observation) == (OK, "42 None 2.0"), (r.status, r.stdout, r.stderr)
    assert_still_serves(stub, **kw)


def test_forged_status_ends_the_run_and_its_process(gv: Executor) -> None:
    stub = gv.stub()
    kw = {"isolation": SESSION, "session_id": "replica-f"}
    t0 = time.monotonic()
    execute(stub, FORGE, timeout_seconds=30, **kw)
    assert time.monotonic() - t0 < 20
    # The forger is gone: the session's next run runs at once in a fresh process (a forger still
    # holding the session's worker would make it wait and time out).
    r = execute(stub, "print(6 * 7)", timeout_seconds=5, deadline=20, **kw)
    assert (r.status, r.observation) == (OK, "42"), (r.status, r.message, r.stderr)
    assert_still_serves(stub, **kw)


# -- 4: cancel releases the slot only once the run has stopped ---------------------------------------

COUNT_SPINNERS = """
import os, time
time.sleep(0.5)
n = 0
for p in os.listdir('/proc'):
    if not p.isdigit() or int(p) == os.getpid():
        continue
    try:
        stat = open(f'/proc/{p}/stat').read()
    except OSError:
        continue
    if stat[stat.rindex(')') + 2] == 'R':
        n += 1
print(n)
"""


def test_cancelled_runs_are_killed_before_their_slot_is_reused(gv: Executor) -> None:
    stub = gv.stub()
    for _ in range(6):
        with pytest.raises(grpc.RpcError) as e:
            execute(stub, "while True: pass", timeout_seconds=50, deadline=1.5, isolation=STRICT)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    r = execute(stub, COUNT_SPINNERS, isolation=STRICT)
    assert r.status == OK, r.stderr
    assert int(r.observation) == 0, f"{r.observation} cancelled busy loops still running"
    assert_still_serves(stub)


# -- 5, 6: REST batch admission; authenticate before parsing, bounded lists --------------------------


def test_one_bad_batch_item_is_its_own_answer(gv: Executor) -> None:
    # JSON may spell a lone surrogate (\\ud800); no UTF-8 text can hold one.
    body = b'{"runs": [{"code": "import time; time.sleep(2); print(\'slow\')"}, {"code": "1", "stdin": "\\ud800"}]}'
    headers = {"content-type": "application/json", **auth()}
    r = httpx.post(f"{gv.rest_url}/v1/runs:batch", content=body, headers=headers, timeout=120)
    assert r.status_code == 200, r.text[:300]
    slow, bad = r.json()["results"]
    assert slow["status"] == "ok" and slow["observation"] == "slow"
    assert bad["status"] == "rejected" and "UTF-8" in bad["message"], bad
    assert httpx.post(f"{gv.rest_url}/v1/runs", json={"code": "print(2)"}, headers=auth(), timeout=60).json()[
        "observation"
    ] == "2"


def test_unauthenticated_body_is_never_parsed_and_lists_are_bounded(gv: Executor) -> None:
    junk = b'{"runs": [' + b"0," * 600_000 + b"0]}"
    r = httpx.post(f"{gv.rest_url}/v1/runs:batch", content=junk, headers={"content-type": "application/json"},
                   timeout=60)
    assert r.status_code == 401, r.text[:300]
    r = httpx.post(f"{gv.rest_url}/v1/runs:batch", content=junk,
                   headers={"content-type": "application/json", **auth()}, timeout=60)
    assert r.status_code == 422 and "at most 100000 items" in r.json()["error"], r.text[:300]
    r = httpx.post(f"{gv.rest_url}/v1/runs", json={"code": "print(3)"}, headers=auth(), timeout=60)
    assert r.json()["observation"] == "3"


# -- 1: runner impersonation from code on the runner ------------------------------------------------

IMPERSONATE = """
import grpc
from torl.v1 import executor_pb2, executor_pb2_grpc
stub = executor_pb2_grpc.ExecutorStub(grpc.insecure_channel("{target}"))
req = executor_pb2.ExecuteRequest(code="print('impersonated')", isolation=2, session_id="replica-0")
try:
    r = stub.Execute(req, metadata=(("x-torl-caller", "rollout"),), timeout=20)
    print("ACCEPTED", r.stdout.strip())
except grpc.RpcError as e:
    print("REFUSED", e.code().name)
"""


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temp dir under /tmp (a non-root service uid can reach it), removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="torl-hostile-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_code_on_a_runner_cannot_impersonate_the_gateway(open_tmp: Path) -> None:
    """As in a Kubernetes runner pod: process backend, a non-root service uid, runs in its network namespace."""
    tmp = open_tmp
    uid = 20000 + os.getpid() % 10000
    wrap = None
    if os.geteuid() == 0:
        (tmp / "stage").mkdir()
        wrap = as_unprivileged(uid, tmp / "stage")
        require(wrap is not None, "setpriv/unshare to start the runner as a non-root uid")
    for d in (tmp, tmp / "r", tmp / "gw"):
        d.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            os.chown(d, uid, uid)
    keys = tmp / "keys.yaml"
    keys.write_text(KEYS)
    token = tmp / "runner-token"
    token.write_text(RUNNER_TOKEN)
    token.chmod(0o600)  # the gateway's (root here); the runner's uid cannot read it
    digest = hashlib.sha256(RUNNER_TOKEN.encode()).hexdigest()
    with (
        run_executor(tmp / "r", "role=runner", "sandbox.backend=process", "sandbox.allow_unsandboxed_process=true",
                     "pool.size=1", "pool.slots_per_sandbox=2", f"runner_token_sha256={digest}", wrap=wrap,
                     env={"HOME": str(tmp / "r")}) as runner,
        run_executor(tmp / "gw", "role=gateway", f'runners=["{runner.grpc_target}"]',
                     f"rest.api_keys_file={keys}", f"runner_token_file={token}") as gw,
    ):
        code = IMPERSONATE.format(target=runner.grpc_target)
        r = httpx.post(f"{gw.rest_url}/v1/runs", json={"code": code, "timeout_seconds": 30},
                       headers=auth(STRICT_KEY), timeout=90)
        assert r.status_code == 200, r.text[:300]
        assert r.json()["observation"] == "REFUSED UNAUTHENTICATED", r.json()
        with pytest.raises(grpc.RpcError) as e:  # nor from anywhere else that reaches the port
            runner.stub().Execute(executor_pb2.ExecuteRequest(code="print(1)"), timeout=30,
                                  metadata=(("x-torl-caller", "rollout"), ("x-torl-runner-token", "guess" * 8)))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        r = httpx.post(f"{gw.rest_url}/v1/runs", json={"code": "print(6 * 7)"}, headers=auth(STRICT_KEY), timeout=90)
        assert r.json()["observation"] == "42", r.json()


# -- 11: fail closed ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["grpc_api_keys_required=true"], "grpc_api_keys_required=true needs rest.api_keys_file"),
        (["grpc.host=0.0.0.0"], "would serve anonymous callers"),
        (["role=runner", "rest.enabled=false"], "role=runner needs runner_token_sha256"),
    ],
)
def test_open_doors_refuse_to_start(sets: list[str], needle: str, tmp_path: Path) -> None:
    args = [a for s in sets for a in ("--set", s)]
    cmd = torl_cmd("executor", "serve", "--port", "0", "--set", f"sandbox.state_dir={tmp_path}", *args)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert needle in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-1000:]


# -- 8: probes never import from their writable working directory ------------------------------------


def _probe_commands() -> list[list[str]]:
    """The executor image's HEALTHCHECK and the chart's exec gRPC probe (TLS on: the exec'd check)."""
    import json
    import re

    from tests.deploy.tools import CI_VALUES, render

    text = (REPO / "docker" / "executor.Dockerfile").read_text()
    healthcheck = json.loads(re.search(r"HEALTHCHECK[^\[]*CMD (\[.*\])", text).group(1))  # type: ignore[union-attr]
    cpu = next(p for p in CI_VALUES if p.stem == "cpu-values")
    docs = render("-f", str(cpu), "--set", "tls.enabled=true", "--set", "tls.secretName=torl-tls",
                  "--set", "tls.runnerSecretName=torl-runner-tls")
    runner = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("executor-runner"))
    probe = runner["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]["command"]
    return [healthcheck, probe]


def test_probes_never_import_from_a_planted_cwd(gv: Executor, tmp_path: Path) -> None:
    import sys

    marker = tmp_path / "HIJACKED"
    plant = tmp_path / "cwd"
    for pkg in ("torl", "torl/common", "urllib"):
        (plant / pkg).mkdir(parents=True)
        (plant / pkg / "__init__.py").write_text("")
    payload = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    (plant / "torl" / "common" / "healthcheck.py").write_text(payload)
    (plant / "urllib" / "request.py").write_text(payload)
    healthcheck, probe = _probe_commands()
    assert healthcheck[0] == probe[0] == "python"
    # The probe as the chart runs it, pointed at a live plaintext executor (its TLS flags dropped).
    grpc_probe = [sys.executable, *probe[1 : probe.index("torl.common.healthcheck") + 1], "--target", gv.grpc_target]
    docker_probe = [sys.executable, *healthcheck[1:]]
    res = subprocess.run(grpc_probe, cwd=plant, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr  # the real health check ran and found the executor SERVING
    subprocess.run(docker_probe, cwd=plant, capture_output=True, text=True, timeout=60, check=False)
    assert not marker.exists(), marker.read_text()
    assert_still_serves(gv.stub())


# -- 10: strict runs leave nothing for the next one (files anywhere under /tmp, /dev/shm, SysV IPC) ---

PLANT = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget(0x7017, 4096, 0o1000 | 0o666)
ctypes.memmove(libc.shmat(shmid, None, 0), b"SHM-SECRET", 10)
semid = libc.semget(0x7018, 1, 0o1000 | 0o666)
open("/tmp/runs/leak-file", "w").write("FILE-SECRET")
os.makedirs("/tmp/runs/locked/in", exist_ok=True)
open("/tmp/runs/locked/in/f", "w").write("DIR-SECRET")
os.chmod("/tmp/runs/locked/in", 0o500)
os.chmod("/tmp/runs/locked", 0o500)
try:
    open("/dev/shm/leak", "w").write("DEVSHM-SECRET")
except OSError:
    pass
print(shmid >= 0, semid >= 0)
"""

LOOK = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
found = []
shmid = libc.shmget(0x7017, 0, 0)
if shmid >= 0:
    found.append(ctypes.string_at(libc.shmat(shmid, None, 0), 10).decode(errors="replace"))
if libc.semget(0x7018, 0, 0) >= 0:
    found.append("semaphore")
for p in ("/tmp/runs/leak-file", "/tmp/runs/locked/in/f", "/dev/shm/leak"):
    try:
        found.append(open(p).read())
    except OSError:
        pass
print(found)
"""


def test_strict_runs_leave_nothing_behind(gv: Executor) -> None:
    stub = gv.stub()
    r = execute(stub, PLANT, isolation=STRICT)
    assert (r.status, r.observation) == (OK, "True True"), (r.status, r.stdout, r.stderr)
    for _ in range(2):
        r = execute(stub, LOOK, isolation=STRICT)
        assert (r.status, r.observation) == (OK, "[]"), (r.status, r.stdout, r.stderr)
    assert_still_serves(stub)


# -- 9: bwrap: a run cannot reach the agent's control pipe (or any descriptor of another process) ---

CONTROL_PIPES = """
import os
me, seen, opened = os.getpid(), 0, 0
for p in os.listdir('/proc'):
    if not p.isdigit() or int(p) == me:
        continue
    try:
        cmd = open(f'/proc/{p}/cmdline', 'rb').read()
    except OSError:
        continue
    if b'agent.py' not in cmd:
        continue
    seen += 1
    try:
        fds = os.listdir(f'/proc/{p}/fd')
    except OSError:
        continue
    for fd in fds:
        try:
            os.close(os.open(f'/proc/{p}/fd/{fd}', os.O_WRONLY | os.O_NONBLOCK))
            opened += 1
        except OSError:
            pass
print(seen > 0, opened)
"""


def test_bwrap_runs_cannot_open_the_agents_descriptors(tmp_path: Path) -> None:
    require_binary("bwrap")
    with run_executor(tmp_path, "sandbox.backend=bwrap", "pool.size=1", "pool.slots_per_sandbox=2") as ex:
        stub = ex.stub()
        for isolation in (STRICT, SESSION):
            r = execute(stub, CONTROL_PIPES, isolation=isolation, session_id="s")
            assert (r.status, r.observation) == (OK, "True 0"), (r.status, r.stdout, r.stderr)
        assert_still_serves(stub)


# -- 12: process backend: runs share a uid, yet cannot find other runs' work dirs or trace anything ----

HOLD_SECRET = "import time; open('secret.txt').read(); print('held'); time.sleep(6)"
SNOOP = """
import ctypes, os, time
sandbox_root = os.path.dirname(os.path.dirname(os.getcwd()))
process_dir = os.path.dirname(sandbox_root)
found = []
for sb in os.listdir(process_dir):
    runs = os.path.join(process_dir, sb, 'runs')
    try:
        names = os.listdir(runs)
    except OSError:
        continue
    for d in names:
        try:
            found.append(open(os.path.join(runs, d, 'secret.txt')).read())
        except OSError:
            pass
pid = os.fork()
if pid == 0:
    time.sleep(5)
    os._exit(0)
libc = ctypes.CDLL(None, use_errno=True)
traced = libc.ptrace(16, pid, 0, 0) == 0  # PTRACE_ATTACH to a process of its own uid
os.kill(pid, 9)
os.waitpid(pid, 0)
print(found, traced)
"""


def test_process_backend_runs_cannot_snoop_or_trace(open_tmp: Path) -> None:
    tmp = open_tmp
    uid = 20000 + (os.getpid() + 1) % 10000
    wrap = None
    if os.geteuid() == 0:
        (tmp / "stage").mkdir()
        wrap = as_unprivileged(uid, tmp / "stage")
        require(wrap is not None, "setpriv/unshare to start the service as a non-root uid")
        os.chown(tmp, uid, uid)
    with run_executor(tmp, "sandbox.backend=process", "sandbox.allow_unsandboxed_process=true", "pool.size=2",
                      "pool.slots_per_sandbox=2", wrap=wrap, env={"HOME": str(tmp)}) as ex:
        stub = ex.stub()
        secret = executor_pb2.InputFile(path="secret.txt", content=b"TENANT-A-SECRET")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            holder = pool.submit(execute, stub, HOLD_SECRET, files=[secret], isolation=STRICT)
            time.sleep(2)
            r = execute(stub, SNOOP, isolation=STRICT)
            assert (r.status, r.observation) == (OK, "[] False"), (r.status, r.stdout, r.stderr)
            assert holder.result().observation == "held"
        assert_still_serves(stub)


# -- 7: a sandbox's memory is bounded as a whole, not only per process (last: it costs a sandbox) -----

HOG = """
import os
children = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        x = bytearray(700 * 1024 * 1024)  # under the per-run RLIMIT_AS (1 GiB)
        for i in range(0, len(x), 4096):
            x[i] = 1
        os._exit(0)
    children.append(pid)
ok = sum(os.waitpid(pid, 0)[1] == 0 for pid in children)
print("allocated", ok)
"""


def test_a_sandbox_cannot_take_more_memory_than_its_own(gv: Executor) -> None:
    stub = gv.stub()
    r = execute(stub, HOG, isolation=STRICT, timeout_seconds=60, deadline=120)
    assert r.observation != "allocated 3", (r.status, r.observation, r.message)  # 2.1 GB > the sandbox's 1.5
    assert_still_serves(stub)  # in a fresh sandbox when the old one was killed
