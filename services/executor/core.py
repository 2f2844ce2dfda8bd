"""The executor core: validate a run request, apply limits, run it in the pool, type the outcome.

Transport-free: the gRPC and REST adapters translate their messages into `RunRequest` and
`RunOutcome` and nothing else. Every outcome carries a status (ok / error / timeout /
sandbox_error / rejected), capped stdout/stderr with truncation flags, the exit code, timings, the
request id, and the observation text computed by ToRL's rules.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Literal, Protocol

from torl.common.errors import InvalidArgument
from torl.common.logging import get_logger
from torl.executor import metrics
from torl.executor.config import ExecutorSettings, Isolation
from torl.executor.observation import Captured, observation, observation_of
from torl.executor.pool import Pool, QueueFull, QueueTimeout
from torl.executor.sandbox import Job, SandboxError, make_backend

log = get_logger("torl.executor.core")

Status = Literal["ok", "error", "timeout", "sandbox_error", "rejected"]
SUPPORTED_LANGUAGES = ("python", "python3")


@dataclass
class RunRequest:
    code: str
    request_id: str = ""
    language: str = "python"
    stdin: bytes = b""
    files: list[tuple[str, bytes]] = field(default_factory=list)
    timeout_seconds: float = 0.0  # 0 = default
    memory_mb: int = 0  # 0 = default
    isolation: Isolation | None = None  # None = caller's default
    session_id: str = ""


@dataclass
class RunOutcome:
    request_id: str
    status: Status
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    exit_code: int = 0
    duration_seconds: float = 0.0
    queue_seconds: float = 0.0
    observation: str = ""
    message: str = ""


@dataclass(frozen=True)
class Caller:
    """Who asks: the API key's name (or "anonymous") and its default isolation."""

    name: str = "anonymous"
    default_isolation: Isolation = "strict"
    allow_session: bool = True


def check_language(language: str) -> None:
    """The one language check (every adapter and the core call it)."""
    if (language or "python").lower() not in SUPPORTED_LANGUAGES:
        raise InvalidArgument(
            f"language {language!r} is not supported; supported: {', '.join(SUPPORTED_LANGUAGES)}"
        )


def resolve_isolation(requested: Isolation | None, caller: Caller) -> Isolation:
    """The one isolation rule: the caller's default when none is asked; session only for callers allowed it."""
    isolation: Isolation = requested or caller.default_isolation
    if isolation == "session" and not caller.allow_session:
        raise InvalidArgument(f"caller {caller.name!r} may not use session isolation")
    return isolation


class RunService(Protocol):
    """What executes runs: the local core (Executor) or remote runners (grpc_api.RemoteRunners)."""

    async def run(self, req: RunRequest, caller: Caller, api: str = "grpc") -> RunOutcome: ...

    def rejected(self, req: RunRequest, message: str, caller: Caller, api: str) -> RunOutcome: ...


def _check_path(path: str) -> None:
    if not path or path.startswith("/") or "\x00" in path:
        raise InvalidArgument(f"file path {path!r} must be relative and non-empty")
    if any(part == ".." for part in path.replace("\\", "/").split("/")):
        raise InvalidArgument(f"file path {path!r} may not contain '..'")


def decode_output(data: bytes) -> str:
    """Program output as text; bytes that are not UTF-8 become U+FFFD."""
    return data.decode("utf-8", errors="replace")


def captured(head: bytes, tail: bytes, omitted: int, has_error: bool) -> Captured:
    """One output stream for the observation rules (head and tail decoded apart only when a gap
    lies between them; a tail that starts inside a UTF-8 character drops that character's rest)."""
    if not omitted:
        return Captured(decode_output(head + tail))
    skip = 0
    while skip < min(3, len(tail)) and 0x80 <= tail[skip] < 0xC0:
        skip += 1
    return Captured(decode_output(head), decode_output(tail[skip:]), omitted, has_error)


class Executor:
    """Validates and runs requests on a Pool."""

    def __init__(self, settings: ExecutorSettings, pool: Pool) -> None:
        self.settings = settings
        self.pool = pool

    # -- validation ------------------------------------------------------------------------------

    def validate(self, req: RunRequest, caller: Caller) -> tuple[float, int, Isolation]:
        """Check a request against the limits; InvalidArgument names what is wrong."""
        lim = self.settings.limits
        check_language(req.language)
        code_bytes = len(req.code.encode("utf-8", errors="surrogatepass"))
        if code_bytes > lim.max_code_bytes:
            raise InvalidArgument(f"code is {code_bytes} bytes; the limit is {lim.max_code_bytes}")
        if len(req.stdin) > lim.max_stdin_bytes:
            raise InvalidArgument(f"stdin is {len(req.stdin)} bytes; the limit is {lim.max_stdin_bytes}")
        if len(req.files) > lim.max_files:
            raise InvalidArgument(f"{len(req.files)} files; the limit is {lim.max_files}")
        total = sum(len(c) for _, c in req.files)
        if total > lim.max_files_bytes:
            raise InvalidArgument(f"files total {total} bytes; the limit is {lim.max_files_bytes}")
        for path, _ in req.files:
            _check_path(path)
        timeout = req.timeout_seconds or lim.default_timeout_seconds
        if not 0 < timeout <= lim.max_timeout_seconds:
            raise InvalidArgument(f"timeout_seconds={timeout:g} is outside (0, {lim.max_timeout_seconds:g}]")
        memory = req.memory_mb or lim.default_memory_mb
        if not 64 <= memory <= lim.max_memory_mb:
            raise InvalidArgument(f"memory_limit_mb={memory} is outside [64, {lim.max_memory_mb}]")
        isolation = resolve_isolation(req.isolation, caller)
        if len(req.session_id) > 256:
            raise InvalidArgument("session_id is longer than 256 characters")
        return timeout, memory, isolation

    # -- running ---------------------------------------------------------------------------------

    def rejected(self, req: RunRequest, message: str, caller: Caller, api: str) -> RunOutcome:
        rid = req.request_id or uuid.uuid4().hex
        metrics.REQUESTS.labels("rejected", caller.name, api).inc()
        return RunOutcome(rid, "rejected", exit_code=-1, observation=observation("", "", -1), message=message)

    async def run(self, req: RunRequest, caller: Caller, api: str = "grpc") -> RunOutcome:
        """Run one request. Raises InvalidArgument for a malformed request; all else is a status."""
        timeout, memory, isolation = self.validate(req, caller)
        rid = req.request_id or uuid.uuid4().hex
        # Sandboxes belong to a caller (per isolation level); every run in them is a fresh process.
        # Keying sandboxes by session too would make a caller with more sessions than sandboxes
        # (the rollout's replicas) hand sandboxes back and forth forever.
        tenant = f"{isolation}:{caller.name}"
        job = Job(
            run_id=uuid.uuid4().hex,
            code=req.code,
            stdin=req.stdin,
            files=tuple(req.files),
            timeout_seconds=timeout,
            memory_mb=memory,
            max_output_bytes=self.settings.limits.max_output_bytes,
            isolation=isolation,
        )
        t0 = time.monotonic()
        try:
            res = await self.pool.run(job, tenant)
        except (QueueFull, QueueTimeout) as e:
            return self.rejected(req, str(e), caller, api)
        except SandboxError as e:
            res = None
            outcome = RunOutcome(rid, "sandbox_error", exit_code=-1, message=str(e))
        if res is not None and res.result is None:
            outcome = RunOutcome(rid, "sandbox_error", exit_code=-1, message=res.sandbox_error or "sandbox failed")
            outcome.queue_seconds = res.queue_seconds
        elif res is not None and res.result is not None:
            r = res.result
            status: Status = "timeout" if r.timed_out else ("ok" if r.exit_code == 0 else "error")
            outcome = RunOutcome(
                request_id=rid,
                status=status,
                stdout=decode_output(r.stdout),
                stderr=decode_output(r.stderr),
                stdout_truncated=r.stdout_truncated,
                stderr_truncated=r.stderr_truncated,
                exit_code=r.exit_code,
                duration_seconds=r.duration_seconds,
                queue_seconds=res.queue_seconds,
                message=f"wall-clock limit of {timeout:g} s exceeded" if r.timed_out else "",
            )
            metrics.RUN_DURATION.labels(isolation).observe(r.duration_seconds)
        if res is not None and res.result is not None:
            r = res.result
            outcome.observation = observation_of(
                captured(r.stdout, r.stdout_tail, r.stdout_omitted, r.stdout_has_error),
                captured(r.stderr, r.stderr_tail, r.stderr_omitted, r.stderr_has_error),
                r.exit_code,
            )
        else:
            outcome.observation = observation("", "", outcome.exit_code)
        if outcome.status == "sandbox_error":
            log.warning("sandbox_error", request_id=rid, caller=caller.name, reason=outcome.message)
        metrics.REQUESTS.labels(outcome.status, caller.name, api).inc()
        if outcome.duration_seconds == 0.0:
            outcome.duration_seconds = time.monotonic() - t0
        return outcome


def make_executor(settings: ExecutorSettings) -> Executor:
    backend = make_backend(settings.sandbox)
    return Executor(settings, Pool(backend, backend.layout, settings.sandbox, settings.pool))
