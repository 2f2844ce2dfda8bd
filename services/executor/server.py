"""Entry point of `torl executor serve`: gateway and runner roles in one asyncio loop.

- role=all (default): sandbox pool + gRPC (grpc.port) + REST (rest.port) in one process.
- role=runner: sandbox pool + gRPC only (what a gVisor runner pod runs; it serves only calls that
  present the gateway's runner token, and only then trusts the caller they name).
- role=gateway: REST + gRPC with API keys, forwarding runs to `runners`; runs no untrusted code.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from torl.common.grpc_server import RunningServer, ServiceBinding
from torl.common.logging import configure_logging, get_logger
from torl.common.service import run_grpc_service
from torl.executor import metrics
from torl.executor.auth import KeyStore
from torl.executor.config import LOOPBACK_HOSTS, ExecutorSettings
from torl.executor.core import Executor, RunService, make_executor
from torl.executor.grpc_api import ExecutorServicer, RemoteRunners
from torl.executor.sandbox import SandboxError
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


class RestServer:
    """The REST adapter's uvicorn server, started inside this process's loop (this process owns the
    signals: one shutdown for gRPC, REST and the pool)."""

    def __init__(self, settings: ExecutorSettings, app: Any) -> None:
        import uvicorn

        self.settings = settings
        config = uvicorn.Config(
            app, host=settings.rest.host, port=settings.rest.port, log_level="warning", access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Start serving; the bound port."""
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                await self.task
                raise SystemExit(f"REST server could not start on {self.settings.rest.host}:{self.settings.rest.port}")
            await asyncio.sleep(0.02)
        port: int = self.server.servers[0].sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 2.0)
            except TimeoutError:
                log.warning("rest_shutdown_timeout")


Role = tuple[RunService, Executor | None, RemoteRunners | None, dict[str, Any]]


def make_service(settings: ExecutorSettings) -> Role:
    """The RunService of this role (local sandboxes or remote runners) and the backend facts for /healthz."""
    if settings.role == "gateway":
        remote = RemoteRunners(
            settings.runners, read_runner_token(settings), settings.grpc.max_message_mb, settings.runners_tls
        )
        facts = {"backend": "remote", "weak_isolation": False, "unsandboxed": False,
                 "process_limit_enforced": None, "warning": ""}
        return remote, None, remote, facts
    try:
        executor = make_executor(settings)
    except SandboxError as e:
        log.error("no_sandbox_backend", backend=settings.sandbox.backend, error=str(e))
        raise SystemExit(f"executor: sandbox backend {settings.sandbox.backend!r} cannot run here: {e}") from None
    backend = executor.pool.backend
    facts = {
        "backend": backend.name,
        "weak_isolation": backend.weak_isolation,
        "unsandboxed": backend.unsandboxed,
        "process_limit_enforced": backend.process_limit_enforced,
        "warning": "; ".join(backend.health_warnings()),
    }
    return executor, executor, None, facts


async def serve(settings: ExecutorSettings) -> None:
    """Serve this role on the shared service lifecycle (torl.common.service) until SIGTERM/SIGINT."""
    configure_logging(settings.log_level, settings.log_json, service="executor")
    refuse_open_doors(settings)
    keys = KeyStore(settings.rest.api_keys_file) if settings.rest.api_keys_file else None
    if keys is None and settings.rest.enabled and settings.role != "runner":
        if settings.rest.host not in LOOPBACK_HOSTS:  # config validation forbids it; belt and braces
            raise SystemExit("REST without API keys may bind to loopback only")
        log.warning("rest_without_api_keys", host=settings.rest.host, note="anonymous access, loopback only")
    service, executor, remote, health_facts = make_service(settings)

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
    rest: RestServer | None = None
    if settings.rest.enabled and settings.role != "runner":
        from torl.executor.rest_api import create_app

        rest = RestServer(settings, create_app(settings, service, keys, health, ready))

    async def on_started(running: RunningServer) -> dict[str, Any]:
        if executor is not None:
            await executor.pool.start(wait=True)
        anonymous = [] if keys is not None else [("anonymous", "rest")]
        grpc_callers = [] if settings.grpc_api_keys_required else [("grpc", "grpc")]
        metrics.initialize(executor.pool.backend.name if executor is not None else None, anonymous + grpc_callers)
        rest_port = await rest.start() if rest is not None else 0
        return {"role": settings.role, "rest_port": rest_port, **health_facts}

    async def on_shutdown() -> None:
        if rest is not None:
            await rest.stop()
        if executor is not None:
            await executor.pool.close()
        if remote is not None:
            await remote.close()

    await run_grpc_service(settings, [binding], on_started=on_started, on_shutdown=on_shutdown)
