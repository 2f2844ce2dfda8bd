"""Prometheus for a local run (`torl up` / `torl train`): the scrape targets and a ready config.

Every service of a local run exposes /metrics on its own loopback port. The run writes
`<run_dir>/prometheus/targets.json` (Prometheus file-based service discovery: one target group
per service, labelled `job` and `service` like the chart's ServiceMonitors) and
`<run_dir>/prometheus/prometheus.yml`, which scrapes those targets and loads the chart's alerting
rules. With `--prometheus` the run also starts a `prometheus` server on that config, so the
dashboards' queries and the alerts can be tried against a laptop run:

    torl up --prometheus          # prints the Prometheus URL; or, with your own server:
    prometheus --config.file runs/up/prometheus/prometheus.yml
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from torl.common.config import ConfigError
from torl.common.files import write_json_atomic

# The chart's alerting rules, loaded by the local Prometheus (absent in an installed wheel).
RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "torl" / "rules"
TARGETS_FILE = "targets.json"
CONFIG_FILE = "prometheus.yml"


def write_targets(prom_dir: Path, metrics_ports: dict[str, int]) -> Path:
    """Write the file_sd target groups atomically (Prometheus watches the file and re-reads it)."""
    prom_dir.mkdir(parents=True, exist_ok=True)
    groups = [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"job": f"torl-{name}", "service": name}}
        for name, port in sorted(metrics_ports.items())
    ]
    path = prom_dir / TARGETS_FILE
    write_json_atomic(path, groups, indent=1)
    return path


def write_config(prom_dir: Path, scrape_interval_seconds: float = 5.0, rules_dir: Path | None = RULES_DIR) -> Path:
    """A prometheus.yml that scrapes the run's targets.json and loads the alerting rules."""
    prom_dir.mkdir(parents=True, exist_ok=True)
    interval = f"{scrape_interval_seconds:g}s"
    config: dict[str, object] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": "torl-local",
                # The target groups' own `job` label (torl-<service>) replaces this job name.
                "file_sd_configs": [{"files": [str((prom_dir / TARGETS_FILE).resolve())], "refresh_interval": "5s"}],
            }
        ],
    }
    if rules_dir is not None and rules_dir.is_dir():
        config["rule_files"] = [str(p.resolve()) for p in sorted(rules_dir.glob("*.yaml"))]
    path = prom_dir / CONFIG_FILE
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise ConfigError(
            "--prometheus: no `prometheus` binary on PATH (Debian: apt-get install prometheus; "
            "scripts/setup.sh installs it)"
        )
    return found


def prometheus_args(config_path: Path, data_dir: Path, port: int, retention: str = "7d") -> list[str]:
    """Command line of a loopback-only Prometheus server on `config_path`."""
    return [
        prometheus_binary(),
        f"--config.file={config_path.resolve()}",
        f"--storage.tsdb.path={data_dir.resolve()}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
