"""gRPC client helpers: channels with size limits, keepalive and a retry policy for UNAVAILABLE.

Retries are done by gRPC itself (service config retryPolicy), so every stub call made on these
channels retries transient UNAVAILABLE with exponential backoff; callers set a deadline per call.
"""

from __future__ import annotations

import json
from typing import Any

import grpc

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


def aio_channel(target: str, max_message_mb: int = 64, max_attempts: int = 5) -> grpc.aio.Channel:
    """An asyncio channel to `target` (host:port) with torl's defaults."""
    return grpc.aio.insecure_channel(target, options=channel_options(max_message_mb, max_attempts))


def sync_channel(target: str, max_message_mb: int = 64, max_attempts: int = 5) -> grpc.Channel:
    """A blocking channel to `target` (host:port) with torl's defaults."""
    return grpc.insecure_channel(target, options=channel_options(max_message_mb, max_attempts))
