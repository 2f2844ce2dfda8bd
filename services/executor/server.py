"""Entry point of `torl executor serve`: gateway and runner roles in one asyncio loop.

- role=all (default): sandbox pool + gRPC (grpc.port) + REST (rest.port) in one process.
- role=runner: sandbox pool + gRPC only (what a gVisor runner pod runs; it trusts the gateway's
  caller metadata, so it must be reachable only from the gateway).
- role=gateway: REST + gRPC with API keys, forwarding runs to `runners`; runs no untrusted code.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from torl.common.grpc_server import ServiceBinding, start_server, stop_event_on_signals
from torl.common.logging import configure_logging, get_logger
from torl.common.metrics import start_metrics_server
from torl.executor import metrics
from torl.executor.auth import KeyStore
from torl.executor.config import LOOPBACK_HOSTS, ExecutorSettings
from torl.executor.core import RunService
from torl.executor.grpc_api import ExecutorServicer, RemoteRunners
from torl.v1 import executor_pb2_grpc

log = get_logger("torl.executor")


def refuse_open_doors(settings: ExecutorSettings) -> None:
    """Fail closed at start: a runner without the gateway's token digest, a gateway without the token,
    anonymous gRPC on a non-loopback address unless explicitly allowed (checked here, not in the
    config model, because the chart passes the token settings as environment of the pod)."""
    if settings.role == "runner" and settings.runner_token_sha256 is None:
        raise SystemExit(
            "executor: role=runner needs runner_token_sha256 (the SHA-256 of the gateway's runner token): a "
            "runner serves only calls that prove they come from its gateway"
        )
    if settings.role == "gateway" and settings.runner_token_file is None:
        raise SystemExit("executor: role=gateway needs runner_token_file: runners accept only calls presenting it")
    anonymous = not settings.grpc_api_keys_required and settings.role != "runner"
    if anonymous and settings.grpc.host not in LOOPBACK_HOSTS and not settings.grpc_allow_anonymous:
        raise SystemExit(
            f"executor: grpc.host={settings.grpc.host!r} would serve anonymous callers: set "
            "grpc_api_keys_required=true (with rest.api_keys_file), or grpc_allow_anonymous=true where a "
            "NetworkPolicy fences the port"
        )


def read_runner_token(settings: ExecutorSettings) -> str:
    """The token a gateway presents to its runners (its file must hold one of at least 32 characters)."""
    if settings.runner_token_file is None:
        raise SystemExit("executor: role=gateway needs runner_token_file")
    try:
        token = Path(settings.runner_token_file).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise SystemExit(f"executor: runner_token_file {settings.runner_token_file}: {e.strerror}") from None
    if len(token) < 32:
        raise SystemExit(f"executor: runner_token_file {settings.runner_token_file} must hold at least 32 characters")
    return token


async def serve(settings: ExecutorSettings) -> None:
    configure_logging(settings.log_level, settings.log_json, service="executor")
    refuse_open_doors(settings)
    stop = stop_event_on_signals()  # before the slow start-up: a SIGTERM then still shuts down cleanly
    keys = KeyStore(settings.rest.api_keys_file) if settings.rest.api_keys_file else None
    if keys is None and settings.rest.enabled and settings.role != "runner":
        if settings.rest.host not in LOOPBACK_HOSTS:  # config validation forbids it; belt and braces
            raise SystemExit("REST without API keys may bind to loopback only")
        log.warning("rest_without_api_keys", host=settings.rest.host, note="anonymous access, loopback only")

    from torl.executor.core import Executor, make_executor

    executor: Executor | None = None
    remote: RemoteRunners | None = None
    service: RunService
    health_facts: dict[str, Any]
    if settings.role == "gateway":
        remote = RemoteRunners(
            settings.runners, read_runner_token(settings), settings.grpc.max_message_mb, settings.runners_tls
        )
        service = remote
        health_facts = {
            "backend": "remote",
            "weak_isolation": False,
            "unsandboxed": False,
            "process_limit_enforced": None,
            "warning": "",
        }
    else:
        from torl.executor.sandbox import SandboxError

        try:
            executor = make_executor(settings)
        except SandboxError as e:
            log.error("no_sandbox_backend", backend=settings.sandbox.backend, error=str(e))
            raise SystemExit(f"executor: sandbox backend {settings.sandbox.backend!r} cannot run here: {e}") from None
        service = executor
        backend = executor.pool.backend
        health_facts = {
            "backend": backend.name,
            "weak_isolation": backend.weak_isolation,
            "unsandboxed": backend.unsandboxed,
            "process_limit_enforced": backend.process_limit_enforced,
            "warning": "; ".join(backend.health_warnings()),
        }
        await executor.pool.start(wait=True)
    anonymous = [] if keys is not None else [("anonymous", "rest")]
    grpc_callers = [] if settings.grpc_api_keys_required else [("grpc", "grpc")]
    metrics.initialize(executor.pool.backend.name if executor is not None else None, anonymous + grpc_callers)

    def health() -> dict[str, Any]:
        pool = executor.pool.stats() if executor is not None else {}
        return {"status": "ok", **health_facts, "pool": pool}

    def ready() -> bool:
        return executor.pool.ready if executor is not None else True

    servicer = ExecutorServicer(
        service,
        keys,
        settings.grpc_api_keys_required,
        settings.grpc_default_isolation,
        settings.limits.max_batch,
        gateway_token_sha256=settings.runner_token_sha256 if settings.role == "runner" else None,
    )
    binding = ServiceBinding(
        name="torl.v1.Executor", servicer=servicer, add=executor_pb2_grpc.add_ExecutorServicer_to_server
    )
    metrics_port = start_metrics_server(settings.metrics_port, settings.metrics_host)
    running = await start_server(settings.grpc, [binding], serving=False)

    rest_server = None
    rest_task: asyncio.Task[None] | None = None
    rest_port = 0
    if settings.rest.enabled and settings.role != "runner":
        import uvicorn

        from torl.executor.rest_api import create_app

        app = create_app(settings, service, keys, health, ready)
        config = uvicorn.Config(
            app, host=settings.rest.host, port=settings.rest.port, log_level="warning", access_log=False, lifespan="off"
        )
        rest_server = uvicorn.Server(config)
        # This process owns SIGTERM/SIGINT (one shutdown for gRPC, REST and the pool).
        rest_server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        rest_task = asyncio.create_task(rest_server.serve())
        while not rest_server.started:
            if rest_task.done():
                await rest_task
                raise SystemExit(f"REST server could not start on {settings.rest.host}:{settings.rest.port}")
            await asyncio.sleep(0.02)
        rest_port = rest_server.servers[0].sockets[0].getsockname()[1]

    log.info(
        "serving",
        role=settings.role,
        grpc=f"{settings.grpc.host}:{running.port}",
        grpc_port=running.port,
        rest_port=rest_port,
        metrics_port=metrics_port,
        **health_facts,
    )

    await running.set_serving(True)  # gRPC, REST and the pool are all up
    await stop.wait()
    log.info("shutting_down", grace_seconds=settings.grpc.shutdown_grace_seconds)
    await running.set_serving(False)
    if rest_server is not None and rest_task is not None:
        rest_server.should_exit = True
    await running.server.stop(settings.grpc.shutdown_grace_seconds)
    if rest_task is not None:
        try:
            await asyncio.wait_for(rest_task, 2.0)
        except TimeoutError:
            log.warning("rest_shutdown_timeout")
    if executor is not None:
        await executor.pool.close()
    if remote is not None:
        await remote.close()
    log.info("stopped")
