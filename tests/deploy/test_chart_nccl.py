"""Weight sync over NCCL in the chart (weightSync.transport=nccl): both services' NCCL fields rendered
consistently and accepted by their own settings classes, each rollout pod's rank offset derived from
its ordinal (the rendered shell command is run, with a stand-in `torl` that prints what it gets), the
same offsets the learner's group plan hands out, the NetworkPolicy rules for the rendezvous and the
collective ports, and the template-time refusals where NCCL cannot work.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.tools import CHART, helm_template, render

pytestmark = pytest.mark.timeout(300)

GPU = CHART / "ci" / "gpu-values.yaml"  # 4 rollout replicas x 2 GPUs, learner 1 node x 8 GPUs
NCCL = ("-f", str(GPU), "--set", "weightSync.transport=nccl")
ADDRESS = "t-torl-learner-0.t-torl-learner-ranks.torl.svc"
PORT = 29600
REPLICAS, TP = 4, 2
WORLD = 1 + REPLICAS * TP
COLLECTIVE = {"protocol": "TCP", "port": 32768, "endPort": 60999}


def labels(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "torl", "app.kubernetes.io/instance": "t", "app.kubernetes.io/component": component
    }


def objects(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def config(objs: dict[tuple[str, str], dict[str, Any]], component: str) -> dict[str, Any]:
    data = objs[("ConfigMap", f"t-torl-{component}-config")]["data"]["config.yaml"]
    loaded = yaml.safe_load(data)
    assert isinstance(loaded, dict)
    return loaded


def rollout_container(objs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    (c,) = objs[("StatefulSet", "t-torl-rollout")]["spec"]["template"]["spec"]["containers"]
    return c


@pytest.fixture(scope="module")
def nccl() -> dict[tuple[str, str], dict[str, Any]]:
    return objects(render(*NCCL))


@pytest.fixture(scope="module")
def grpc() -> dict[tuple[str, str], dict[str, Any]]:
    return objects(render("-f", str(GPU)))


@pytest.mark.parametrize("version", ["1.30.0", "1.35.0"])
def test_nccl_manifests_validate_strict(nccl: dict[tuple[str, str], dict[str, Any]], version: str) -> None:
    for (kind, name), doc in nccl.items():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs: checked in test_chart.py
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{kind}/{name} invalid for {version}: {e.message}")


def test_configs_carry_the_rendezvous_and_load_in_the_services(nccl: dict[tuple[str, str], dict[str, Any]]) -> None:
    from torl.common.config import load_settings
    from torl.learner.config import LearnerSettings
    from torl.rollout.config import RolloutSettings

    ws = load_settings(LearnerSettings, file_values=config(nccl, "learner")).weight_sync
    assert (ws.transport, ws.nccl_master_address, ws.nccl_master_port) == ("nccl", ADDRESS, PORT)
    assert (ws.nccl_world_size, ws.nccl_workers_per_replica, ws.nccl_packed) == (WORLD, TP, True)
    rollout = load_settings(RolloutSettings, file_values=config(nccl, "rollout"))
    assert (rollout.engine.weight_transfer, rollout.engine.tensor_parallel_size) == ("nccl", TP)
    w = rollout.weights
    assert (w.nccl_master_address, w.nccl_master_port, w.nccl_world_size, w.nccl_packed) == (ADDRESS, PORT, WORLD, True)
    # The address is learner ordinal 0 through the headless rank Service, which exists and lists not-ready pods.
    ranks = nccl[("Service", "t-torl-learner-ranks")]["spec"]
    assert ranks["clusterIP"] == "None" and ranks["publishNotReadyAddresses"] is True
    assert nccl[("StatefulSet", "t-torl-learner")]["spec"]["serviceName"] == "t-torl-learner-ranks"


def rank_offset(c: dict[str, Any], pod: str, tmp: Path) -> tuple[int, list[str]]:
    """Run the rollout container's command as pod `pod` with a `torl` that prints its env and argv."""
    fake = tmp / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "torl").write_text(
        '#!/bin/sh\necho "$TORL_ROLLOUT_WEIGHTS__NCCL_RANK_OFFSET"\nfor a in "$@"; do echo "$a"; done\n'
    )
    (fake / "torl").chmod(0o755)
    res = subprocess.run(
        [*c["command"], *c["args"]],
        env={"PATH": f"{fake}:{os.environ['PATH']}", "TORL_ROLLOUT_REPLICA_ID": pod},
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert res.returncode == 0, res.stderr
    first, *argv = res.stdout.splitlines()
    return int(first), argv


def test_each_rollout_pod_takes_its_ranks_from_its_ordinal(
    nccl: dict[tuple[str, str], dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torl.common.config import load_settings
    from torl.learner.config import LearnerSettings
    from torl.learner.nccl_sender import plan_group
    from torl.rollout.config import RolloutSettings

    c = rollout_container(nccl)
    env = {e["name"]: e for e in c["env"]}
    assert env["TORL_ROLLOUT_REPLICA_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    pods = [f"t-torl-rollout-{i}" for i in range(REPLICAS)]
    offsets = {}
    for pod in pods:
        offsets[pod], argv = rank_offset(c, pod, tmp_path)
        assert argv == ["rollout", "serve", "--config", "/etc/torl/config.yaml"]
        # The service accepts its config with this pod's offset from the environment (env > file).
        monkeypatch.setenv("TORL_ROLLOUT_WEIGHTS__NCCL_RANK_OFFSET", str(offsets[pod]))
        weights = load_settings(RolloutSettings, file_values=config(nccl, "rollout")).weights
        assert weights.nccl_rank_offset == offsets[pod]
    assert offsets == {pod: 1 + i * TP for i, pod in enumerate(pods)}
    # The learner's group plan, with every replica answering, gives each pod the same ranks and world size.
    ws = load_settings(LearnerSettings, file_values=config(nccl, "learner")).weight_sync
    plan = plan_group({f"10.0.0.{i}:50053": pod for i, pod in enumerate(pods)}, ws.nccl_workers_per_replica, 1)
    assert {pods[int(t.split(":")[0].rsplit(".", 1)[1])]: o for t, o in plan.offsets.items()} == offsets
    assert plan.world_size == ws.nccl_world_size == WORLD


def test_grpc_transport_renders_no_nccl(grpc: dict[tuple[str, str], dict[str, Any]]) -> None:
    assert "command" not in rollout_container(grpc)
    assert "nccl" not in str(config(grpc, "rollout")) and "nccl" not in str(config(grpc, "learner"))
    for name in ("t-torl-rollout", "t-torl-learner"):
        spec = grpc[("NetworkPolicy", name)]["spec"]
        for rule in spec["ingress"] + spec["egress"]:
            assert COLLECTIVE not in rule.get("ports", []), (name, rule)


def test_network_policy_opens_the_rendezvous_and_collective_ports(nccl: dict[tuple[str, str], dict[str, Any]]) -> None:
    learner = [{"podSelector": {"matchLabels": labels("learner")}}]
    ordinal0 = {"statefulset.kubernetes.io/pod-name": "t-torl-learner-0"}
    rank0 = [{"podSelector": {"matchLabels": {**labels("learner"), **ordinal0}}}]
    rollout = [{"podSelector": {"matchLabels": labels("rollout")}}]
    group = learner + rollout
    rendezvous = {"protocol": "TCP", "port": PORT}
    ro = nccl[("NetworkPolicy", "t-torl-rollout")]["spec"]
    assert {"to": rank0, "ports": [rendezvous]} in ro["egress"]
    assert {"to": group, "ports": [COLLECTIVE]} in ro["egress"]
    assert {"from": group, "ports": [COLLECTIVE]} in ro["ingress"]
    le = nccl[("NetworkPolicy", "t-torl-learner")]["spec"]
    assert {"from": rollout, "ports": [rendezvous, COLLECTIVE]} in le["ingress"]
    assert {"to": rollout, "ports": [{"protocol": "TCP", "port": 50053}, COLLECTIVE]} in le["egress"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--set", "rollout.gpus=0"), "weightSync.transport=nccl needs GPUs on the rollout replicas"),
        (("--set", "learner.gpusPerNode=0"), "weightSync.transport=nccl needs a GPU learner"),
        (("--set", "learner.leaderWorkerSet.enabled=true"), "weightSync.transport=nccl needs the StatefulSet learner"),
        (("--set", "weightSync.nccl.port=29500"), "is also learner.rendezvousPort"),
        (("--set", "weightSync.nccl.port=40000"), "lies in learner.collectivePorts (32768-60999)"),
        (("--set", "rollout.config.engine.weight_transfer=grpc"),
         "learner.config.weight_sync.transport (nccl) differs from rollout.config.engine.weight_transfer (grpc)"),
    ],
    ids=["cpu-rollout", "cpu-learner", "leader-worker-set", "port-taken", "port-ephemeral", "half-configured"],
)
def test_nccl_refused_where_it_cannot_work(extra: tuple[str, ...], message: str) -> None:
    res = helm_template(*NCCL, *extra)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr


def test_schema_refuses_an_unknown_transport() -> None:
    res = helm_template("-f", str(GPU), "--set", "weightSync.transport=rdma")
    assert res.returncode != 0
    assert "weightSync.transport" in res.stderr, res.stderr
