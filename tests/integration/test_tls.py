"""TLS and mTLS between services, over real gRPC on loopback: a reward server started with
grpc.tls.* serves TLS clients and refuses plaintext ones; with grpc.tls.ca_file it requires a client
certificate; bad certificate files stop start-up with a message naming the field; and the
rollout's reward client (deps.tls) and the learner's replica client (weight_sync.tls) use TLS.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import REPO, ServiceProcess, free_port, require_binary, torl_cmd
from tests.tls_certs import Pki, client_creds, make_pki, tls_args
from torl.common.config import GrpcServerSettings, TlsClientSettings, TlsSettings
from torl.common.grpc_server import ServiceBinding, start_server
from torl.v1 import common_pb2, reward_pb2, reward_pb2_grpc, rollout_pb2, rollout_pb2_grpc, trajectory_pb2

pytestmark = pytest.mark.timeout(120)

SCORE = reward_pb2.ScoreRequest(id="t1", response="So the answer is $\\boxed{4}$.", reference="4")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second CA the servers do not trust."""
    return make_pki(tmp_path_factory.mktemp("other-pki"), ca_cn="some other CA")


def health_code(channel: grpc.Channel) -> grpc.StatusCode | int:
    """SERVING's enum value, or the status code the call failed with."""
    try:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError as e:
        return e.code()
    return int(resp.status)


def score(channel: grpc.Channel) -> reward_pb2.ScoreResponse:
    resp: reward_pb2.ScoreResponse = reward_pb2_grpc.RewardStub(channel).Score(SCORE, timeout=30)
    return resp


def test_tls_server_serves_tls_clients_and_refuses_plaintext(
    start_service: Callable[..., ServiceProcess], pki: Pki, other_pki: Pki
) -> None:
    sp = start_service("reward", *tls_args(pki), credentials=client_creds(pki))
    with grpc.secure_channel(sp.target, client_creds(pki)) as ch:
        assert health_code(ch) == health_pb2.HealthCheckResponse.SERVING
        resp = score(ch)
        assert (resp.id, resp.correct, resp.reward) == ("t1", True, 1.0)
    # The certificate names localhost too (what a client checks when it dials by name).
    with grpc.secure_channel(f"localhost:{sp.port}", client_creds(pki)) as ch:
        assert health_code(ch) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(sp.target) as ch:
        assert health_code(ch) == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(sp.target, client_creds(pki, ca=other_pki.ca)) as ch:
        assert health_code(ch) == grpc.StatusCode.UNAVAILABLE  # server cert not signed by the CA we trust
    # A name the certificate does not hold is refused.
    wrong_name = (("grpc.ssl_target_name_override", "not-in-the-cert.test"),)
    with grpc.secure_channel(sp.target, client_creds(pki), options=wrong_name) as ch:
        assert health_code(ch) == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate_from_the_ca(
    start_service: Callable[..., ServiceProcess], pki: Pki, other_pki: Pki
) -> None:
    sp = start_service("reward", *tls_args(pki, mutual=True), credentials=client_creds(pki, with_cert=True))
    with grpc.secure_channel(sp.target, client_creds(pki, with_cert=True)) as ch:
        assert score(ch).correct
    with grpc.secure_channel(sp.target, client_creds(pki)) as ch:
        assert health_code(ch) == grpc.StatusCode.UNAVAILABLE  # no client certificate
    # A client certificate from another CA (trusting our server's CA) is refused.
    stranger = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=other_pki.client_key.read_bytes(),
        certificate_chain=other_pki.client_cert.read_bytes(),
    )
    with grpc.secure_channel(sp.target, stranger) as ch:
        assert health_code(ch) == grpc.StatusCode.UNAVAILABLE
    # A certificate from our CA issued for "server auth" only (how runner certificates are issued,
    # docs/deploy.md) is no client certificate: a leaked runner key opens no other service.
    server_only = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.server_key.read_bytes(),
        certificate_chain=pki.server_cert.read_bytes(),
    )
    with grpc.secure_channel(sp.target, server_only) as ch:
        assert health_code(ch) == grpc.StatusCode.UNAVAILABLE
    assert sp.proc.poll() is None, sp.log()  # refused handshakes do not hurt the server

    # The chart's exec probe (kubelet's gRPC probe has no TLS): healthy with the pod's cert, not without.
    probe = [sys.executable, "-m", "torl.common.healthcheck", "--target", sp.target, "--tls", "--ca", str(pki.ca),
             "--server-name", "torl-reward.test"]
    ok = subprocess.run([*probe, "--cert", str(pki.client_cert), "--key", str(pki.client_key)],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    no_cert = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    assert no_cert.returncode == 1 and "not healthy: UNAVAILABLE" in no_cert.stderr, no_cert.stderr


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no_cert", "reward.grpc.tls: Value error, cert_file and key_file required when enabled=true"),
        ("missing", "reward.grpc.tls.cert_file: file /nonexistent/tls.crt not found"),
        ("garbage", "reward.grpc.tls.key_file:"),
        ("mismatch", "reward.grpc.tls.cert_file/key_file: the key does not match the certificate"),
        ("bad_ca", "reward.grpc.tls.ca_file:"),
    ],
)
def test_bad_tls_files_fail_startup(case: str, expected: str, pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not PEM\n")
    files = {
        "no_cert": ["--set", "grpc.tls.enabled=true"],
        "missing": [*tls_args(pki), "--set", "grpc.tls.cert_file=/nonexistent/tls.crt"],
        "garbage": [*tls_args(pki), "--set", f"grpc.tls.key_file={garbage}"],
        "mismatch": [*tls_args(pki), "--set", f"grpc.tls.key_file={pki.client_key}"],
        "bad_ca": [*tls_args(pki, mutual=True), "--set", f"grpc.tls.ca_file={garbage}"],
    }[case]
    port = free_port()
    res = subprocess.run(
        torl_cmd("reward", "serve", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", *files),
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert expected in res.stderr, res.stderr
    if case == "garbage":
        assert "is not a PEM private key" in res.stderr
    assert "Traceback" not in res.stderr
    assert '"serving"' not in res.stdout + res.stderr


def test_rollout_reward_client_uses_deps_tls(start_service: Callable[..., ServiceProcess], pki: Pki) -> None:
    """The rollout's RewardScorer (the same dependency_channel as ExecutorTools) with deps.tls."""
    from torl.rollout.config import DependencySettings
    from torl.rollout.scoring import RewardScorer

    sp = start_service("reward", *tls_args(pki, mutual=True), credentials=client_creds(pki, with_cert=True))
    deps = DependencySettings.model_validate({
        "reward_target": f"localhost:{sp.port}",
        "tls": {"enabled": True, "ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
                "key_file": str(pki.client_key)},
    })

    def group() -> trajectory_pb2.TrajectoryGroup:
        g = trajectory_pb2.TrajectoryGroup(group_id="g", prompt=trajectory_pb2.Prompt(prompt_id="p", answer="4"))
        g.trajectories.add(trajectory_id="a", text="So $\\boxed{4}$.")
        g.trajectories.add(trajectory_id="b", text="So $\\boxed{5}$.")
        return g

    async def run(tls: TlsClientSettings) -> trajectory_pb2.TrajectoryGroup:
        scorer = RewardScorer(deps.reward_target, deadline_seconds=5.0, tls=tls)
        g = group()
        try:
            await scorer.score_group(g)
        finally:
            await scorer.close()
        return g

    secure = asyncio.run(run(deps.tls))
    assert [(t.correct, t.reward_reason) for t in secure.trajectories] == [
        (True, common_pb2.REWARD_REASON_CORRECT), (False, common_pb2.REWARD_REASON_WRONG)]
    assert not any(t.excluded for t in secure.trajectories)

    no_cert = deps.tls.model_copy(update={"cert_file": "", "key_file": ""})
    refused = asyncio.run(run(no_cert))
    assert all(t.reward_reason == common_pb2.REWARD_REASON_SCORING_FAILED for t in refused.trajectories)
    assert all("UNAVAILABLE" in t.excluded_reason for t in refused.trajectories)


class _StatusOnly(rollout_pb2_grpc.RolloutServicer):
    async def GetStatus(self, request: rollout_pb2.GetStatusRequest,
                        context: grpc.aio.ServicerContext) -> rollout_pb2.RolloutStatus:
        return rollout_pb2.RolloutStatus(version=common_pb2.WeightVersion(incarnation=3, step=7), replica="r0")


@pytest.fixture
def tls_replica(pki: Pki) -> Iterator[str]:
    """A Rollout gRPC server (GetStatus only) built by torl's server bootstrap with mTLS, in a thread."""
    port = free_port()
    settings = GrpcServerSettings(host="127.0.0.1", port=port, tls=TlsSettings(
        enabled=True, cert_file=str(pki.server_cert), key_file=str(pki.server_key), ca_file=str(pki.ca)))
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        running = await start_server(settings, [ServiceBinding(
            "torl.v1.Rollout", _StatusOnly(), rollout_pb2_grpc.add_RolloutServicer_to_server)])
        started.set()
        await stop.wait()
        await running.server.stop(None)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10), "replica server did not start"
    yield f"127.0.0.1:{port}"
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


def test_learner_replica_client_uses_weight_sync_tls(tls_replica: str, pki: Pki) -> None:
    """WeightSender's channels (UpdateWeights, GetStatus) honour weight_sync.tls, including the
    server name override used for replicas discovered by IP."""
    from torl.learner.config import WeightSyncSettings
    from torl.learner.weight_sync import WeightSender

    tls = {"enabled": True, "ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
           "key_file": str(pki.client_key), "server_name_override": "torl-reward.test"}
    sender = WeightSender(WeightSyncSettings.model_validate({"replicas": [tls_replica], "tls": tls,
                                                             "status_deadline_seconds": 5}))
    got = sender.replica_versions()[tls_replica]
    sender.close()
    assert isinstance(got, common_pb2.WeightVersion) and (got.incarnation, got.step) == (3, 7), got

    plain = WeightSender(WeightSyncSettings.model_validate({"replicas": [tls_replica], "status_deadline_seconds": 3}))
    refused = plain.replica_versions()[tls_replica]
    plain.close()
    assert isinstance(refused, str) and refused.startswith("UNAVAILABLE"), refused


def test_server_picks_up_rotated_certificates(tmp_path: Path, pki: Pki, other_pki: Pki) -> None:
    """grpc.tls.reload: new connections get the certificate now in the files (a Secret update),
    without a restart; a half-written set (key of another cert) is skipped, the old one stays."""
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "tls.crt", live / "tls.key"
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    port = free_port()
    settings = GrpcServerSettings(host="127.0.0.1", port=port, tls=TlsSettings(
        enabled=True, cert_file=str(cert), key_file=str(key)))
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        running = await start_server(settings, [])
        started.set()
        await stop.wait()
        await running.server.stop(None)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        assert started.wait(10)
        target = f"127.0.0.1:{port}"
        serving = health_pb2.HealthCheckResponse.SERVING
        with grpc.secure_channel(target, client_creds(pki)) as ch:
            assert health_code(ch) == serving
        key.write_bytes(other_pki.server_key.read_bytes())  # half-way through a rotation: key and cert differ
        with grpc.secure_channel(target, client_creds(pki)) as ch:
            assert health_code(ch) == serving  # the old pair stays in use
        cert.write_bytes(other_pki.server_cert.read_bytes())
        with grpc.secure_channel(target, client_creds(other_pki)) as ch:
            assert health_code(ch) == serving  # rotated: signed by the new CA
        with grpc.secure_channel(target, client_creds(pki)) as ch:
            assert health_code(ch) == grpc.StatusCode.UNAVAILABLE  # the old CA no longer matches
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def test_executor_hops_over_mtls(start_service: Callable[..., ServiceProcess], pki: Pki, tmp_path: Path) -> None:
    """rollout -> executor gateway -> runner, every hop mTLS: the rollout's ExecutorTools (deps.tls) runs
    code through a gateway whose runner channel uses runners_tls; a gateway without client TLS cannot."""
    from torl.rollout.tools import ExecutorTools

    require_binary("bwrap")
    creds = client_creds(pki, with_cert=True)
    client = {"enabled": True, "ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
              "key_file": str(pki.client_key)}
    token = tmp_path / "runner-token"
    token.write_text("runner-token-0123456789abcdef0123456789")
    digest = hashlib.sha256(token.read_bytes()).hexdigest()
    runner = start_service(
        "executor", *tls_args(pki, mutual=True), "--set", "role=runner", "--set", "rest.enabled=false",
        "--set", f"runner_token_sha256={digest}",
        "--set", "sandbox.backend=bwrap", "--set", "pool.size=1", "--set", f"sandbox.state_dir={tmp_path / 'r'}",
        credentials=creds,
    )
    runners = f'runners=["localhost:{runner.port}"]'
    token_set = ("--set", f"runner_token_file={token}")
    gateway = start_service(
        "executor", *tls_args(pki, mutual=True), "--set", "role=gateway", "--set", "rest.enabled=false",
        "--set", runners, *token_set, *[a for k, v in client.items() for a in ("--set", f"runners_tls.{k}={v}")],
        credentials=creds,
    )
    plain_gateway = start_service(
        "executor", "--set", "role=gateway", "--set", "rest.enabled=false", "--set", runners, *token_set,
    )

    async def run(target: str) -> tuple[str, bool, str]:
        tools = ExecutorTools(target, session_id="rollout-0", timeout_seconds=20.0, deadline_seconds=30.0,
                              tls=TlsClientSettings.model_validate(client) if target != plain_gateway.target else None)
        try:
            r = await tools.run("print(6 * 7)")
        finally:
            await tools.close()
        return r.observation.strip(), r.reachable, r.message

    assert asyncio.run(run(f"localhost:{gateway.port}"))[:2] == ("42", True)
    observation, _reachable, message = asyncio.run(run(plain_gateway.target))
    # The plaintext gateway is reached, but its runner refuses the plaintext hop.
    assert observation != "42" and f"runner localhost:{runner.port} failed: UNAVAILABLE" in message, message
