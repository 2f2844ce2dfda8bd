"""Helpers of the deploy checks: where the chart and the tools are, rendering the chart, and the
metric names the services export (read from their metrics modules or a live /metrics page).

Nothing here needs a cluster: helm renders offline, kubernetes-validate holds the API schemas.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, require

CHART = REPO / "deploy" / "helm" / "torl"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
DOCKER_DIR = REPO / "docker"
RULES_DIR = CHART / "rules"
RULE_TESTS_DIR = REPO / "deploy" / "prometheus" / "tests"
DASHBOARDS_DIR = CHART / "dashboards"
SERVICES = ("executor", "reward", "rollout", "learner")


def tool(name: str) -> str:
    """Path of a CLI tool: the project's .venv first (helm, hadolint, kubernetes-validate), then PATH."""
    local = REPO / ".venv" / "bin" / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    require(found is not None, f"{name} (scripts/install_deploy_tools.sh or scripts/setup.sh installs it)")
    assert found is not None
    return found


def load_script(name: str) -> Any:
    """A module of scripts/ (not a package), imported by path."""
    spec = importlib.util.spec_from_file_location(f"torl_scripts_{name}", REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run(cmd: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)


def helm_template(*args: str, release: str = "t", namespace: str = "torl") -> subprocess.CompletedProcess[str]:
    return run([tool("helm"), "template", release, str(CHART), "--namespace", namespace, *args])


def notes_renderer(tmp: Path) -> Callable[..., str]:
    """NOTES.txt as `helm install` would print it, for `helm template` arguments. Helm shows NOTES only
    on a real install, so a copy of the chart renders it through `tpl` into a ConfigMap."""
    chart = tmp / "torl"
    shutil.copytree(CHART, chart)
    (chart / "notes-src.txt").write_text((CHART / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "notes-check.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
        '    {{- tpl (.Files.Get "notes-src.txt") . | nindent 4 }}\n'
    )

    def notes(*args: str) -> str:
        res = run([tool("helm"), "template", "t", str(chart), *args, "--show-only", "templates/notes-check.yaml"])
        assert res.returncode == 0, res.stderr
        return str(yaml.safe_load(res.stdout)["data"]["notes"])

    return notes


def render(*args: str) -> list[dict[str, Any]]:
    """Rendered manifests (helm template must succeed)."""
    res = helm_template(*args)
    assert res.returncode == 0, f"helm template {' '.join(args)} failed:\n{res.stderr}"
    return [d for d in yaml.safe_load_all(res.stdout) if d]


# --- dashboards and rules ---------------------------------------------------------------------


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every query of every panel."""
    out = []
    for name, dash in dashboards().items():
        for panel in dash["panels"]:
            for target in panel["targets"]:
                out.append((name, panel["title"], target["expr"]))
    return out


def alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in sorted(RULES_DIR.glob("*.yaml")):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            rules.extend(group["rules"])
    return rules


# --- metric names -----------------------------------------------------------------------------

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created", ""),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


def series_names(families: list[Metric]) -> set[str]:
    """Every series name a Prometheus scrape of these families can hold (x_total, x_bucket, ...)."""
    names: set[str] = set()
    for fam in families:
        for suffix in _SUFFIXES.get(fam.type, ("",)):
            names.add(fam.name + suffix)
    return names


def exported_by_modules() -> dict[str, set[str]]:
    """Series names per service, from the prometheus_client objects in torl.<svc>.metrics.

    Each module's collectors are registered into a fresh registry, so names come from what the
    code defines, whatever else the default registry holds.
    """
    out: dict[str, set[str]] = {}
    for svc in SERVICES:
        try:
            module = importlib.import_module(f"torl.{svc}.metrics")
        except ModuleNotFoundError as e:
            if e.name != f"torl.{svc}.metrics":
                raise
            out[svc] = set()
            continue
        registry = CollectorRegistry()
        families: list[Metric] = []
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                registry.register(value)
        for fam in registry.collect():
            families.append(fam)
        out[svc] = series_names(families)
    return out


def exported_by_scrape(text: str) -> set[str]:
    """Series names in a /metrics page (families are listed even before they have samples)."""
    return series_names(list(text_string_to_metric_families(text)))


def referenced_metrics() -> dict[str, set[str]]:
    """metric name -> where it is used (dashboard panel or alert)."""
    used: dict[str, set[str]] = {}
    for name, title, expr in dashboard_queries():
        for metric in metric_names_in(expr):
            used.setdefault(metric, set()).add(f"{name}: {title}")
    for rule in alert_rules():
        for metric in metric_names_in(rule["expr"]):
            used.setdefault(metric, set()).add(f"alert {rule['alert']}")
    return used


def not_served(service: str, metrics_url: str) -> dict[str, list[str]]:
    """Every torl_<service>_* name a dashboard or alert uses that the running service's /metrics
    page does not list: name -> where it is used. Fails if the page is not a /metrics page."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        served = exported_by_scrape(resp.read().decode())
    assert any(name.startswith(("python_", "process_")) for name in served), f"{metrics_url}: not a /metrics page"
    used = {m: w for m, w in referenced_metrics().items() if m.startswith(f"torl_{service}_")}
    return {m: sorted(w) for m, w in used.items() if m not in served}


# --- PromQL -----------------------------------------------------------------------------------

_PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "atan2", "inf", "nan", "start", "end",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_NAME_LABEL = re.compile(r'__name__\s*=\s*"([^"]+)"')
_GRAFANA_VARS = re.compile(r"\$__\w+|\$\{[^}]*\}|\$\w+")


def metric_names_in(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels, strings excluded).

    Grafana variables ($__rate_interval, ${job}) are replaced first; label matchers `{...}` are
    removed except a `__name__="..."` matcher, whose value is a metric name.
    """
    text = _GRAFANA_VARS.sub("5m", expr)
    names = set(_NAME_LABEL.findall(text))
    text = _STRING.sub('""', text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    while _BRACES.search(text):
        text = _BRACES.sub("", text)
    for m in _IDENT.finditer(text):
        ident, call = m.group(1), m.group(2)
        if call or ident.lower() in _PROMQL_KEYWORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", ident) or ident[0].isdigit():
            continue
        names.add(ident)
    return names


def selectors_in(expr: str) -> set[str]:
    """The vector selectors of a PromQL expression, label matchers included (`name{a="b"}` or `name`)."""
    text = _GRAFANA_VARS.sub("5m", expr)
    out: set[str] = set()
    for name in metric_names_in(expr):
        for m in re.finditer(rf"(?<![\w:]){re.escape(name)}(?![\w:])\s*(\{{[^{{}}]*\}})?", text):
            out.add(name + (m.group(1) or ""))
    return out
