"""The chart's TLS between services (values tls.*), rendered offline: off by default; when on, every
gRPC service container mounts the Secret read-only, its service config turns on server TLS and the
client TLS of each hop (the services accept it), probes exec the TLS health check, runner pods (they
run untrusted code) mount only a Secret of their own, and a missing Secret name fails the install
with a clear message.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.test_chart import TORL_COMPONENTS, _settings_class, by_kind, workloads
from tests.deploy.tools import CHART, CI_VALUES, helm_template, notes_renderer, render, run, tool

pytestmark = pytest.mark.timeout(300)

TLS_DIR = "/etc/torl-secrets/tls"
CPU = next(p for p in CI_VALUES if p.stem == "cpu-values")


def tls_values(mutual: bool, runner_secret: str = "") -> list[str]:
    return ["-f", str(CPU), "--set", "tls.enabled=true", "--set", "tls.secretName=torl-tls",
            "--set", f"tls.mutual={str(mutual).lower()}", "--set", f"tls.runnerSecretName={runner_secret}"]


def assert_tls_probes(docs: list[dict[str, Any]], comp: str, c: dict[str, Any], mutual: bool) -> None:
    """Kubelet's gRPC probe has no TLS: probes exec the TLS health check against the Service name."""
    port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
    probes = ["startupProbe", "livenessProbe"] + ([] if comp == "executor-gateway" else ["readinessProbe"])
    for probe in probes:
        cmd = c[probe]["exec"]["command"]
        # -I: isolated mode, never imports from the probe's (writable) working directory
        assert cmd[:4] == ["python", "-I", "-m", "torl.common.healthcheck"], (comp, probe)
        assert cmd[cmd.index("--target") + 1] == f"127.0.0.1:{port}"
        assert cmd[cmd.index("--server-name") + 1] == service_name(docs, comp)
        assert ("--cert" in cmd) == mutual and "--tls" in cmd
        assert c[probe]["timeoutSeconds"] >= 5
        assert "grpc" not in c[probe]
    if comp == "executor-gateway":
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def config_of(docs: list[dict[str, Any]], pod: dict[str, Any]) -> dict[str, Any]:
    configmaps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    (vol,) = [v for v in pod["volumes"] if v["name"] == "config"]
    content: dict[str, Any] = yaml.safe_load(configmaps[vol["configMap"]["name"]]["data"]["config.yaml"])
    return content


def service_name(docs: list[dict[str, Any]], comp: str) -> str:
    """The component's gRPC Service (the learner's headless "-ranks" Service carries only the rendezvous)."""
    (svc,) = [
        d for d in by_kind(docs, "Service")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == comp
        and any(p["name"] == "grpc" for p in d["spec"]["ports"])
    ]
    return str(svc["metadata"]["name"])


def test_tls_is_off_by_default() -> None:
    docs = render("-f", str(CPU))
    for comp, wl in workloads(docs).items():
        pod = wl["spec"]["template"]["spec"]
        assert all(v["name"] != "tls" for v in pod.get("volumes", [])), comp
        if comp not in TORL_COMPONENTS:
            continue
        cfg = config_of(docs, pod)
        assert "tls" not in cfg["grpc"], comp
        assert "runners_tls" not in cfg and "tls" not in cfg.get("deps", {}) and "tls" not in cfg.get("weight_sync", {})
        (c,) = pod["containers"]
        assert "grpc" in c["livenessProbe"] and "exec" not in c["livenessProbe"], comp


SERVICES_WITH_SECRET = tuple(c for c in TORL_COMPONENTS if c != "executor-runner")


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_tls_on_mounts_the_secret_and_configures_every_hop(mutual: bool) -> None:
    from torl.common.config import load_settings

    docs = render(*tls_values(mutual))
    wls = workloads(docs)
    client_cert = {"cert_file": f"{TLS_DIR}/tls.crt", "key_file": f"{TLS_DIR}/tls.key"} if mutual else {}
    expected_client = {"enabled": True, "ca_file": f"{TLS_DIR}/ca.crt", **client_cert}
    server = {"enabled": True, "cert_file": f"{TLS_DIR}/tls.crt", "key_file": f"{TLS_DIR}/tls.key"}
    if mutual:
        server["ca_file"] = f"{TLS_DIR}/ca.crt"
    for comp in SERVICES_WITH_SECRET:
        pod = wls[comp]["spec"]["template"]["spec"]
        (vol,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        assert vol["secret"]["secretName"] == "torl-tls" and vol["secret"]["optional"] is False
        assert {i["key"] for i in vol["secret"]["items"]} == {"tls.crt", "tls.key", "ca.crt"}
        (c,) = pod["containers"]
        assert {"name": "tls", "mountPath": TLS_DIR, "readOnly": True} in c["volumeMounts"], comp

        cfg = config_of(docs, pod)
        assert cfg["grpc"]["tls"] == server, comp
        cls, _prefix = _settings_class(comp)
        settings = load_settings(cls, file_values=cfg)  # the service accepts what the chart writes
        assert settings.grpc.tls.enabled and bool(settings.grpc.tls.ca_file) == mutual
        assert_tls_probes(docs, comp, c, mutual)

    rollout = config_of(docs, wls["rollout"]["spec"]["template"]["spec"])
    assert rollout["deps"]["tls"] == expected_client
    learner = config_of(docs, wls["learner"]["spec"]["template"]["spec"])
    # Replicas are dialled by pod IP: the learner checks their certificate against the rollout Service name.
    assert learner["weight_sync"]["tls"] == {**expected_client, "server_name_override": service_name(docs, "rollout")}

    # Runner pods run untrusted code: without a Secret of their own they mount none, and the
    # gateway -> runner hop stays plaintext (native gRPC probes).
    runner = wls["executor-runner"]["spec"]["template"]["spec"]
    assert all("secret" not in v for v in runner["volumes"])
    assert "tls" not in config_of(docs, runner)["grpc"]
    assert "grpc" in runner["containers"][0]["livenessProbe"]
    assert "runners_tls" not in config_of(docs, wls["executor-gateway"]["spec"]["template"]["spec"])


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_runners_use_only_their_own_secret(mutual: bool) -> None:
    from torl.common.config import load_settings

    docs = render(*tls_values(mutual, runner_secret="torl-runner-tls"))
    wls = workloads(docs)
    runner = wls["executor-runner"]["spec"]["template"]["spec"]
    secrets = [v["secret"]["secretName"] for v in runner["volumes"] if "secret" in v]
    assert secrets == ["torl-runner-tls"]  # never the services' Secret (torl-tls)
    (c,) = runner["containers"]
    assert {"name": "tls", "mountPath": TLS_DIR, "readOnly": True} in c["volumeMounts"]
    cfg = config_of(docs, runner)
    # Server TLS without client certificates, also under mTLS: the runner's certificate is server-auth
    # only, so its own probe could not present one (who calls runners is the NetworkPolicy's job).
    assert cfg["grpc"]["tls"] == {"enabled": True, "cert_file": f"{TLS_DIR}/tls.crt", "key_file": f"{TLS_DIR}/tls.key"}
    load_settings(_settings_class("executor-runner")[0], file_values=cfg)
    assert_tls_probes(docs, "executor-runner", c, mutual=False)
    gateway = config_of(docs, wls["executor-gateway"]["spec"]["template"]["spec"])
    assert gateway["runners_tls"] == {"enabled": True, "ca_file": f"{TLS_DIR}/ca.crt"}


def test_tls_manifests_lint_and_validate(tmp_path: Any) -> None:
    values = tmp_path / "tls.yaml"
    values.write_text(yaml.safe_dump({"tls": {"enabled": True, "secretName": "torl-tls", "mutual": True,
                                              "runnerSecretName": "torl-runner-tls"}}))
    res = run([tool("helm"), "lint", "--strict", str(CHART), "-f", str(CPU), "-f", str(values)])
    assert res.returncode == 0, res.stdout + res.stderr
    for doc in render(*tls_values(True, runner_secret="torl-runner-tls")):
        if doc["kind"] in ("Deployment", "StatefulSet"):
            kubernetes_validate.validate(doc, "1.35.0", strict=True)


def test_tls_without_secret_name_fails_clearly() -> None:
    res = helm_template("-f", str(CPU), "--set", "tls.enabled=true")
    assert res.returncode != 0
    assert "tls.secretName is required when tls.enabled=true" in res.stderr, res.stderr
    assert "kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt" in res.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("tls.mutal=true", "tls: Additional property mutal is not allowed"),
        ("tls.enabled=yes please", "tls.enabled: Invalid type. Expected: boolean, given: string"),
        ("tls.secretName=Not_A_Name", "tls.secretName: Does not match pattern"),
    ],
)
def test_tls_values_schema(setting: str, message: str) -> None:
    res = helm_template("-f", str(CPU), "--set", setting)
    assert res.returncode != 0, f"--set {setting} was accepted"
    assert message in res.stderr, res.stderr


def test_notes_say_how_services_talk(tmp_path: Any) -> None:
    """NOTES.txt (rendered as test_chart.test_notes_render does)."""
    render_notes = notes_renderer(tmp_path)

    def notes(*sets: str) -> str:
        return render_notes("-f", str(CPU), *sets)

    assert "gRPC between services: plaintext inside the namespace" in notes()
    on = notes("--set", "tls.enabled=true", "--set", "tls.secretName=torl-tls", "--set", "tls.mutual=true")
    assert 'gRPC between services: mTLS (Secret "torl-tls"; gateway -> runners: plaintext' in on
