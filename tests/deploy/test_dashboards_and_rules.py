"""Dashboards and alerting rules: well-formed, parseable by Prometheus, unit-tested (promtool), and
naming only metrics the services really export (from their metrics modules and from a live
/metrics scrape of each running service)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, ServiceProcess, free_port
from tests.deploy.tools import (
    DASHBOARDS_DIR,
    RULE_TESTS_DIR,
    RULES_DIR,
    SERVICES,
    alert_rules,
    dashboard_queries,
    dashboards,
    exported_by_modules,
    metric_names_in,
    not_served,
    referenced_metrics,
    run,
    tool,
)

pytestmark = pytest.mark.timeout(300)

BUILD_SCRIPT = REPO / "deploy" / "grafana" / "build_dashboards.py"
RUNBOOKS = REPO / "docs" / "runbooks.md"


# --- dashboards -------------------------------------------------------------------------------


def test_dashboards_are_generated_from_code() -> None:
    """The committed JSON is exactly what deploy/grafana/build_dashboards.py produces."""
    res = subprocess.run(
        [sys.executable, "-c", "import json, runpy, sys; m = runpy.run_path(sys.argv[1]); "
         "print(json.dumps(m['render_all']()))", str(BUILD_SCRIPT)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    expected: dict[str, str] = json.loads(res.stdout)
    committed = {p.name: p.read_text(encoding="utf-8") for p in DASHBOARDS_DIR.glob("*.json")}
    assert committed == expected, f"dashboards are stale: run .venv/bin/python {BUILD_SCRIPT.relative_to(REPO)}"


def test_dashboard_structure() -> None:
    dashes = dashboards()
    assert set(dashes) == {"training.json", "rollout.json", "executor.json", "reward.json"}
    uids = set()
    for name, dash in dashes.items():
        for key in ("uid", "title", "panels", "schemaVersion", "templating", "time"):
            assert key in dash, f"{name}: no {key}"
        assert dash["uid"] not in uids
        uids.add(dash["uid"])
        assert [v["name"] for v in dash["templating"]["list"]] == ["datasource"]
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        occupied: set[tuple[int, int]] = set()
        for panel in dash["panels"]:
            where = f"{name}/{panel['title']}"
            assert panel["type"] in {"timeseries", "stat", "gauge", "bargauge", "table"}, where
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            gp = panel["gridPos"]
            assert gp["x"] >= 0 and gp["x"] + gp["w"] <= 24 and gp["h"] > 0, where
            cells = {(gp["x"] + dx, gp["y"] + dy) for dx in range(gp["w"]) for dy in range(gp["h"])}
            assert not cells & occupied, f"{where}: overlaps another panel"
            occupied |= cells
            assert panel["targets"], where
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), where
            for t in panel["targets"]:
                assert t["expr"].strip(), where


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses every query (Grafana's $__rate_interval stands in as 5m)."""
    rules = [
        {"record": f"torl:dashboard_check:{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, (_, _, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    res = run([tool("promtool"), "check", "rules", str(path)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_training_dashboard_covers_the_issue_panels() -> None:
    titles = " | ".join(p["title"].lower() for p in dashboards()["training.json"]["panels"])
    for word in ("reward", "accuracy", "tool-use", "response length", "staleness", "weight version", "step time"):
        assert word in titles, f"training dashboard has no {word!r} panel"


# --- rules ------------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    files = sorted(RULES_DIR.glob("*.yaml"))
    assert files
    res = run([tool("promtool"), "check", "rules", *map(str, files)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_promtool_rule_unit_tests() -> None:
    files = sorted(RULE_TESTS_DIR.glob("*.yaml"))
    assert files
    res = run([tool("promtool"), "test", "rules", *map(str, files)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "FAILED" not in res.stdout + res.stderr


def test_every_alert_is_unit_tested_and_has_a_runbook() -> None:
    tested = set()
    for path in RULE_TESTS_DIR.glob("*.yaml"):
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for a in case.get("alert_rule_test", []):
                if a.get("exp_alerts"):
                    tested.add(a["alertname"])
    runbook = RUNBOOKS.read_text(encoding="utf-8")
    headings = {m.lower() for m in re.findall(r"^## (\w+)", runbook, flags=re.M)}
    for rule in alert_rules():
        name = rule["alert"]
        assert name in tested, f"{name}: no promtool test that expects it to fire"
        assert rule["annotations"]["runbook_url"] == f"docs/runbooks.md#{name.lower()}"
        assert name.lower() in headings, f"{name}: no '## {name}' entry in docs/runbooks.md"
        assert rule["labels"]["severity"] in {"warning", "critical"}


def test_issue_alerts_exist() -> None:
    names = {r["alert"] for r in alert_rules()}
    for required in ("TorlExecutorSandboxErrors", "TorlRolloutStalled", "TorlWeightSyncFailing",
                     "TorlLearnerNotStepping"):
        assert required in names


# --- metric names -----------------------------------------------------------------------------


def test_metric_name_extraction() -> None:
    expr = ('sum by (reason) (rate(torl_a_total{mode="x"}[$__rate_interval])) / ignoring(reason) group_left '
            'histogram_quantile(0.9, sum by (le) (rate(torl_b_seconds_bucket[5m]))) and on() vector(1)')
    assert metric_names_in(expr) == {"torl_a_total", "torl_b_seconds_bucket"}
    assert metric_names_in('{__name__="torl_c", job="x"}') == {"torl_c"}


def test_dashboards_and_alerts_name_only_exported_metrics() -> None:
    exported = set().union(*exported_by_modules().values())
    used = referenced_metrics()
    assert used, "no metric names found in dashboards and rules"
    missing = {m: sorted(w) for m, w in used.items() if m not in exported}
    assert not missing, f"metrics no service exports: {json.dumps(missing, indent=1)}"


# The learner is started idle (train=false): its server registers every learner metric at start.
# The rollout's own scrape is checked in test_prometheus_live.py (slow), on the rollout of its live
# run: starting a vLLM engine only for this scrape cost a minute or more of CI.
LIVE_SERVICES = ["executor", "reward", "learner"]
assert sorted([*LIVE_SERVICES, "rollout"]) == sorted(SERVICES)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("service", LIVE_SERVICES)
def test_running_service_exports_its_metrics(service: str, start_service: Callable[..., ServiceProcess]) -> None:
    """Start the service with a metrics port, scrape /metrics, and find every torl_<service>_* name
    that a dashboard or alert uses among the families the process really serves."""
    port = free_port()
    # A later --metrics-port wins over the fixture's --metrics-port 0.
    start_service(service, "--metrics-port", str(port), "--set", "metrics_host=127.0.0.1", timeout=180)
    missing = not_served(service, f"http://127.0.0.1:{port}/metrics")
    assert not missing, f"{service} does not serve: {json.dumps(missing, indent=1)}"
