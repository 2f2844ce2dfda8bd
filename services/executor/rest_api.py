"""REST adapter (FastAPI) for teams outside the training job: /v1 runs, health, metrics, and a
SandboxFusion-compatible /run_code so existing verl/ToRL clients can point at torl unchanged.

Auth: `Authorization: Bearer <key>` checked against the hot-reloaded keys file; per-key token
bucket (429 + Retry-After) and concurrency limit (429). Bodies over `rest.max_body_bytes` get 413.
Errors are JSON `{"error": "<what was wrong>", "request_id": ...}`; no traceback reaches a client.
"""

from __future__ import annotations

import base64
import binascii
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from torl.common.errors import InvalidArgument, ResourceExhausted, TorlError
from torl.common.logging import get_logger
from torl.executor.auth import Admission, KeyStore, admit
from torl.executor.config import ExecutorSettings
from torl.executor.core import RunOutcome, RunRequest, RunService, check_language

log = get_logger("torl.executor.rest")


class InputFileBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=255, description="Relative path inside the run's work dir.")
    content_base64: str = Field(max_length=64 * 1024 * 1024, description="File content, base64.")


class RunBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(description="Python source, run as `python3 -c` would.")
    language: str = Field("python", max_length=32, description="Only python is supported.")
    stdin: str = Field("", description="Text given to the program on stdin.")
    files: list[InputFileBody] = Field(default_factory=list, description="Small input files.")
    timeout_seconds: float = Field(0.0, ge=0.0, le=3600.0, description="Wall-clock limit; 0 = server default.")
    memory_limit_mb: int = Field(0, ge=0, le=1_048_576, description="Address-space limit; 0 = server default.")
    isolation: Literal["strict", "session"] | None = Field(None, description="Default: the key's isolation.")
    session_id: str = Field("", max_length=256, description="Groups session-mode runs of one caller.")
    request_id: str = Field(
        "",
        max_length=128,
        pattern=r"^[ -~]*$",  # printable ASCII: it is echoed in the X-Request-Id header
        description="Echoed back (also as X-Request-Id); printable ASCII; generated when empty.",
    )


class RunResult(BaseModel):
    request_id: str
    status: Literal["ok", "error", "timeout", "sandbox_error", "rejected"]
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    exit_code: int
    duration_seconds: float
    queue_seconds: float
    observation: str = Field(description="The text ToRL feeds back to the model.")
    message: str = Field(description="Why, for non-ok statuses.")


class BatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    runs: list[RunBody] = Field(min_length=1, description="Runs to execute concurrently.")


class BatchResult(BaseModel):
    results: list[RunResult]


class ErrorBody(BaseModel):
    error: str
    request_id: str = ""


class HealthBody(BaseModel):
    status: Literal["ok"]
    backend: str
    weak_isolation: bool
    unsandboxed: bool = Field(
        False,
        description="Untrusted code runs as plain processes on this host's kernel (process backend outside gVisor).",
    )
    process_limit_enforced: bool | None = Field(
        None, description="Whether the per-sandbox process limit holds (null on a gateway, which runs no code)."
    )
    warning: str
    pool: dict[str, int]


# SandboxFusion's /run_code contract (only what ToRL/verl clients send and read).
class SFRunCodeBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    code: str
    language: str = "python"
    run_timeout: float | None = Field(None, ge=0.0, le=3600.0)
    memory_limit_MB: int | None = Field(None, ge=-1, le=1_048_576)
    stdin: str | None = None
    files: dict[str, str | None] = Field(default_factory=dict, description="path -> base64 content")


class SFRunResult(BaseModel):
    status: Literal["Finished", "Error", "TimeLimitExceeded"] | None
    execution_time: float | None
    return_code: int | None
    stdout: str | None
    stderr: str | None


class SFRunCodeResponse(BaseModel):
    status: Literal["Success", "Failed", "SandboxError"]
    message: str
    compile_result: SFRunResult | None = None
    run_result: SFRunResult | None
    executor_pod_name: str | None = None
    files: dict[str, str] = Field(default_factory=dict)


class BodySizeLimit:
    """Pure ASGI middleware: 413 for bodies over the limit, by header or by counting."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return msg

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = ErrorBody(error=f"request body is larger than {self.max_bytes} bytes").model_dump_json().encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def _to_request(body: RunBody) -> RunRequest:
    files = []
    for f in body.files:
        try:
            files.append((f.path, base64.b64decode(f.content_base64, validate=True)))
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"files[{f.path}].content_base64 is not valid base64") from None
    return RunRequest(
        code=body.code,
        request_id=body.request_id or uuid.uuid4().hex,
        language=body.language,
        stdin=body.stdin.encode("utf-8", errors="surrogateescape"),
        files=files,
        timeout_seconds=body.timeout_seconds,
        memory_mb=body.memory_limit_mb,
        isolation=body.isolation,
        session_id=body.session_id,
    )


def _to_result(o: RunOutcome) -> RunResult:
    return RunResult(
        request_id=o.request_id,
        status=o.status,
        stdout=o.stdout,
        stderr=o.stderr,
        stdout_truncated=o.stdout_truncated,
        stderr_truncated=o.stderr_truncated,
        exit_code=o.exit_code,
        duration_seconds=o.duration_seconds,
        queue_seconds=o.queue_seconds,
        observation=o.observation,
        message=o.message,
    )


def create_app(
    settings: ExecutorSettings,
    service: RunService,
    keys: KeyStore | None,
    health: Callable[[], dict[str, Any]],
    ready: Callable[[], bool],
) -> FastAPI:
    """The REST app. `health()` gives backend facts for /healthz; `ready()` says the pool is warm."""
    app = FastAPI(
        title="torl executor",
        version="1",
        description="Runs untrusted Python in gVisor sandboxes. Auth: `Authorization: Bearer <key>`.",
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.rest.max_body_bytes)
    default_isolation = settings.rest.default_isolation

    @app.exception_handler(TorlError)
    async def _torl_error(request: Request, exc: TorlError) -> JSONResponse:
        headers = {}
        if isinstance(exc, ResourceExhausted) and exc.retry_after_seconds is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_seconds)))
        rid = request.headers.get("x-request-id", "")
        return JSONResponse(ErrorBody(error=exc.message, request_id=rid).model_dump(), exc.http_status, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()[:10]
        )
        return JSONResponse(ErrorBody(error=f"invalid request: {problems}").model_dump(), 422)

    async def _guarded(
        request: Request, cost: int, fn: Callable[[Admission], Awaitable[Response]]
    ) -> Response:
        adm = admit(keys, request.headers.get("authorization"), default_isolation, cost)
        try:
            return await fn(adm)
        finally:
            adm.release(keys)

    error_responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody} for code in (400, 401, 413, 422, 429, 503)
    }

    @app.post("/v1/runs", response_model=RunResult, responses=error_responses, summary="Run one program")
    async def run_one(body: RunBody, request: Request) -> Response:
        async def go(adm: Admission) -> Response:
            outcome = await service.run(_to_request(body), adm.caller, "rest")
            return JSONResponse(_to_result(outcome).model_dump(), headers={"X-Request-Id": outcome.request_id})

        return await _guarded(request, 1, go)

    @app.post("/v1/runs:batch", response_model=BatchResult, responses=error_responses, summary="Run many programs")
    async def run_batch(body: BatchBody, request: Request) -> Response:
        if len(body.runs) > settings.limits.max_batch:
            raise InvalidArgument(f"batch of {len(body.runs)} runs; the limit is {settings.limits.max_batch}")

        async def go(adm: Admission) -> Response:
            import asyncio

            async def one(b: RunBody) -> RunOutcome:
                req = RunRequest(code="", request_id=b.request_id or uuid.uuid4().hex)
                try:
                    req = _to_request(b)
                    return await service.run(req, adm.caller, "rest")
                except TorlError as e:
                    return service.rejected(req, e.message, adm.caller, "rest")

            outcomes = await asyncio.gather(*(one(b) for b in body.runs))
            return JSONResponse(BatchResult(results=[_to_result(o) for o in outcomes]).model_dump())

        return await _guarded(request, len(body.runs), go)

    @app.post("/run_code", response_model=SFRunCodeResponse, responses=error_responses, summary="SandboxFusion API")
    async def run_code(body: SFRunCodeBody, request: Request) -> Response:
        check_language(body.language)
        files = []
        for path, content in body.files.items():
            try:
                files.append((path, base64.b64decode(content or "", validate=True)))
            except (binascii.Error, ValueError):
                raise InvalidArgument(f"files[{path!r}] is not valid base64") from None
        memory = body.memory_limit_MB if body.memory_limit_MB and body.memory_limit_MB > 0 else 0
        req = RunRequest(
            code=body.code,
            request_id=request.headers.get("x-request-id") or uuid.uuid4().hex,
            stdin=(body.stdin or "").encode("utf-8", errors="surrogateescape"),
            files=files,
            timeout_seconds=body.run_timeout or 0.0,
            memory_mb=memory,
        )

        async def go(adm: Admission) -> Response:
            o = await service.run(req, adm.caller, "rest")
            if o.status in ("sandbox_error", "rejected"):
                resp = SFRunCodeResponse(status="SandboxError", message=o.message, run_result=None)
            else:
                run_status: Literal["Finished", "Error", "TimeLimitExceeded"] = (
                    "TimeLimitExceeded" if o.status == "timeout" else "Finished"
                )
                resp = SFRunCodeResponse(
                    status="Success" if o.status == "ok" else "Failed",
                    message=o.message,
                    run_result=SFRunResult(
                        status=run_status,
                        execution_time=o.duration_seconds,
                        return_code=None if o.status == "timeout" else o.exit_code,
                        stdout=o.stdout,
                        stderr=o.stderr,
                    ),
                )
            return JSONResponse(resp.model_dump(), headers={"X-Request-Id": o.request_id})

        return await _guarded(request, 1, go)

    @app.get("/healthz", response_model=HealthBody, summary="Liveness and backend facts")
    async def healthz() -> dict[str, Any]:
        return health()

    @app.get("/readyz", responses={503: {"model": ErrorBody}}, summary="Ready when the sandbox pool is warm")
    async def readyz() -> Response:
        if ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse(ErrorBody(error="sandbox pool is not warm yet").model_dump(), 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prom() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
