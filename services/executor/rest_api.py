"""REST adapter (FastAPI) for teams outside the training job: /v1 runs, health, metrics, and a
SandboxFusion-compatible /run_code so existing verl/ToRL clients can point at torl unchanged.

Auth: `Authorization: Bearer <key>` checked against the hot-reloaded keys file; per-key token
bucket (429 + Retry-After) and concurrency limit (429). Bodies over `rest.max_body_bytes` get 413.
Errors are JSON `{"error": "<what was wrong>", "request_id": ...}`; no traceback reaches a client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from torl.common.errors import InvalidArgument, ResourceExhausted, TorlError, Unauthenticated
from torl.common.logging import get_logger
from torl.executor.auth import Admission, ApiKey, KeyStore, authenticate, charge
from torl.executor.config import MAX_BATCH_BOUND, MAX_FILES_BOUND, ExecutorSettings
from torl.executor.core import Caller, RunOutcome, RunRequest, RunService, check_language

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
    files: list[InputFileBody] = Field(
        default_factory=list, max_length=MAX_FILES_BOUND, description="Small input files (limits.max_files)."
    )
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
    runs: list[RunBody] = Field(
        min_length=1, max_length=MAX_BATCH_BOUND, description="Runs to execute concurrently (limits.max_batch)."
    )


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
    files: dict[str, str | None] = Field(
        default_factory=dict, max_length=MAX_FILES_BOUND, description="path -> base64 content"
    )


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
        await _send_error(send, 413, f"request body is larger than {self.max_bytes} bytes")


class _TooLarge(Exception):
    pass


PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")


class KeyAuth:
    """Pure ASGI middleware: authenticate the API key from the headers before a byte of the body is
    read (401 otherwise), so an unauthenticated caller never makes the service parse or validate
    anything. The key goes to the route in `scope["state"]["api_key"]` (None: no key store)."""

    def __init__(self, app: ASGIApp, keys: KeyStore | None) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                authorization = value.decode("latin-1")
        try:
            key = authenticate(self.keys, authorization)
        except Unauthenticated as e:
            await _send_error(send, 401, e.message)
            return
        scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, send)


async def _send_error(send: Send, status: int, message: str) -> None:
    body = ErrorBody(error=message).model_dump_json().encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _encode_text(text: str, what: str) -> bytes:
    """Request text as UTF-8 bytes; a lone surrogate (valid JSON, not valid UTF-8) is the caller's error."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not valid UTF-8 text (it holds a lone surrogate)") from None


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
        stdin=_encode_text(body.stdin, "stdin"),
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


# -- the app's state and the routes (module-level; each reads the state from the request) ---------


@dataclass(frozen=True)
class RestContext:
    """What the routes need: settings, the RunService, the key store and the health callbacks."""

    settings: ExecutorSettings
    service: RunService
    keys: KeyStore | None
    health: Callable[[], dict[str, Any]]
    ready: Callable[[], bool]

    def charge(self, request: Request, cost: int) -> Admission:
        """Charge the (already authenticated, by KeyAuth) caller's rate and concurrency limits."""
        key: ApiKey | None = request.scope.get("state", {}).get("api_key")
        return charge(self.keys, key, self.settings.rest.default_isolation, cost)


def _ctx(request: Request) -> RestContext:
    ctx: RestContext = request.app.state.executor
    return ctx


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 413, 422, 429, 503)
}
router = APIRouter()


async def torl_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TorlError)
    headers = {}
    if isinstance(exc, ResourceExhausted) and exc.retry_after_seconds is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_seconds)))
    rid = request.headers.get("x-request-id", "")
    return JSONResponse(ErrorBody(error=exc.message, request_id=rid).model_dump(), exc.http_status, headers)


async def invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()[:10]
    )
    return JSONResponse(ErrorBody(error=f"invalid request: {problems}").model_dump(), 422)


@router.post("/v1/runs", response_model=RunResult, responses=ERROR_RESPONSES, summary="Run one program")
async def run_one(body: RunBody, request: Request) -> Response:
    ctx = _ctx(request)
    adm = ctx.charge(request, 1)
    try:
        outcome = await ctx.service.run(_to_request(body), adm.caller, "rest")
    finally:
        adm.release(ctx.keys)
    return JSONResponse(_to_result(outcome).model_dump(), headers={"X-Request-Id": outcome.request_id})


async def _batch_item(ctx: RestContext, b: RunBody, caller: Caller) -> RunOutcome:
    """One item of a batch; whatever goes wrong with it is its own answer, never the batch's."""
    req = RunRequest(code="", request_id=b.request_id or uuid.uuid4().hex)
    try:
        req = _to_request(b)
        return await ctx.service.run(req, caller, "rest")
    except TorlError as e:
        return ctx.service.rejected(req, e.message, caller, "rest")
    except Exception as e:
        log.exception("batch_item_failed", request_id=req.request_id)
        return ctx.service.rejected(req, f"internal error: {type(e).__name__}", caller, "rest")


@router.post("/v1/runs:batch", response_model=BatchResult, responses=ERROR_RESPONSES, summary="Run many programs")
async def run_batch(body: BatchBody, request: Request) -> Response:
    ctx = _ctx(request)
    if len(body.runs) > ctx.settings.limits.max_batch:
        raise InvalidArgument(f"batch of {len(body.runs)} runs; the limit is {ctx.settings.limits.max_batch}")
    adm = ctx.charge(request, len(body.runs))
    try:
        # The admission is held until every item has ended (no item raises: see _batch_item).
        outcomes = await asyncio.gather(*(_batch_item(ctx, b, adm.caller) for b in body.runs))
    finally:
        adm.release(ctx.keys)
    return JSONResponse(BatchResult(results=[_to_result(o) for o in outcomes]).model_dump())


def _sf_response(o: RunOutcome) -> SFRunCodeResponse:
    if o.status in ("sandbox_error", "rejected"):
        return SFRunCodeResponse(status="SandboxError", message=o.message, run_result=None)
    run_status: Literal["Finished", "Error", "TimeLimitExceeded"] = (
        "TimeLimitExceeded" if o.status == "timeout" else "Finished"
    )
    return SFRunCodeResponse(
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


@router.post("/run_code", response_model=SFRunCodeResponse, responses=ERROR_RESPONSES, summary="SandboxFusion API")
async def run_code(body: SFRunCodeBody, request: Request) -> Response:
    ctx = _ctx(request)
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
        stdin=_encode_text(body.stdin or "", "stdin"),
        files=files,
        timeout_seconds=body.run_timeout or 0.0,
        memory_mb=memory,
    )
    adm = ctx.charge(request, 1)
    try:
        o = await ctx.service.run(req, adm.caller, "rest")
    finally:
        adm.release(ctx.keys)
    return JSONResponse(_sf_response(o).model_dump(), headers={"X-Request-Id": o.request_id})


@router.get("/healthz", response_model=HealthBody, summary="Liveness and backend facts")
async def healthz(request: Request) -> dict[str, Any]:
    return _ctx(request).health()


@router.get("/readyz", responses={503: {"model": ErrorBody}}, summary="Ready when the sandbox pool is warm")
async def readyz(request: Request) -> Response:
    if _ctx(request).ready():
        return JSONResponse({"status": "ready"})
    return JSONResponse(ErrorBody(error="sandbox pool is not warm yet").model_dump(), 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prom() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


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
    app.state.executor = RestContext(settings, service, keys, health, ready)
    app.add_exception_handler(TorlError, torl_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.include_router(router)
    # Outermost first: the size limit, then authentication, both before the body is read.
    app.add_middleware(KeyAuth, keys=keys)
    app.add_middleware(BodySizeLimit, max_bytes=settings.rest.max_body_bytes)
    return app
