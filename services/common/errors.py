"""Domain errors and their gRPC status codes.

Service code raises these; the one gRPC boundary (torl.common.grpc_server) turns them into
status codes with the message, and the REST adapter into HTTP codes. Anything else that escapes
a handler becomes INTERNAL with a request-scoped message and no traceback for the client.
"""

from __future__ import annotations

import grpc


class TorlError(Exception):
    """Base for errors a client may see. `code` is the gRPC status; `http_status` the REST one."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(TorlError):
    """The request itself is malformed or violates a documented limit."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class NotFound(TorlError):
    code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class FailedPrecondition(TorlError):
    """The request is well-formed but cannot apply to the current state (e.g. a stale weight version)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


class ResourceExhausted(TorlError):
    """Over a rate, concurrency or size limit; the client may retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class DeadlineExceeded(TorlError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class Unavailable(TorlError):
    """A dependency (executor, reward, Redis, the engine) cannot be reached right now."""

    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class Unauthenticated(TorlError):
    code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class PermissionDenied(TorlError):
    code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and client-safe message for an exception."""
    if isinstance(exc, TorlError):
        return exc.code, exc.message
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "operation timed out"
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the service log"
