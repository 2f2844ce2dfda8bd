"""The bubblewrap backend behind the same interface: isolation basics, session worker recycling,
and a hostile subset (the full hostile suite runs on gVisor)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import require_binary
from tests.integration.executor_helpers import Executor, assert_still_serves, execute, run_executor
from torl.v1 import common_pb2, executor_pb2

pytestmark = pytest.mark.timeout(240)
SESSION = executor_pb2.ISOLATION_SESSION
STRICT = executor_pb2.ISOLATION_STRICT
MAX_QUEUE = 100


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executor]:
    require_binary("bwrap")
    tmp = tmp_path_factory.mktemp("bwrap-executor")
    with run_executor(
        tmp,
        "sandbox.backend=bwrap",
        "pool.size=1",
        "pool.slots_per_sandbox=1",
        "pool.worker_recycle_after_runs=3",
        f"pool.max_queue={MAX_QUEUE}",
    ) as e:
        yield e


def test_session_worker_recycled_after_k_runs(ex: Executor) -> None:
    stub = ex.stub()
    pids = [execute(stub, "import os; print(os.getpid())", isolation=SESSION, session_id="k").stdout for _ in range(9)]
    assert pids[0] == pids[1] == pids[2]
    assert len(set(pids)) == 3, pids


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
