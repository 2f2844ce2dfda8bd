"""Executor adapter: the one place the rollout calls the executor's gRPC contract.

Tool calls from many sequences that arrive within a short window are sent together as one
ExecuteBatch (session isolation, session id = replica id). A call that cannot reach the
executor comes back as a `ToolResult` with `reachable=False` and the reason, never as an
exception into the loop and never as a silent observation.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import grpc

from torl.common.config import TlsClientSettings
from torl.common.grpc_client import open_channel
from torl.v1 import common_pb2, executor_pb2, executor_pb2_grpc

MAX_RECONNECT_BACKOFF_MS = 1000  # how long after the executor (or reward) returns calls may still fail


def dependency_channel(target: str, tls: TlsClientSettings | None = None) -> grpc.aio.Channel:
    """Channel to the executor or reward service, over TLS when `tls.enabled` (deps.tls).

    gRPC's reconnect backoff grows to 120 s by default: after an outage every call would keep failing
    (trajectories excluded) for up to two minutes after the service came back, so the rollout caps it."""
    return open_channel(target, aio=True, tls=tls, max_attempts=3, extra_options=[
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ])


@dataclass(frozen=True)
class ToolResult:
    status: int  # common_pb2.ToolStatus
    observation: str
    message: str
    seconds: float
    reachable: bool = True  # False: the executor could not be called (infrastructure failure)
    passed: bool = False  # ran, and exit code 0 or non-empty stdout (the reference's success, see `passed`)


RAN = frozenset({common_pb2.TOOL_STATUS_OK, common_pb2.TOOL_STATUS_ERROR, common_pb2.TOOL_STATUS_TIMEOUT})


def passed(status: int, exit_code: int, stdout: str) -> bool:
    """The reference's successful execution: the program ran and its exit code is 0 or its stdout is
    non-empty (GAIR-NLP/ToRL vllm_rollout_spmd.py:229, execution_pass :312-314). A program that
    printed and then raised counts; a run that never started (rejected, sandbox_error) does not."""
    return status in RAN and (exit_code == 0 or stdout != "")


@dataclass
class _Pending:
    code: str
    future: asyncio.Future[ToolResult]
    queued_at: float


class ExecutorTools:
    """Batches coinciding tool calls into ExecuteBatch on one channel."""

    def __init__(
        self,
        target: str,
        session_id: str,
        timeout_seconds: float = 10.0,
        batch_window_ms: float = 2.0,
        max_batch: int = 256,
        deadline_seconds: float = 60.0,
        tls: TlsClientSettings | None = None,
    ) -> None:
        self.target = target
        self.session_id = session_id
        self.timeout_seconds = timeout_seconds
        self.batch_window = batch_window_ms / 1000.0
        self.max_batch = max_batch
        self.deadline_seconds = deadline_seconds
        self._channel = dependency_channel(target, tls)
        self._stub = executor_pb2_grpc.ExecutorStub(self._channel)
        self._pending: list[_Pending] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self.batches_sent = 0

    async def run(self, code: str) -> ToolResult:
        """Run one program; resolves when its batch returns."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ToolResult] = loop.create_future()
        self._pending.append(_Pending(code, fut, time.perf_counter()))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.batch_window, self._flush)
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            task = asyncio.create_task(self._send(batch))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        requests = [
            executor_pb2.ExecuteRequest(
                request_id=uuid.uuid4().hex,
                code=p.code,
                language="python",
                timeout_seconds=self.timeout_seconds,
                isolation=executor_pb2.ISOLATION_SESSION,
                session_id=self.session_id,
            )
            for p in batch
        ]
        started = time.perf_counter()
        try:
            resp = await self._stub.ExecuteBatch(
                executor_pb2.ExecuteBatchRequest(requests=requests),
                timeout=self.timeout_seconds + self.deadline_seconds,
            )
            self.batches_sent += 1
            if len(resp.responses) != len(batch):
                raise RuntimeError(f"executor answered {len(resp.responses)} results for {len(batch)} calls")
            for p, r in zip(batch, resp.responses, strict=True):
                if not p.future.done():
                    p.future.set_result(
                        ToolResult(
                            status=int(r.status),
                            observation=r.observation,
                            message=r.message,
                            seconds=time.perf_counter() - p.queued_at,
                            passed=passed(int(r.status), r.exit_code, r.stdout),
                        )
                    )
        except (grpc.aio.AioRpcError, RuntimeError) as e:
            reason = (
                f"executor {e.code().name}: {e.details()}" if isinstance(e, grpc.aio.AioRpcError) else str(e)
            )
            elapsed = time.perf_counter() - started
            for p in batch:
                if not p.future.done():
                    p.future.set_result(
                        ToolResult(
                            status=common_pb2.TOOL_STATUS_SANDBOX_ERROR,
                            observation="",
                            message=reason,
                            seconds=elapsed,
                            reachable=False,
                        )
                    )

    async def close(self) -> None:
        await self._channel.close()
