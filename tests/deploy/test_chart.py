"""The Helm chart, checked offline: lint, render every CI profile, validate the manifests against
the Kubernetes API schemas, and hold the chart to its security and wiring promises (runners
isolated, API keys required, probes and resources everywhere, service configs the services accept).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.tools import CHART, CI_VALUES, helm_template, notes_renderer, render, run, tool

pytestmark = pytest.mark.timeout(300)

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion is >=1.27; schemas start at
# 1.30 in kubernetes-validate's set we check) and a current one.
K8S_VERSIONS = ("1.30.0", "1.35.0")
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
TORL_COMPONENTS = ("executor-gateway", "executor-runner", "reward", "rollout", "learner")
SETTINGS = {
    "executor-gateway": ("torl.executor.config", "ExecutorSettings", "TORL_EXECUTOR_"),
    "executor-runner": ("torl.executor.config", "ExecutorSettings", "TORL_EXECUTOR_"),
    "reward": ("torl.reward.config", "RewardSettings", "TORL_REWARD_"),
    "rollout": ("torl.rollout.config", "RolloutSettings", "TORL_ROLLOUT_"),
    "learner": ("torl.learner.config", "LearnerSettings", "TORL_LEARNER_"),
}


def ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    assert CI_VALUES, "no ci/*-values.yaml in the chart"
    return {p.stem: render("-f", str(p)) for p in CI_VALUES}


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def component(doc: dict[str, Any]) -> str:
    return str(doc["metadata"]["labels"]["app.kubernetes.io/component"])


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {component(d): d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}


def test_ci_profiles_exist() -> None:
    assert {p.stem for p in CI_VALUES} >= {"cpu-values", "gpu-values"}


@pytest.mark.parametrize("values", CI_VALUES, ids=ids(CI_VALUES))
def test_helm_lint_strict(values: Path) -> None:
    res = run([tool("helm"), "lint", "--strict", str(CHART), "-f", str(values)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 chart(s) failed" in res.stdout


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_strict(rendered: dict[str, list[dict[str, Any]]], version: str) -> None:
    for profile, docs in rendered.items():
        kinds = {(d["apiVersion"], d["kind"]) for d in docs}
        assert {"Deployment", "StatefulSet", "NetworkPolicy", "ServiceMonitor"} <= {k for _, k in kinds}, profile
        for doc in docs:
            if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
                continue  # checked against the CRD's shape in test_monitoring_resources_structure
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{profile}: {doc['kind']}/{doc['metadata']['name']} invalid for {version}: {e.message}")


def test_monitoring_resources_structure(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """ServiceMonitor/PrometheusRule have no schema in kubernetes-validate: check the fields the
    prometheus-operator CRDs (monitoring.coreos.com/v1) require, and that the ports exist."""
    for profile, docs in rendered.items():
        services = {d["metadata"]["name"]: d for d in by_kind(docs, "Service")}
        monitors = by_kind(docs, "ServiceMonitor")
        assert {component(m) for m in monitors} == {
            "executor-gateway", "executor-runner", "reward", "rollout", "learner"
        }, profile
        for sm in monitors:
            assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
            spec = sm["spec"]
            assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
            svc = services[sm["metadata"]["name"]]
            assert spec["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
            port_names = {p["name"] for p in svc["spec"]["ports"]}
            for ep in spec["endpoints"]:
                assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
                assert ep["port"] in port_names, f"{sm['metadata']['name']}: no Service port {ep['port']}"
                assert ep["path"] == "/metrics"
        (rule,) = by_kind(docs, "PrometheusRule")
        groups = rule["spec"]["groups"]
        assert groups, f"{profile}: PrometheusRule has no groups"
        for group in groups:
            assert set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"]
            for r in group["rules"]:
                assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations"}
                assert isinstance(r["expr"], str) and r["expr"].strip()
                assert ("alert" in r) != ("record" in r)


def test_every_container_has_resources_security_and_pinned_image(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for profile, docs in rendered.items():
        for name, wl in workloads(docs).items():
            pod = wl["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, (profile, name)
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
            for c in pod.get("initContainers", []) + pod["containers"]:
                where = f"{profile}/{name}/{c['name']}"
                assert c["resources"]["requests"] and c["resources"]["limits"], where
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert sc["capabilities"]["drop"] == ["ALL"], where
                image = c["image"]
                assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), where


def test_torl_containers_have_grpc_probes_and_config(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for profile, docs in rendered.items():
        wls = workloads(docs)
        for comp in TORL_COMPONENTS:
            pod = wls[comp]["spec"]["template"]["spec"]
            (c,) = pod["containers"]
            grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if comp == "executor-gateway" and probe == "readinessProbe":
                    assert c[probe]["httpGet"] == {"path": "/readyz", "port": "http"}
                    continue
                if "exec" in c[probe]:  # learner pods of which only ordinal 0 serves (test_chart_learner.py)
                    assert comp == "learner" and f"127.0.0.1:{grpc_port}" in c[probe]["exec"]["command"]
                    continue
                assert c[probe]["grpc"]["port"] == grpc_port, (profile, comp, probe)
            # `torl <svc> serve --config ...`, or torchrun's `-m torl.cli.main learner serve --config ...`
            assert c["args"][-4:] == [comp.split("-")[0], "serve", "--config", "/etc/torl/config.yaml"]
            assert "checksum/config" in wls[comp]["spec"]["template"]["metadata"]["annotations"]


def test_runner_pods_are_isolated(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for profile, docs in rendered.items():
        runner = workloads(docs)["executor-runner"]["spec"]["template"]["spec"]
        assert runner["runtimeClassName"] == "gvisor", profile
        assert runner["automountServiceAccountToken"] is False
        assert runner["enableServiceLinks"] is False
        assert not any("secret" in v for v in runner["volumes"]), "runner pods must hold no secrets"
        for c in runner["containers"]:
            for env in c.get("env", []):
                assert "secretKeyRef" not in env.get("valueFrom", {}), env
            assert not c.get("envFrom")
        policies = {d["metadata"]["name"]: d for d in by_kind(docs, "NetworkPolicy")}
        np = next(p for p in policies.values() if component(p) == "executor-runner")
        assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert np["spec"]["egress"] == [], "runner pods must have no egress"
        grpc_rule, metrics_rule = np["spec"]["ingress"]
        (peer,) = grpc_rule["from"]
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "executor-gateway"
        assert grpc_rule["ports"] == [{"protocol": "TCP", "port": 50061}]
        (scraper,) = metrics_rule["from"]
        assert set(scraper) == {"namespaceSelector"}, "only Prometheus may reach the runners' metrics port"
        assert metrics_rule["ports"] == [{"protocol": "TCP", "port": 9105}]


def test_every_torl_pod_is_covered_by_a_network_policy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for profile, docs in rendered.items():
        covered = {component(p) for p in by_kind(docs, "NetworkPolicy")}
        assert set(workloads(docs)) <= covered, (profile, set(workloads(docs)) - covered)


def test_gateway_requires_its_api_key_secret(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for profile, docs in rendered.items():
        gw = workloads(docs)["executor-gateway"]["spec"]["template"]["spec"]
        (vol,) = [v for v in gw["volumes"] if v["name"] == "api-keys"]
        assert vol["secret"]["optional"] is False, profile
        assert vol["secret"]["secretName"] == "torl-executor-api-keys"


def test_missing_api_key_secret_fails_the_install_clearly() -> None:
    cpu = CI_VALUES[0]
    res = helm_template("-f", str(cpu), "--set", "executor.apiKeys.existingSecret=")
    assert res.returncode != 0
    assert "executor.apiKeys.existingSecret is required" in res.stderr
    assert "never runs without keys" in res.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("rollout.gpus=two", "rollout.gpus: Invalid type. Expected: integer, given: string"),
        ("reward.replicaz=3", "reward: Additional property replicaz is not allowed"),
        ("image.tag=latest", "image.tag: Must not validate the schema"),
        ("model.source=s3", "model.source: model.source must be one of the following"),
    ],
)
def test_values_schema_rejects_bad_values(setting: str, message: str) -> None:
    res = helm_template("-f", str(CI_VALUES[0]), "--set", setting)
    assert res.returncode != 0, f"--set {setting} was accepted"
    assert message in res.stderr, res.stderr


def test_wrong_type_in_a_values_file_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"executor": {"gateway": {"httpPort": "eighty"}}}))
    res = helm_template("-f", str(CI_VALUES[0]), "-f", str(bad))
    assert res.returncode != 0
    assert "executor.gateway.httpPort: Invalid type. Expected: integer, given: string" in res.stderr


def _settings_class(comp: str) -> tuple[type[Any], str]:
    module, cls, prefix = SETTINGS[comp]
    return getattr(importlib.import_module(module), cls), prefix


def _check_env_var(cls: type[Any], prefix: str, name: str) -> None:
    """TORL_<SVC>_A__B must name a field a (and b inside it): the services reject unknown ones."""
    path = name[len(prefix):].lower().split("__")
    model: Any = cls
    for part in path:
        fields = getattr(model, "model_fields", None)
        assert fields is not None and part in fields, f"{name}: {model.__name__} has no field {part!r}"
        model = fields[part].annotation


def test_service_configs_are_accepted_by_the_services(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The config file and TORL_* env the chart gives each pod validate against the service's
    own settings class, so a pod never crash-loops on a key the service does not know."""
    from torl.common.config import load_settings

    for profile, docs in rendered.items():
        configmaps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
        for comp, wl in workloads(docs).items():
            if comp not in SETTINGS:
                continue
            cls, prefix = _settings_class(comp)
            pod = wl["spec"]["template"]["spec"]
            (cfg_volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
            content = yaml.safe_load(configmaps[cfg_volume["configMap"]["name"]]["data"]["config.yaml"])
            settings = load_settings(cls, file_values=content)
            assert settings.grpc.host == "0.0.0.0"
            (c,) = pod["containers"]
            assert settings.grpc.port == next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
            metrics = [p["containerPort"] for p in c["ports"] if p["name"] == "metrics"]
            if metrics:
                assert settings.metrics_port == metrics[0], (profile, comp)
            for env in c.get("env", []):
                if env["name"].startswith("TORL_"):
                    assert env["name"].startswith(prefix), env["name"]
                    _check_env_var(cls, prefix, env["name"])


def test_learner_can_read_rollout_endpointslices_only(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for _profile, docs in rendered.items():
        (role,) = by_kind(docs, "Role")
        assert role["rules"] == [
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}
        ]
        rollout_svc = next(d for d in by_kind(docs, "Service") if component(d) == "rollout")
        assert rollout_svc["spec"]["clusterIP"] == "None"
        learner_cfg = next(
            d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("learner-config")
        )
        cfg = yaml.safe_load(learner_cfg["data"]["config.yaml"])
        assert cfg["weight_sync"]["kubernetes_service"] == rollout_svc["metadata"]["name"]


def test_gpu_profile_requests_gpus_and_cpu_profile_none(rendered: dict[str, list[dict[str, Any]]]) -> None:
    def gpus(doc: dict[str, Any]) -> int:
        (c,) = doc["spec"]["template"]["spec"]["containers"]
        return int(c["resources"]["limits"].get("nvidia.com/gpu", 0))

    gpu, cpu = workloads(rendered["gpu-values"]), workloads(rendered["cpu-values"])
    assert gpus(gpu["rollout"]) == 2 and gpus(gpu["learner"]) == 8
    assert gpus(cpu["rollout"]) == 0 and gpus(cpu["learner"]) == 0


def test_redis_has_aof_noeviction_and_auth(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for profile, docs in rendered.items():
        redis = workloads(docs)["redis"]
        (c,) = redis["spec"]["template"]["spec"]["containers"]
        args = c["args"]
        pairs = dict(zip(args[::2], args[1::2], strict=True))
        assert pairs["--appendonly"] == "yes" and pairs["--appendfsync"] == "everysec", profile
        assert pairs["--maxmemory-policy"] == "noeviction"
        assert pairs["--requirepass"] == "$(REDIS_PASSWORD)"
        assert redis["spec"]["volumeClaimTemplates"], "Redis needs persistence"


def test_dashboards_are_shipped_as_sidecar_configmaps(rendered: dict[str, list[dict[str, Any]]]) -> None:
    files = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    assert files
    for profile, docs in rendered.items():
        shipped = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
        assert sorted(k for d in shipped for k in d["data"]) == files, profile


def test_notes_render(tmp_path: Path) -> None:
    """NOTES.txt renders for each profile."""
    render_notes = notes_renderer(tmp_path)
    for values in CI_VALUES:
        notes = render_notes("-f", str(values))
        assert "kubectl -n default get pods -l app.kubernetes.io/instance=t" in notes
        assert "Secret \"torl-executor-api-keys\"" in notes
        if values.stem == "gpu-values":
            assert "https://executor.ml.example.com/v1/" in notes and "Qwen/Qwen2.5-Math-7B" in notes
        else:
            assert "port-forward svc/t-torl-executor-gateway 8080:http" in notes
