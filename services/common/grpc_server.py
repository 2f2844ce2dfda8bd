"""The one gRPC server bootstrap every service uses.

It registers grpc.health.v1 and reflection, maps exceptions to status codes in one place
(`ErrorMappingInterceptor`), turns undecodable requests into INVALID_ARGUMENT, applies the
message-size limits from config, serves TLS / mTLS when `grpc.tls.enabled` (torl.common.tls; plaintext
otherwise), and shuts down gracefully on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from torl.common.config import GrpcServerSettings
from torl.common.errors import status_for
from torl.common.logging import get_logger
from torl.common.tls import server_credentials

log = get_logger("torl.grpc")


@dataclass
class ServiceBinding:
    """A servicer and how to add it: `add(servicer, server)` is the generated add_*_to_server."""

    name: str  # full service name, e.g. "torl.v1.Executor"
    servicer: Any
    add: Callable[[Any, grpc.aio.Server], None]


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str] = field(default_factory=list)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)


async def _abort_for(exc: BaseException, context: grpc.aio.ServicerContext, method: str) -> None:
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        incident = uuid.uuid4().hex[:12]
        log.error("rpc_failed", method=method, incident=incident, exc_info=exc)
        message = f"{message} [incident {incident}]"
    else:
        log.info("rpc_rejected", method=method, code=code.name, reason=message)
    await context.abort(code, message)


async def _mapped(
    call: Callable[[], Awaitable[Any]], context: grpc.aio.ServicerContext, method: str
) -> Any:
    """Await `call()`; an exception (other than an abort already sent) becomes a status code.
    CancelledError is a BaseException and passes through untouched."""
    try:
        return await call()
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        await _abort_for(exc, context, method)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Decodes requests itself (bad bytes → INVALID_ARGUMENT) and maps exceptions to status codes."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        decode = handler.request_deserializer or (lambda b: b)

        def parse(raw: bytes) -> Any:
            try:
                return decode(raw)
            except (DecodeError, ValueError, TypeError) as e:
                from torl.common.errors import InvalidArgument

                raise InvalidArgument(f"malformed request message for {method}: {e}") from e

        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
                return await _mapped(lambda: inner_uu(parse(raw), context), context, method)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, request_deserializer=None, response_serializer=handler.response_serializer
            )
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(raw_iter: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
                async def parsed() -> AsyncIterator[Any]:
                    async for raw in raw_iter:
                        yield parse(raw)

                return await _mapped(lambda: inner_su(parsed(), context), context, method)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, request_deserializer=None, response_serializer=handler.response_serializer
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for item in inner_us(parse(raw), context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:  # CancelledError is a BaseException: it passes through
                    await _abort_for(exc, context, method)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=None, response_serializer=handler.response_serializer
            )
        return handler


def server_options(settings: GrpcServerSettings) -> list[tuple[str, Any]]:
    size = settings.max_message_mb * 1024 * 1024
    return [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.so_reuseport", 0),
    ]


async def start_server(
    settings: GrpcServerSettings,
    bindings: Sequence[ServiceBinding],
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    serving: bool = True,
) -> RunningServer:
    """Create, bind and start a server with health, reflection and error mapping (TLS per `settings.tls`).

    With `serving=False` health reports NOT_SERVING until the caller's `set_serving(True)`, for
    services that have more to start (a REST server, a pool) after the gRPC port is bound.
    """
    server = grpc.aio.server(
        interceptors=[ErrorMappingInterceptor(), *interceptors],
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    for b in bindings:
        b.add(b.servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [b.name for b in bindings]
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    address = f"{settings.host}:{settings.port}"
    credentials = server_credentials(settings.tls)  # None: TLS off
    port = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {settings.host}:{settings.port}")
    await server.start()
    running = RunningServer(server=server, port=port, health=health_servicer, service_names=names)
    await running.set_serving(serving)
    return running


def stop_event_on_signals() -> asyncio.Event:
    """An event set by SIGTERM/SIGINT. Call it first thing in a service, before slow start-up work,
    so a stop request during start-up is a clean shutdown rather than a kill by the default handler."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve_until_signal(
    running: RunningServer,
    grace_seconds: float,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Block until SIGTERM/SIGINT (or `stop`), then mark NOT_SERVING, drain for `grace_seconds`, stop."""
    if stop is None:
        stop = stop_event_on_signals()
    await stop.wait()
    log.info("shutting_down", grace_seconds=grace_seconds)
    await running.set_serving(False)
    await running.server.stop(grace_seconds)
    if on_shutdown is not None:
        await on_shutdown()
    log.info("stopped")
