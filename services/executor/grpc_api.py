"""gRPC adapter: Execute and ExecuteBatch (the rollout's hot path), and the gateway's runner client.

Thin: it maps protos to core.RunRequest/RunOutcome and back. A malformed single request is
INVALID_ARGUMENT; in a batch, a malformed item is answered with status REJECTED so the other runs
still happen. The caller's deadline is honoured: a run that cannot finish before it is abandoned
with DEADLINE_EXCEEDED (its sandbox slot is released as soon as the run ends).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools

import grpc

from torl.common.config import TlsClientSettings
from torl.common.errors import DeadlineExceeded, InvalidArgument, TorlError, Unauthenticated
from torl.common.grpc_client import aio_channel
from torl.executor.auth import Admission, KeyStore, admit
from torl.executor.config import Isolation
from torl.executor.core import Caller, RunOutcome, RunRequest, RunService, resolve_isolation
from torl.v1 import common_pb2, executor_pb2, executor_pb2_grpc

CALLER_METADATA = "x-torl-caller"  # the caller a gateway forwards for (trusted only with a valid runner token)
RUNNER_TOKEN_METADATA = "x-torl-runner-token"  # proves a call to a runner comes from the gateway

STATUS_TO_PROTO = {
    "ok": common_pb2.TOOL_STATUS_OK,
    "error": common_pb2.TOOL_STATUS_ERROR,
    "timeout": common_pb2.TOOL_STATUS_TIMEOUT,
    "sandbox_error": common_pb2.TOOL_STATUS_SANDBOX_ERROR,
    "rejected": common_pb2.TOOL_STATUS_REJECTED,
}
PROTO_TO_STATUS = {v: k for k, v in STATUS_TO_PROTO.items()}
ISOLATION_FROM_PROTO: dict[int, Isolation | None] = {
    executor_pb2.ISOLATION_UNSPECIFIED: None,
    executor_pb2.ISOLATION_STRICT: "strict",
    executor_pb2.ISOLATION_SESSION: "session",
}
ISOLATION_TO_PROTO = {
    None: executor_pb2.ISOLATION_UNSPECIFIED,
    "strict": executor_pb2.ISOLATION_STRICT,
    "session": executor_pb2.ISOLATION_SESSION,
}


def request_from_proto(msg: executor_pb2.ExecuteRequest) -> RunRequest:
    isolation = ISOLATION_FROM_PROTO.get(msg.isolation)
    if msg.isolation not in ISOLATION_FROM_PROTO:
        raise InvalidArgument(f"unknown isolation value {msg.isolation}")
    return RunRequest(
        code=msg.code,
        request_id=msg.request_id,
        language=msg.language or "python",
        stdin=msg.stdin.encode("utf-8"),
        files=[(f.path, bytes(f.content)) for f in msg.files],
        timeout_seconds=msg.timeout_seconds,
        memory_mb=int(msg.memory_limit_mb),
        isolation=isolation,
        session_id=msg.session_id,
    )


def request_to_proto(req: RunRequest) -> executor_pb2.ExecuteRequest:
    return executor_pb2.ExecuteRequest(
        request_id=req.request_id,
        code=req.code,
        language=req.language,
        stdin=req.stdin.decode("utf-8", errors="replace"),
        files=[executor_pb2.InputFile(path=p, content=c) for p, c in req.files],
        timeout_seconds=req.timeout_seconds,
        memory_limit_mb=req.memory_mb,
        isolation=ISOLATION_TO_PROTO[req.isolation],
        session_id=req.session_id,
    )


def outcome_to_proto(o: RunOutcome) -> executor_pb2.ExecuteResponse:
    return executor_pb2.ExecuteResponse(
        request_id=o.request_id,
        status=STATUS_TO_PROTO[o.status],
        stdout=o.stdout,
        stderr=o.stderr,
        stdout_truncated=o.stdout_truncated,
        stderr_truncated=o.stderr_truncated,
        exit_code=o.exit_code,
        duration_seconds=o.duration_seconds,
        observation=o.observation,
        message=o.message,
        queue_seconds=o.queue_seconds,
    )


def outcome_from_proto(msg: executor_pb2.ExecuteResponse) -> RunOutcome:
    return RunOutcome(
        request_id=msg.request_id,
        status=PROTO_TO_STATUS.get(msg.status, "sandbox_error"),
        stdout=msg.stdout,
        stderr=msg.stderr,
        stdout_truncated=msg.stdout_truncated,
        stderr_truncated=msg.stderr_truncated,
        exit_code=msg.exit_code,
        duration_seconds=msg.duration_seconds,
        queue_seconds=msg.queue_seconds,
        observation=msg.observation,
        message=msg.message,
    )


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: (v if isinstance(v, str) else v.decode()) for k, v in (context.invocation_metadata() or ())}


class ExecutorServicer(executor_pb2_grpc.ExecutorServicer):
    def __init__(
        self,
        service: RunService,
        keys: KeyStore | None,
        require_keys: bool,
        default_isolation: Isolation,
        max_batch: int,
        gateway_token_sha256: str | None = None,
    ) -> None:
        self.service = service
        self.keys = keys
        self.require_keys = require_keys
        self.default_isolation = default_isolation
        self.max_batch = max_batch
        # A runner: every call must present the gateway's token; the caller it names is then trusted.
        self.gateway_digest = bytes.fromhex(gateway_token_sha256) if gateway_token_sha256 is not None else None

    def _admit(self, context: grpc.aio.ServicerContext, cost: int) -> Admission:
        md = _metadata(context)
        if self.gateway_digest is not None:
            token = md.get(RUNNER_TOKEN_METADATA, "")
            digest = hashlib.sha256(token.encode()).digest()
            if not token or not hmac.compare_digest(digest, self.gateway_digest):
                raise Unauthenticated("this runner serves only its gateway (missing or wrong runner token)")
            name = md.get(CALLER_METADATA, "")
            if not name:
                raise InvalidArgument(f"a call from the gateway must name its caller ({CALLER_METADATA})")
            return Admission(Caller(name, self.default_isolation, allow_session=True), None, 0)
        if self.require_keys or (self.keys is not None and "authorization" in md):
            return admit(self.keys, md.get("authorization"), self.default_isolation, cost)
        return Admission(Caller("grpc", self.default_isolation, allow_session=True), None, 0)

    async def _with_deadline(self, coro: asyncio.Future[RunOutcome], context: grpc.aio.ServicerContext) -> RunOutcome:
        remaining = context.time_remaining()
        if remaining is None:
            return await coro
        try:
            return await asyncio.wait_for(coro, max(0.0, remaining))
        except TimeoutError:
            raise DeadlineExceeded("the call's deadline passed before the run finished") from None

    async def Execute(
        self, request: executor_pb2.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> executor_pb2.ExecuteResponse:
        adm = self._admit(context, 1)
        try:
            req = request_from_proto(request)
            fut = asyncio.ensure_future(self.service.run(req, adm.caller, "grpc"))
            return outcome_to_proto(await self._with_deadline(fut, context))
        finally:
            adm.release(self.keys)

    async def _one(self, msg: executor_pb2.ExecuteRequest, caller: Caller) -> RunOutcome:
        try:
            req = request_from_proto(msg)
        except TorlError as e:
            return self.service.rejected(RunRequest(code="", request_id=msg.request_id), e.message, caller, "grpc")
        try:
            return await self.service.run(req, caller, "grpc")
        except TorlError as e:
            return self.service.rejected(req, e.message, caller, "grpc")

    async def ExecuteBatch(
        self, request: executor_pb2.ExecuteBatchRequest, context: grpc.aio.ServicerContext
    ) -> executor_pb2.ExecuteBatchResponse:
        n = len(request.requests)
        if n > self.max_batch:
            raise InvalidArgument(f"batch of {n} runs; the limit is {self.max_batch}")
        adm = self._admit(context, n)
        try:
            fut = asyncio.ensure_future(asyncio.gather(*(self._one(m, adm.caller) for m in request.requests)))
            remaining = context.time_remaining()
            try:
                outcomes = await (asyncio.wait_for(fut, remaining) if remaining is not None else fut)
            except TimeoutError:
                raise DeadlineExceeded("the call's deadline passed before the batch finished") from None
            return executor_pb2.ExecuteBatchResponse(responses=[outcome_to_proto(o) for o in outcomes])
        finally:
            adm.release(self.keys)


class RemoteRunners:
    """The gateway's RunService: forwards runs to runner processes over gRPC.

    Session runs of one caller always go to the same runner (hash of caller + session id), so a
    session's runs share that runner's sandboxes; strict runs are spread round-robin.
    """

    def __init__(
        self, targets: list[str], token: str, max_message_mb: int = 64, tls: TlsClientSettings | None = None
    ) -> None:
        self.targets = targets
        self.token = token
        self.channels = [aio_channel(t, max_message_mb, tls=tls) for t in targets]
        self.stubs = [executor_pb2_grpc.ExecutorStub(ch) for ch in self.channels]
        self._rr = itertools.count()

    def _pick(self, req: RunRequest, caller: Caller) -> int:
        if req.isolation == "session":
            h = hashlib.sha256(f"{caller.name}:{req.session_id}".encode()).digest()
            return int.from_bytes(h[:4], "big") % len(self.stubs)
        return next(self._rr) % len(self.stubs)

    async def run(self, req: RunRequest, caller: Caller, api: str = "grpc") -> RunOutcome:
        req.isolation = resolve_isolation(req.isolation, caller)
        i = self._pick(req, caller)
        timeout = (req.timeout_seconds or 60.0) + 120.0
        try:
            metadata = ((CALLER_METADATA, caller.name), (RUNNER_TOKEN_METADATA, self.token))
            resp = await self.stubs[i].Execute(request_to_proto(req), timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(e.details() or "invalid request") from None
            from torl.executor.observation import observation

            return RunOutcome(
                req.request_id,
                "sandbox_error",
                exit_code=-1,
                observation=observation("", "", -1),
                message=f"runner {self.targets[i]} failed: {e.code().name} {e.details()}",
            )
        return outcome_from_proto(resp)

    def rejected(self, req: RunRequest, message: str, caller: Caller, api: str) -> RunOutcome:
        from torl.executor.observation import observation

        obs = observation("", "", -1)
        return RunOutcome(req.request_id, "rejected", exit_code=-1, observation=obs, message=message)

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()
