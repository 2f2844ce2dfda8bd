"""Run one service process: logging, metrics endpoint, gRPC server, graceful stop on SIGTERM."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from torl.common.config import ServiceSettings
from torl.common.grpc_server import (
    RunningServer,
    ServiceBinding,
    serve_until_signal,
    start_server,
    stop_event_on_signals,
)
from torl.common.logging import configure_logging, get_logger
from torl.common.metrics import start_metrics_server


async def run_grpc_service(
    settings: ServiceSettings,
    bindings: Sequence[ServiceBinding],
    on_started: Callable[[RunningServer], Awaitable[dict[str, Any] | None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve `bindings` until SIGTERM/SIGINT. Logs one `serving` event with the bound ports (and
    whatever fields `on_started` returns); gRPC health says SERVING only once `on_started` is done."""
    configure_logging(settings.log_level, settings.log_json, service=settings.service_name)
    log = get_logger(f"torl.{settings.service_name}")
    stop = stop_event_on_signals()
    metrics_port = start_metrics_server(settings.metrics_port, settings.metrics_host)
    running = await start_server(settings.grpc, bindings, serving=on_started is None)
    extra: dict[str, Any] = {}
    if on_started is not None:
        extra = await on_started(running) or {}
        await running.set_serving(True)
    log.info(
        "serving",
        grpc=f"{settings.grpc.host}:{running.port}",
        grpc_port=running.port,
        metrics_port=metrics_port,
        **extra,
    )
    await serve_until_signal(running, settings.grpc.shutdown_grace_seconds, on_shutdown, stop)
