"""gRPC client helpers: channels with size limits, keepalive, a retry policy for UNAVAILABLE, and TLS.

Retries are done by gRPC itself (service config retryPolicy), so every stub call made on these
channels retries transient UNAVAILABLE with exponential backoff; callers set a deadline per call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal, overload

import grpc

from torl.common.config import TlsClientSettings
from torl.common.tls import channel_credentials

DEFAULT_DEADLINE_SECONDS = 30.0


def _service_config(max_attempts: int) -> str:
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{}],
                    "retryPolicy": {
                        "maxAttempts": max(2, min(max_attempts, 5)),
                        "initialBackoff": "0.1s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def channel_options(max_message_mb: int = 64, max_attempts: int = 5) -> list[tuple[str, Any]]:
    size = max_message_mb * 1024 * 1024
    return [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", _service_config(max_attempts)),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


@overload
def open_channel(
    target: str,
    *,
    aio: Literal[True],
    tls: TlsClientSettings | None = None,
    max_message_mb: int = 64,
    max_attempts: int = 5,
    extra_options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel: ...


@overload
def open_channel(
    target: str,
    *,
    aio: Literal[False],
    tls: TlsClientSettings | None = None,
    max_message_mb: int = 64,
    max_attempts: int = 5,
    extra_options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel: ...


def open_channel(
    target: str,
    *,
    aio: bool,
    tls: TlsClientSettings | None = None,
    max_message_mb: int = 64,
    max_attempts: int = 5,
    extra_options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel | grpc.aio.Channel:
    """The one place torl opens a client channel: asyncio (`aio=True`) or blocking, over TLS when
    `tls.enabled` (CA, optional client certificate for mTLS, optional server name override), plaintext
    otherwise. Raises ConfigError when a TLS file is missing or not PEM. `extra_options` are appended
    to torl's defaults (later entries win)."""
    options = [*channel_options(max_message_mb, max_attempts), *extra_options]
    credentials = channel_credentials(tls) if tls is not None else None
    if credentials is not None and tls is not None and tls.server_name_override:
        options.append(("grpc.ssl_target_name_override", tls.server_name_override))
    if aio:
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, credentials, options=options)
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def aio_channel(
    target: str, max_message_mb: int = 64, max_attempts: int = 5, tls: TlsClientSettings | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to `target` (host:port) with torl's defaults."""
    return open_channel(target, aio=True, tls=tls, max_message_mb=max_message_mb, max_attempts=max_attempts)


def sync_channel(
    target: str, max_message_mb: int = 64, max_attempts: int = 5, tls: TlsClientSettings | None = None
) -> grpc.Channel:
    """A blocking channel to `target` (host:port) with torl's defaults."""
    return open_channel(target, aio=False, tls=tls, max_message_mb=max_message_mb, max_attempts=max_attempts)
