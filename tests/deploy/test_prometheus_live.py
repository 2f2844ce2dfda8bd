"""A real Prometheus scraping a real local run: every dashboard query and every alert's metric
selectors return series.

`torl train --prometheus` starts Redis, executor (gVisor), reward, rollout (vLLM CPU), learner
(DeepSpeed CPU) and a Prometheus server that scrapes them all (file-based discovery from the
run's targets.json) with the chart's alerting rules loaded. While the learner steps, another
team calls the executor's REST API with its key, once more often than its rate limit allows.
Then, against that Prometheus:
- each dashboard panel query (Grafana's $__rate_interval as 30s) returns at least one series over
  the run, and each of its vector selectors matches series;
- the rollout's /metrics page, once it serves, lists every torl_rollout_* name a dashboard or alert
  uses (test_dashboards_and_rules.py scrapes the other services);
- each alert rule's vector selectors (label matchers included) match series, and Prometheus
  loaded every rule group and evaluates the rules without error.
Slow (vLLM start-up): run in CI by `.ci/run`'s slow stage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, require_binary
from tests.deploy.tools import alert_rules, dashboard_queries, not_served, selectors_in
from tests.e2e.helpers import learner_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.gvisor, pytest.mark.timeout(1200)]

RATE_INTERVAL = "30s"
API_KEY = "team-a-secret-token-0123456789"


def write_run_config(tmp: Path) -> Path:
    cfg: dict[str, Any] = yaml.safe_load((REPO / "configs" / "demo-cpu.yaml").read_text(encoding="utf-8"))
    keys = tmp / "api-keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"name": "team-a", "key": API_KEY, "rate_per_second": 0.01,
                                               "burst": 2}]}), encoding="utf-8")
    cfg["train"].update(run_dir=str(tmp / "run"), run_id="promlive", model="tiny", report=False)
    cfg["executor"]["rest"] = {"api_keys_file": str(keys)}
    cfg["learner"]["loop"].update(total_steps=400, eval_every=2)
    cfg["learner"]["checkpoint"] = {"every_steps": 2}
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def http_json(url: str, data: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
              timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def prom_query_range(prom: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    qs = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "5s"})
    status, body = http_json(f"{prom}/api/v1/query_range?{qs}")
    assert status == 200 and body["status"] == "success", f"{expr}: {body}"
    return list(body["data"]["result"])


def prom_series(prom: str, selector: str, start: float, end: float) -> list[dict[str, str]]:
    qs = urllib.parse.urlencode({"match[]": selector, "start": f"{start:.3f}", "end": f"{end:.3f}"})
    status, body = http_json(f"{prom}/api/v1/series?{qs}")
    assert status == 200 and body["status"] == "success", f"{selector}: {body}"
    return list(body["data"])


def running(proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    """Fail with the run's log when `torl train` exited while we waited for `what`."""
    if proc.poll() is not None:
        raise AssertionError(f"torl train exited ({proc.returncode}) waiting for {what}:\n{log.read_text()[-4000:]}")


def learner_steps(run_dir: Path) -> int:
    path = run_dir / "learner" / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"reward_mean"' in line)


def test_dashboards_and_alerts_return_series_from_a_live_run(tmp_path: Path) -> None:
    for binary in ("prometheus", "redis-server", "runsc"):
        require_binary(binary)
    config = write_run_config(tmp_path)
    run_dir = tmp_path / "run"
    log = tmp_path / "train.log"
    env = {**os.environ, **learner_env()}  # the learner `torl train` starts gets these
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "torl.cli.main", "train", "--config", str(config), "--prometheus"],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True,
        )
    try:
        t0 = time.time()
        endpoints_file = run_dir / "endpoints.json"  # written atomically once every service serves
        wait_for(lambda: endpoints_file.is_file() or proc.poll() is not None, 900, "endpoints.json", interval=1.0)
        running(proc, log, "endpoints.json")
        endpoints = json.loads(endpoints_file.read_text())
        prom = endpoints["prometheus"]
        assert prom.startswith("http://127.0.0.1:")
        assert set(endpoints["services"]) == {"executor", "reward", "rollout", "learner"}
        # The rollout's own /metrics lists every torl_rollout_* name a dashboard or alert uses, as soon
        # as it serves (the other services' scrapes are in test_dashboards_and_rules.py; the rollout's
        # is here, where a vLLM engine is running anyway).
        missing = not_served("rollout", f"http://{endpoints['services']['rollout']['metrics']}/metrics")
        assert not missing, f"rollout does not serve: {json.dumps(missing, indent=1)}"

        # Another team's calls: two within the burst, then refused (rate 0.01/s, burst 2).
        rest = endpoints["executor_rest"]
        auth = {"Authorization": f"Bearer {API_KEY}"}
        codes = [http_json(f"{rest}/v1/runs", {"code": "print(6*7)"}, auth)[0] for _ in range(4)]
        assert codes[:2] == [200, 200] and 429 in codes[2:], codes
        assert http_json(f"{rest}/v1/runs", {"code": "print(1)"}, {"Authorization": "Bearer wrong-key-0123456789"})[0] \
            == 401

        wait_for(lambda: learner_steps(run_dir) >= 4 or proc.poll() is not None, 600, "4 learner steps", interval=1.0)
        running(proc, log, "4 learner steps")
        # Enough scrapes after the last event for every rate() window to hold two samples.
        time.sleep(15)

        targets = http_json(f"{prom}/api/v1/targets")[1]["data"]["activeTargets"]
        health = {t["labels"]["service"]: t["health"] for t in targets}
        assert health == dict.fromkeys(("executor", "reward", "rollout", "learner"), "up"), targets

        end = time.time()
        empty_queries: list[str] = []
        empty_selectors: dict[str, set[str]] = {}
        for name, title, expr in dashboard_queries():
            where = f"{name}: {title}"
            query = expr.replace("$__rate_interval", RATE_INTERVAL)
            if not prom_query_range(prom, query, t0, end):
                empty_queries.append(f"{where}: {expr}")
            for sel in selectors_in(expr):
                if not prom_series(prom, sel, t0, end):
                    empty_selectors.setdefault(sel, set()).add(where)
        for rule in alert_rules():
            for sel in selectors_in(rule["expr"]):
                if not prom_series(prom, sel, t0, end):
                    empty_selectors.setdefault(sel, set()).add(f"alert {rule['alert']}")
        assert not empty_selectors, "selectors with no series:\n" + "\n".join(
            f"  {s}  ({', '.join(sorted(w))})" for s, w in sorted(empty_selectors.items()))
        assert not empty_queries, "dashboard queries with no series:\n  " + "\n  ".join(empty_queries)

        # The rules are loaded and evaluate cleanly (a broken rule shows health "err").
        groups = http_json(f"{prom}/api/v1/rules")[1]["data"]["groups"]
        loaded = {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}
        assert set(loaded) == {r["alert"] for r in alert_rules()}
        assert all(r["health"] == "ok" for r in loaded.values()), {n: r.get("lastError") for n, r in loaded.items()}
        # The other team's refused calls are visible per caller.
        limited = prom_query_range(prom, 'sum(torl_executor_rate_limited_total{caller="team-a",limit="rate"})', t0, end)
        assert limited and float(limited[0]["values"][-1][1]) >= 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # torl train stops every child, Prometheus included
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
