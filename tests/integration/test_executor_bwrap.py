"""The bubblewrap backend behind the same interface: isolation basics, session worker recycling,
and a hostile subset (the full hostile suite runs on gVisor)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import require_binary
from tests.integration.executor_helpers import Executor, assert_still_serves, execute, run_executor
from torl.v1 import common_pb2, executor_pb2

pytestmark = pytest.mark.timeout(240)
SESSION = executor_pb2.ISOLATION_SESSION
STRICT = executor_pb2.ISOLATION_STRICT
MAX_QUEUE = 100
MAX_PROCESSES = 64


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executor]:
    require_binary("bwrap")
    tmp = tmp_path_factory.mktemp("bwrap-executor")
    with run_executor(
        tmp,
        "sandbox.backend=bwrap",
        "pool.size=1",
        "pool.slots_per_sandbox=1",
        f"pool.max_queue={MAX_QUEUE}",
        f"sandbox.max_processes={MAX_PROCESSES}",
    ) as e:
        yield e


def test_session_runs_never_share_a_process(ex: Executor) -> None:
    stub = ex.stub()
    pids = [execute(stub, "import os; print(os.getpid())", isolation=SESSION, session_id="k").stdout for _ in range(6)]
    assert len(set(pids)) == 6, pids


def test_timeout_then_recovers(ex: Executor) -> None:
    stub = ex.stub()
    r = execute(stub, "while True: pass", timeout_seconds=1, isolation=SESSION, session_id="k")
    assert r.status == common_pb2.TOOL_STATUS_TIMEOUT
    assert_still_serves(stub, isolation=SESSION, session_id="k")


def test_no_host_files_no_network_no_leftover_files(ex: Executor) -> None:
    stub = ex.stub()
    code = (
        "import os, socket\n"
        "print(os.path.exists('/etc/shadow'), os.path.exists('/work'), os.getuid())\n"
        "open('/tmp/x', 'w').write('1')\n"
        "try:\n    socket.create_connection(('1.1.1.1', 80), timeout=1); print('NET')\n"
        "except OSError:\n    print('nonet')\n"
    )
    r = execute(stub, code)
    assert r.stdout == "False False 65534\nnonet\n", r.stderr
    assert execute(stub, "import os; print(os.path.exists('/tmp/x'))").observation == "False"


def test_thousand_concurrent_requests_over_the_queue_limit(ex: Executor) -> None:
    """1,000 concurrent strict runs on one slot with a queue of 100: each is answered, either run or
    rejected with status REJECTED and a message naming the full queue; none is lost or hangs."""
    stub = ex.stub()
    n = 1000
    futures = [
        stub.Execute.future(
            executor_pb2.ExecuteRequest(code=f"print({i} + 5)", request_id=f"q{i}", isolation=STRICT), timeout=180
        )
        for i in range(n)
    ]
    results = [f.result() for f in futures]  # a hung call would raise DEADLINE_EXCEEDED here
    assert [r.request_id for r in results] == [f"q{i}" for i in range(n)]
    ran = [(i, r) for i, r in enumerate(results) if r.status == common_pb2.TOOL_STATUS_OK]
    rejected = [r for r in results if r.status == common_pb2.TOOL_STATUS_REJECTED]
    assert len(ran) + len(rejected) == n, {r.status for r in results}
    assert all(r.observation == str(i + 5) for i, r in ran)
    assert len(ran) >= MAX_QUEUE  # the queue was used, not bypassed
    assert rejected, "1,000 runs on one slot with a queue of 100 must overflow"
    assert all(f"queue is full ({MAX_QUEUE} runs waiting)" in r.message for r in rejected)
    assert_still_serves(stub)


def _host_uids_of_agents() -> set[int]:
    uids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"/opt/torl/agent.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                uids.add(os.stat(f"/proc/{pid}").st_uid)
        except OSError:
            continue
    return uids


def test_process_limit_holds_and_fork_bomb_is_harmless(ex: Executor) -> None:
    """Linux exempts host root from RLIMIT_NPROC; a root service must start sandboxes as another uid."""
    health = httpx.get(f"{ex.rest_url}/healthz", timeout=10).json()
    assert health["process_limit_enforced"] is True, health
    if os.geteuid() == 0:
        uids = _host_uids_of_agents()
        assert uids and 0 not in uids, uids
    stub = ex.stub()
    count = (
        "import os, time\nn = 0\ntry:\n    while n < 1000:\n        if os.fork() == 0:\n"
        "            time.sleep(30); os._exit(0)\n        n += 1\n    print('unbounded', n)\n"
        "except OSError as e:\n    print('limited', n, e.errno)\n"
    )
    for isolation in (STRICT, SESSION):
        forked = []
        for _ in range(2):
            r = execute(stub, count, timeout_seconds=20, isolation=isolation, session_id="bomb")
            assert r.status == common_pb2.TOOL_STATUS_OK, r
            word, n, errno = r.stdout.split()
            assert word == "limited" and int(n) < MAX_PROCESSES and errno == "11", r.stdout
            forked.append(int(n))
            assert_still_serves(stub, isolation=isolation, session_id="bomb")
        # Every process of the first bomb was gone (exited and reaped) before the sandbox ran
        # anything else: leftovers would still count against the limit and leave the second fewer.
        assert forked[1] >= forked[0] - 2, forked
    r = execute(stub, "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", timeout_seconds=2)
    assert r.status == common_pb2.TOOL_STATUS_TIMEOUT
    assert_still_serves(stub)
