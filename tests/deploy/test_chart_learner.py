"""The learner's rank wiring in the chart: learner.nodes pods x learner.gpusPerNode ranks under
torchrun, node rank from the pod's ordinal, rendezvous at ordinal 0 through a headless Service,
only ordinal 0 behind the learner Service, learner pods reaching each other through the
NetworkPolicy, a ReadWriteMany checkpoint volume across nodes, and the optional LeaderWorkerSet.

The rendered shell commands (torchrun launch, rank-0 probe) are run with a stand-in `python` on
PATH that prints its arguments, so the node rank a pod would pass is checked, not only the text.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.tools import CHART, helm_template, render

pytestmark = pytest.mark.timeout(300)

SINGLE = CHART / "ci" / "gpu-values.yaml"
TWO_NODES = CHART / "ci" / "gpu-2node-values.yaml"
LEARNER = "t-torl-learner"
RANKS = "t-torl-learner-ranks"
LEARNER_LABELS = {
    "app.kubernetes.io/name": "torl",
    "app.kubernetes.io/instance": "t",
    "app.kubernetes.io/component": "learner",
}


def learner_objects(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (d["kind"], d["metadata"]["name"]): d
        for d in docs
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "learner"
    }


def flags(args: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def run_command(argv: list[str], pod_name: str, tmp: Path, env: dict[str, str] | None = None) -> str:
    """Run a rendered container command with a `python` that prints its argv (one per line)."""
    fake = tmp / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "python").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (fake / "python").chmod(0o755)
    res = subprocess.run(
        argv,
        env={"PATH": f"{fake}:{os.environ['PATH']}", "POD_NAME": pod_name, **(env or {})},
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def single() -> dict[tuple[str, str], dict[str, Any]]:
    return learner_objects(render("-f", str(SINGLE)))


@pytest.fixture(scope="module")
def two_nodes() -> dict[tuple[str, str], dict[str, Any]]:
    return learner_objects(render("-f", str(TWO_NODES)))


def container(workload_or_template: dict[str, Any]) -> dict[str, Any]:
    """The one container of a StatefulSet's pod template, or of a pod template itself."""
    tmpl = workload_or_template["spec"].get("template", workload_or_template)
    (c,) = tmpl["spec"]["containers"]
    return c


@pytest.mark.parametrize(("values", "nodes"), [(SINGLE, 1), (TWO_NODES, 2)], ids=["1x8", "2x8"])
def test_ranks_launch_under_torchrun_from_the_ordinal(values: Path, nodes: int, tmp_path: Path) -> None:
    objs = learner_objects(render("-f", str(values)))
    sts = objs[("StatefulSet", LEARNER)]
    assert sts["spec"]["replicas"] == nodes
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] == RANKS
    c = container(sts)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 8 == c["resources"]["requests"]["nvidia.com/gpu"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    f = flags(c["args"])
    assert f == {
        "nnodes": str(nodes),
        "nproc-per-node": "8",
        "master-addr": f"{LEARNER}-0.{RANKS}.torl.svc",
        "master-port": "29500",
    }
    assert c["args"][-6:] == ["-m", "torl.cli.main", "learner", "serve", "--config", "/etc/torl/config.yaml"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["rendezvous"] == 29500
    # The pod <learner>-<k> passes --node-rank k to torchrun.
    for k in range(nodes):
        out = run_command(c["command"] + c["args"], f"{LEARNER}-{k}", tmp_path).splitlines()
        assert out[:2] == ["-m", "torch.distributed.run"]
        assert out[out.index("--node-rank") + 1] == str(k)
        assert out[-5:] == ["torl.cli.main", "learner", "serve", "--config", "/etc/torl/config.yaml"]


def test_headless_rendezvous_service_lists_every_pod(two_nodes: dict[tuple[str, str], dict[str, Any]]) -> None:
    svc = two_nodes[("Service", RANKS)]["spec"]
    assert svc["clusterIP"] == "None"
    assert svc["publishNotReadyAddresses"] is True, "ranks rendezvous before any pod is ready"
    assert svc["selector"] == LEARNER_LABELS
    assert svc["ports"] == [{"name": "rendezvous", "port": 29500, "targetPort": "rendezvous", "protocol": "TCP"}]


@pytest.mark.parametrize("values", [SINGLE, TWO_NODES], ids=["1x8", "2x8"])
def test_only_ordinal_0_is_behind_the_learner_service(values: Path) -> None:
    docs = render("-f", str(values))
    objs = learner_objects(docs)
    svc = objs[("Service", LEARNER)]["spec"]
    assert svc["selector"] == {**LEARNER_LABELS, "statefulset.kubernetes.io/pod-name": f"{LEARNER}-0"}
    assert {p["name"] for p in svc["ports"]} == {"grpc", "metrics"}
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor" and d["metadata"]["name"] == LEARNER]
    svc_labels = objs[("Service", LEARNER)]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc_labels.items()


def test_other_ordinals_pass_probes_and_ordinal_0_asks_grpc_health(
    two_nodes: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    c = container(two_nodes[("StatefulSet", LEARNER)])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        argv = c[probe]["exec"]["command"]
        assert run_command(argv, f"{LEARNER}-1", tmp_path) == "", "ordinal 1 serves no gRPC"
        assert run_command(argv, f"{LEARNER}-0", tmp_path).splitlines() == [
            "-m", "torl.common.healthcheck", "--target", "127.0.0.1:50054"
        ]


def test_rank0_probe_keeps_tls_arguments(tmp_path: Path) -> None:
    objs = learner_objects(render("-f", str(TWO_NODES), "--set", "tls.enabled=true,tls.secretName=torl-tls"))
    argv = container(objs[("StatefulSet", LEARNER)])["livenessProbe"]["exec"]["command"]
    out = run_command(argv, f"{LEARNER}-0", tmp_path).splitlines()
    assert out[out.index("--server-name") + 1] == LEARNER and "--tls" in out


def test_network_policy_lets_learner_pods_reach_each_other(two_nodes: dict[tuple[str, str], dict[str, Any]]) -> None:
    np = two_nodes[("NetworkPolicy", LEARNER)]["spec"]
    rank_ports = [{"protocol": "TCP", "port": 29500}, {"protocol": "TCP", "port": 32768, "endPort": 60999}]
    peer = [{"podSelector": {"matchLabels": LEARNER_LABELS}}]
    assert {"from": peer, "ports": rank_ports} in np["ingress"]
    assert {"to": peer, "ports": rank_ports} in np["egress"]


def test_single_node_opens_no_rank_ports(single: dict[tuple[str, str], dict[str, Any]]) -> None:
    np = single[("NetworkPolicy", LEARNER)]["spec"]
    for rule in np["ingress"] + np["egress"]:
        assert all(p["port"] != 29500 for p in rule.get("ports", [])), rule


def test_checkpoints_are_read_write_many_across_nodes(two_nodes: dict[tuple[str, str], dict[str, Any]]) -> None:
    pvc = two_nodes[("PersistentVolumeClaim", f"{LEARNER}-checkpoints")]["spec"]
    assert pvc["accessModes"] == ["ReadWriteMany"]
    pod = two_nodes[("StatefulSet", LEARNER)]["spec"]["template"]["spec"]
    (vol,) = [v for v in pod["volumes"] if v["name"] == "checkpoints"]
    assert vol["persistentVolumeClaim"]["claimName"] == f"{LEARNER}-checkpoints"
    assert "volumeClaimTemplates" not in two_nodes[("StatefulSet", LEARNER)]["spec"], "one shared claim"


def test_schema_refuses_read_write_once_with_several_nodes() -> None:
    res = helm_template("-f", str(TWO_NODES), "--set", "learner.checkpoints.accessMode=ReadWriteOnce")
    assert res.returncode != 0
    assert 'learner.checkpoints.accessMode does not match: "ReadWriteMany"' in res.stderr, res.stderr


def test_leader_worker_set(tmp_path: Path) -> None:
    objs = learner_objects(render("-f", str(TWO_NODES), "--set", "learner.leaderWorkerSet.enabled=true"))
    assert ("StatefulSet", LEARNER) not in objs
    lws = objs[("LeaderWorkerSet", LEARNER)]
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    tmpl = lws["spec"]["leaderWorkerTemplate"]
    assert tmpl["size"] == 2 and tmpl["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader, worker = container(tmpl["leaderTemplate"]), container(tmpl["workerTemplate"])
    assert "grpc" in leader["readinessProbe"] and "readinessProbe" not in worker
    for c in (leader, worker):
        env = {e["name"]: e for e in c["env"]}
        assert env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == (
            "metadata.labels['leaderworkerset.sigs.k8s.io/worker-index']"
        )
        assert flags(c["args"])["master-addr"] == "$(LWS_LEADER_ADDRESS)"
        # NODE_RANK (the worker index) wins over the pod name's suffix.
        out = run_command(c["command"] + c["args"], f"{LEARNER}-0-1", tmp_path, {"NODE_RANK": "1"}).splitlines()
        assert out[out.index("--node-rank") + 1] == "1"
    svc = objs[("Service", LEARNER)]["spec"]
    assert svc["selector"] == {**LEARNER_LABELS, "leaderworkerset.sigs.k8s.io/worker-index": "0"}
    # No schema for the CRD in kubernetes-validate: its pod templates are checked as Pods.
    for key in ("leaderTemplate", "workerTemplate"):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", **tmpl[key]["metadata"]},
               "spec": tmpl[key]["spec"]}
        kubernetes_validate.validate(pod, "1.30.0", strict=True)


def test_cpu_single_rank_runs_the_learner_without_torchrun() -> None:
    objs = learner_objects(render("-f", str(CHART / "ci" / "cpu-values.yaml")))
    c = container(objs[("StatefulSet", LEARNER)])
    assert "command" not in c and c["args"] == ["learner", "serve", "--config", "/etc/torl/config.yaml"]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
