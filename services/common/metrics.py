"""Prometheus helpers. Metric names follow `torl_<service>_<what>_<unit>`.

Services create their metrics with prometheus_client directly at module level of their
metrics module; this file holds the shared bits: the exporter, common bucket layouts and
`zero_series` (labelled series created at 0 before their first event).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.metrics import MetricWrapperBase

# Latency buckets from 1 ms to 5 min; fits tool calls, scoring and training steps alike.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)


def start_metrics_server(port: int, host: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> int:
    """Serve /metrics on host:port in a daemon thread. Port 0 disables it and returns 0."""
    if port == 0:
        return 0
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


def zero_series(metric: MetricWrapperBase, **label_values: Iterable[str]) -> None:
    """Create `metric`'s series for every combination of the given label values, at 0, so a
    dashboard or alert sees a series (not "no data") before the first event of each kind."""
    names = list(label_values)
    for combo in itertools.product(*(tuple(v) for v in label_values.values())):
        metric.labels(**dict(zip(names, combo, strict=True)))
