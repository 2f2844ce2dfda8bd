"""The one reading of a tool status: code error rate, infrastructure failures, names."""

from __future__ import annotations

from torl.common.tool_status import INFRASTRUCTURE, MODEL_FAILED, code_error_rate, status_name
from torl.v1 import common_pb2


def test_code_error_rate_counts_only_the_models_failures() -> None:
    ok, err, tmo = common_pb2.TOOL_STATUS_OK, common_pb2.TOOL_STATUS_ERROR, common_pb2.TOOL_STATUS_TIMEOUT
    sandbox, rejected = common_pb2.TOOL_STATUS_SANDBOX_ERROR, common_pb2.TOOL_STATUS_REJECTED
    assert code_error_rate([]) == 0.0
    assert code_error_rate([ok, err, tmo, ok]) == 0.5
    # an infrastructure failure is a call, not a code error (training and eval agree on this)
    assert code_error_rate([ok, sandbox, rejected, err]) == 0.25
    assert code_error_rate(iter([err])) == 1.0
    assert MODEL_FAILED.isdisjoint(INFRASTRUCTURE) and ok not in MODEL_FAILED | INFRASTRUCTURE


def test_status_names() -> None:
    assert status_name(common_pb2.TOOL_STATUS_SANDBOX_ERROR) == "sandbox_error"
    assert status_name(common_pb2.TOOL_STATUS_UNSPECIFIED) == "unspecified"
    assert status_name(42) == "unspecified"
