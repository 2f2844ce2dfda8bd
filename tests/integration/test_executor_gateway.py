"""The executor's cluster roles as separate processes: two `role=runner` processes (sandboxes, gRPC
only) behind one `role=gateway` process (API keys, REST and gRPC, no sandboxes). Checks that the
gateway forwards REST and gRPC runs, that one caller's session runs always land on the same runner
(so they keep their worker), that strict runs are spread, that a runner alone serves gRPC and no
REST, and that a dead runner shows up as a typed sandbox_error naming it."""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, require_binary
from tests.integration.executor_helpers import Executor, execute, run_executor
from torl.v1 import common_pb2, executor_pb2

pytestmark = pytest.mark.timeout(300)
OK = common_pb2.TOOL_STATUS_OK
SESSION = executor_pb2.ISOLATION_SESSION
STRICT = executor_pb2.ISOLATION_STRICT
KEY = "gateway-key-0123456789abcdef"
RUNNER_TOKEN = "runner-token-0123456789abcdef0123456789"


@dataclass
class Runner:
    ex: Executor
    metrics_url: str

    def runs(self, caller: str) -> float:
        """Runs this runner executed for `caller` (all statuses), from its own /metrics."""
        text = httpx.get(self.metrics_url, timeout=10).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            if family.name == "torl_executor_requests":
                for sample in family.samples:
                    if sample.name.endswith("_total") and sample.labels.get("caller") == caller:
                        total += sample.value
        return total


@dataclass
class Cluster:
    gateway: Executor
    runners: list[Runner]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_binary("bwrap")
    tmp = tmp_path_factory.mktemp("executor-cluster")
    for d in ("r1", "r2", "gw"):
        (tmp / d).mkdir()
    keys = tmp / "keys.yaml"
    keys.write_text(f'keys:\n  - name: team-g\n    key: "{KEY}"\n    allow_session: true\n')
    token_file = tmp / "runner-token"
    token_file.write_text(RUNNER_TOKEN)
    runner_args = (
        "role=runner", "sandbox.backend=bwrap", "pool.size=1", "pool.slots_per_sandbox=2",
        f"runner_token_sha256={hashlib.sha256(RUNNER_TOKEN.encode()).hexdigest()}",
    )
    m1, m2 = free_port(), free_port()
    with (
        run_executor(tmp / "r1", *runner_args, metrics_port=m1) as r1,
        run_executor(tmp / "r2", *runner_args, metrics_port=m2) as r2,
        run_executor(
            tmp / "gw",
            "role=gateway",
            f"runner_token_file={token_file}",
            f"runners=[\"{r1.grpc_target}\",\"{r2.grpc_target}\"]",
            f"rest.api_keys_file={keys}",
        ) as gw,
    ):
        runners = [Runner(r1, f"http://127.0.0.1:{m1}/metrics"), Runner(r2, f"http://127.0.0.1:{m2}/metrics")]
        yield Cluster(gw, runners)


def test_runner_alone_serves_grpc_only(cluster: Cluster) -> None:
    runner = cluster.runners[0].ex
    assert runner.rest_url.endswith(":0")  # the serving line reports no REST port
    assert '"role": "runner"' in runner.log()
    # A runner trusts the caller a call names only when the call presents the gateway's token.
    with pytest.raises(grpc.RpcError) as e:
        execute(runner.stub(), "print(1)")
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    before = cluster.runners[0].runs("team-direct")
    md = (("x-torl-caller", "team-direct"), ("x-torl-runner-token", RUNNER_TOKEN))
    resp = runner.stub().Execute(
        executor_pb2.ExecuteRequest(code="import sympy; print(sympy.factorint(360))", request_id="direct"),
        timeout=60,
        metadata=md,
    )
    assert (resp.status, resp.request_id, resp.observation) == (OK, "direct", "{2: 3, 3: 2, 5: 1}")
    assert cluster.runners[0].runs("team-direct") == before + 1


def test_gateway_forwards_rest_and_grpc(cluster: Cluster) -> None:
    gw = cluster.gateway
    health = httpx.get(f"{gw.rest_url}/healthz", timeout=10).json()
    assert health["backend"] == "remote" and health["pool"] == {}
    r = httpx.post(
        f"{gw.rest_url}/v1/runs",
        json={"code": "print(input()[::-1])", "stdin": "olleh", "request_id": "via-rest"},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert (r.json()["request_id"], r.json()["status"], r.json()["observation"]) == ("via-rest", "ok", "hello")
    assert httpx.post(f"{gw.rest_url}/v1/runs", json={"code": "print(1)"}, timeout=10).status_code == 401
    g = execute(gw.stub(), "print(6 * 7)", request_id="via-grpc")
    assert (g.status, g.request_id, g.observation) == (OK, "via-grpc", "42")
    with pytest.raises(grpc.RpcError) as e:
        execute(gw.stub(), "print(1)", language="ruby")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "supported: python" in (e.value.details() or "")


def test_session_runs_of_one_caller_stick_to_one_runner(cluster: Cluster) -> None:
    stub = cluster.gateway.stub()
    before = [r.runs("grpc") for r in cluster.runners]
    pids = set()
    for _ in range(12):
        r = execute(stub, "import os; print(os.getpid())", isolation=SESSION, session_id="replica-7")
        assert r.status == OK, r.message
        pids.add(r.stdout)
    grown = [r.runs("grpc") - b for r, b in zip(cluster.runners, before, strict=True)]
    assert sorted(grown) == [0, 12], grown  # all twelve on one runner, none on the other
    assert len(pids) == 12  # each run in a fresh process (never a reused one)

    before = [r.runs("grpc") for r in cluster.runners]
    for _ in range(6):
        assert execute(stub, "print(1)", isolation=STRICT).status == OK
    grown = [r.runs("grpc") - b for r, b in zip(cluster.runners, before, strict=True)]
    assert grown == [3, 3], grown  # strict runs are spread round-robin


def test_rest_session_runs_of_a_key_stick_to_one_runner(cluster: Cluster) -> None:
    before = [r.runs("team-g") for r in cluster.runners]
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as http:
        for i in range(8):
            r = http.post(f"{cluster.gateway.rest_url}/v1/runs",
                          json={"code": f"print({i})", "isolation": "session", "session_id": "s-rest"})
            assert r.status_code == 200 and r.json()["observation"] == str(i), r.text
    grown = [r.runs("team-g") - b for r, b in zip(cluster.runners, before, strict=True)]
    assert sorted(grown) == [0, 8], grown  # the key's name reaches the runner as the caller


def test_dead_runner_is_a_typed_sandbox_error(cluster: Cluster) -> None:
    """Runs last in this module: it stops the second runner."""
    dead = cluster.runners[1].ex
    dead.proc.send_signal(signal.SIGTERM)
    dead.proc.wait(30)
    outcomes = [execute(cluster.gateway.stub(), "print(5)", isolation=STRICT) for _ in range(2)]
    assert sorted(o.status for o in outcomes) == [OK, common_pb2.TOOL_STATUS_SANDBOX_ERROR]
    failed = next(o for o in outcomes if o.status != OK)
    assert f"runner {dead.grpc_target} failed: UNAVAILABLE" in failed.message
