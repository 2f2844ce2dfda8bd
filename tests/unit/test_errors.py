"""Domain errors map to the documented gRPC and HTTP codes; unknown ones leak no detail."""

from __future__ import annotations

import grpc
import pytest

from torl.common import errors


@pytest.mark.parametrize(
    ("exc", "code", "http"),
    [
        (errors.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT, 400),
        (errors.ResourceExhausted("x", retry_after_seconds=1.0), grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE, 503),
        (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION, 409),
        (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED, 401),
    ],
)
def test_domain_errors(exc: errors.TorlError, code: grpc.StatusCode, http: int) -> None:
    assert errors.status_for(exc) == (code, "x")
    assert exc.http_status == http


def test_unexpected_errors_hide_details() -> None:
    code, msg = errors.status_for(KeyError("secret-internal-detail"))
    assert code == grpc.StatusCode.INTERNAL
    assert "secret-internal-detail" not in msg
    assert errors.status_for(TimeoutError())[0] == grpc.StatusCode.DEADLINE_EXCEEDED
