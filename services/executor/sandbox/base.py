"""The sandbox interface: run jobs in a started sandbox, whatever backend made it.

A sandbox is one long-lived isolated environment (a gVisor container, a bubblewrap jail, or, with
the process backend, a plain child process inside a pod that gVisor already isolates) whose
first process is the agent (agent.py in this package): a resident interpreter with the math
modules imported that forks a fresh process per run (never reused, in either isolation mode). The host talks
to it over the sandbox's stdin/stdout with length-prefixed JSON frames.

Backends (gvisor.py, bwrap.py, process.py) only say how to launch and destroy one; everything else (frames,
futures, hard deadlines, failure typing) lives here so both behave identically.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torl.common.logging import get_logger
from torl.executor.config import SandboxSettings
from torl.executor.observation import TAIL_BYTES

log = get_logger("torl.executor.sandbox.base")

AGENT_FILE = Path(__file__).with_name("agent.py")
AGENT_PATH_IN_SANDBOX = "/opt/torl/agent.py"
SITE_IN_SANDBOX = "/opt/site"
HEADER = struct.Struct(">I")
MAX_RESULT_FRAME = 512 * 1024 * 1024
CANCEL_GRACE_SECONDS = 10.0  # a cancelled run not confirmed dead by then faults its sandbox (recycled)

IsolationMode = Literal["strict", "session"]


class SandboxError(Exception):
    """The sandbox (not the program in it) failed: it died, hung or broke the protocol."""


@dataclass(frozen=True)
class Job:
    """One run as the agent receives it."""

    run_id: str
    code: str
    stdin: bytes
    files: tuple[tuple[str, bytes], ...]
    timeout_seconds: float
    memory_mb: int
    max_output_bytes: int
    isolation: IsolationMode

    def frame(self) -> dict[str, Any]:
        return {
            "op": "run",
            "id": self.run_id,
            "mode": self.isolation,
            "code": self.code,
            "stdin": base64.b64encode(self.stdin).decode("ascii"),
            "files": [[p, base64.b64encode(c).decode("ascii")] for p, c in self.files],
            "timeout": self.timeout_seconds,
            "mem_mb": self.memory_mb,
            "max_output": self.max_output_bytes,
            "tail": TAIL_BYTES,
        }


@dataclass
class JobResult:
    """What the agent reported for a run."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    duration_seconds: float
    error: str | None = None
    # Past the cap: the last bytes of each stream, how many bytes were dropped before them, and
    # whether "Error" occurs anywhere in the stream (for the observation rules).
    stdout_tail: bytes = b""
    stderr_tail: bytes = b""
    stdout_omitted: int = 0
    stderr_omitted: int = 0
    stdout_has_error: bool = False
    stderr_has_error: bool = False

    @classmethod
    def from_frame(cls, msg: dict[str, Any]) -> JobResult:
        try:
            return cls(
                exit_code=int(msg["exit_code"]),
                stdout=base64.b64decode(msg["stdout"]),
                stderr=base64.b64decode(msg["stderr"]),
                stdout_truncated=bool(msg["stdout_truncated"]),
                stderr_truncated=bool(msg["stderr_truncated"]),
                timed_out=bool(msg["timed_out"]),
                duration_seconds=float(msg["duration"]),
                error=str(msg["error"]) if msg.get("error") else None,
                stdout_tail=base64.b64decode(msg.get("stdout_tail", "")),
                stderr_tail=base64.b64decode(msg.get("stderr_tail", "")),
                stdout_omitted=int(msg.get("stdout_omitted", 0)),
                stderr_omitted=int(msg.get("stderr_omitted", 0)),
                stdout_has_error=bool(msg.get("stdout_has_error", False)),
                stderr_has_error=bool(msg.get("stderr_has_error", False)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SandboxError(f"malformed result from the sandbox agent: {e}") from e


@dataclass(frozen=True)
class Layout:
    """What a sandbox sees: read-only binds (host path → sandbox path) and the interpreter."""

    python: str
    binds: tuple[tuple[str, str], ...]
    env: dict[str, str] = field(default_factory=dict)
    agent_path: str = AGENT_PATH_IN_SANDBOX
    site: tuple[str, ...] = (SITE_IN_SANDBOX,)

    def agent_args(self, preload: list[str], spares: int, stock: int) -> list[str]:
        """The agent's command line; its last element is the agent's JSON options: `spares` ready at
        all times (one per slot), `stock` ready once the sandbox is idle."""
        args = {
            "site": list(self.site),
            "preload": preload,
            "env": self.env,
            "spares": spares,
            "stock": stock,
        }
        return [self.python, "-I", "-B", self.agent_path, json.dumps(args)]


def _package_dirs(name: str) -> list[Path]:
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise SandboxError(f"package {name!r} for the sandbox is not installed")
    if spec.submodule_search_locations:
        found = [Path(p) for p in spec.submodule_search_locations]
    elif spec.origin:
        found = [Path(spec.origin)]
    else:
        raise SandboxError(f"package {name!r} has no files to expose")
    libs = found[0].parent / f"{name}.libs"  # vendored shared libraries of binary wheels
    return [*found, *([libs] if libs.is_dir() else [])]


def build_layout(settings: SandboxSettings) -> Layout:
    """Only the interpreter, the listed packages, the agent and shared libraries: no config, no keys."""
    python = settings.python or os.path.realpath(sys.executable)
    prefix = os.path.realpath(sys.base_prefix) if settings.python is None else str(Path(python).parent.parent)
    binds: list[tuple[str, str]] = [("/usr", "/usr")]
    for extra in ("/etc/alternatives", "/etc/ld.so.cache"):
        if os.path.exists(extra):
            binds.append((extra, extra))
    if not prefix.startswith("/usr"):
        binds.append((prefix, prefix))
    for name in settings.packages:
        for path in _package_dirs(name):
            binds.append((str(path), f"{SITE_IN_SANDBOX}/{path.name}"))
    binds.append((str(AGENT_FILE), AGENT_PATH_IN_SANDBOX))
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": SITE_IN_SANDBOX,
        "PYTHONDONTWRITEBYTECODE": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    return Layout(python=python, binds=tuple(binds), env=env)


def is_leftover(name: str, prefix: str) -> bool:
    """A sandbox name of ours (by prefix) made by a process that no longer runs (names carry the owner's pid)."""
    prefix = prefix + "-"
    if not name.startswith(prefix):
        return False
    parts = name[len(prefix):].split("-")
    token = parts[1] if parts[0] == "check" and len(parts) > 1 else parts[0]
    if not token.isdigit():
        return True
    owner = int(token)
    if owner == os.getpid():
        return True
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Backend(abc.ABC):
    """How to launch and destroy one sandbox whose first process is the agent."""

    name: str = ""
    layout: Layout
    weak_isolation: bool = False
    unsandboxed: bool = False  # untrusted code runs on the host's own kernel with no sandbox at all
    process_limit_enforced: bool = True  # RLIMIT_NPROC (sandbox.max_processes) holds inside the sandbox

    def health_warnings(self) -> list[str]:
        """What /healthz and the start-up log must say about this backend's isolation."""
        return []

    def launch_env(self) -> dict[str, str] | None:
        """Environment of the launch command (None: the service's own)."""
        return None

    def spawning(self, name: str) -> None:  # noqa: B027 - a hook most backends do not need
        """Sandbox `name` is about to be forked."""

    def spawned(self, name: str, pid: int | None) -> None:  # noqa: B027 - a hook most backends do not need
        """Sandbox `name` was forked as `pid` (None: it could not be)."""

    async def after_run(self, sandbox: Sandbox) -> None:  # noqa: B027 - a hook most backends do not need
        """A run in `sandbox` returned its result; the caller gets it once this returns."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise SandboxError when this backend cannot run here."""

    @abc.abstractmethod
    def prepare(self) -> None:
        """Build shared state (rootfs skeleton) and remove leftovers of earlier processes."""

    @abc.abstractmethod
    def launch_command(self, name: str, agent_args: list[str]) -> list[str]:
        """The host command whose stdin/stdout become the agent's."""

    @abc.abstractmethod
    def destroy(self, name: str) -> None:
        """Remove every trace of sandbox `name` (blocking; called from a thread)."""


class Sandbox:
    """One started sandbox: sends jobs, matches results to callers, notices death."""

    def __init__(self, backend: Backend, name: str, command: list[str]) -> None:
        self.backend = backend
        self.name = name
        self.command = command
        self.proc: asyncio.subprocess.Process | None = None
        self.pending: dict[str, asyncio.Future[JobResult]] = {}
        self.dead: str | None = None
        self.faulted: str | None = None
        self.started_at = 0.0
        self.start_seconds = 0.0
        self.ready_info: dict[str, Any] = {}  # the agent's ready frame
        self._reader: asyncio.Task[None] | None = None
        self._stderr: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()

    async def start(self, timeout: float) -> None:
        t0 = time.monotonic()
        self.backend.spawning(self.name)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                limit=1 << 20,
                env=self.backend.launch_env(),
            )
        finally:
            self.backend.spawned(self.name, self.proc.pid if self.proc is not None else None)
        self._stderr = asyncio.create_task(self._log_stderr())
        try:
            ready = await asyncio.wait_for(self._read_frame(), timeout)
        except (TimeoutError, asyncio.IncompleteReadError, SandboxError) as e:
            await self.close()
            raise SandboxError(f"sandbox {self.name} did not start: {type(e).__name__} {e}") from None
        if ready.get("op") != "ready":
            await self.close()
            raise SandboxError(f"sandbox {self.name} sent {ready.get('op')!r} instead of ready")
        self.ready_info = ready
        self.started_at = time.monotonic()
        self.start_seconds = self.started_at - t0
        self._reader = asyncio.create_task(self._read_results())

    async def _read_frame(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        head = await self.proc.stdout.readexactly(HEADER.size)
        (size,) = HEADER.unpack(head)
        if size > MAX_RESULT_FRAME:
            raise SandboxError(f"agent frame of {size} bytes")
        try:
            msg = json.loads(await self.proc.stdout.readexactly(size))
        except ValueError as e:
            raise SandboxError(f"agent sent bad JSON: {e}") from e
        if not isinstance(msg, dict):
            raise SandboxError("agent frame is not an object")
        return msg

    async def _log_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        logged = 0
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            if logged < 200:  # a broken sandbox must not flood the service log
                logged += 1
                log.warning("sandbox_stderr", sandbox=self.name, line=line.decode(errors="replace").rstrip()[:2000])

    async def _read_results(self) -> None:
        reason = "sandbox exited"
        try:
            while True:
                msg = await self._read_frame()
                op = msg.get("op")
                if op == "result":
                    fut = self.pending.pop(str(msg.get("id")), None)
                    if fut is not None and not fut.done():
                        try:
                            fut.set_result(JobResult.from_frame(msg))
                        except SandboxError as e:
                            fut.set_exception(e)
                elif op == "fault":
                    self.faulted = str(msg.get("message", "agent reported a fault"))
                    log.warning("sandbox_fault", sandbox=self.name, reason=self.faulted)
        except asyncio.IncompleteReadError:
            reason = "sandbox exited"
        except SandboxError as e:
            reason = str(e)
        except asyncio.CancelledError:
            reason = "sandbox closed"
            raise
        finally:
            self._mark_dead(reason)

    def _mark_dead(self, reason: str) -> None:
        if self.dead is None:
            self.dead = reason
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(SandboxError(f"{reason} during the run"))
        self.pending.clear()

    async def run(self, job: Job, hard_timeout: float) -> JobResult:
        """Run one job; SandboxError if the sandbox fails, TimeoutError past `hard_timeout`."""
        if self.dead is not None or self.proc is None or self.proc.stdin is None:
            raise SandboxError(f"sandbox {self.name} is not running ({self.dead})")
        fut: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        self.pending[job.run_id] = fut
        body = json.dumps(job.frame(), separators=(",", ":")).encode()
        try:
            async with self._write_lock:
                self.proc.stdin.write(HEADER.pack(len(body)) + body)
                await self.proc.stdin.drain()
        except (ConnectionError, RuntimeError) as e:
            self.pending.pop(job.run_id, None)
            raise SandboxError(f"could not send the run to sandbox {self.name}: {e}") from e
        try:
            result = await asyncio.wait_for(asyncio.shield(fut), hard_timeout)
        except asyncio.CancelledError:
            # The caller is gone (deadline, cancel): the run must really stop before its slot is
            # given back, so the agent kills it and this waits (shielded) for its final result.
            await self._cancel(job.run_id, fut)
            raise
        finally:
            self.pending.pop(job.run_id, None)
        await self.backend.after_run(self)
        return result

    async def _cancel(self, run_id: str, fut: asyncio.Future[JobResult]) -> None:
        """Ask the agent to kill run `run_id` and wait until it reports it ended (or the sandbox dies)."""
        body = json.dumps({"op": "cancel", "id": run_id}).encode()

        async def stop() -> None:
            try:
                async with self._write_lock:
                    if self.proc is not None and self.proc.stdin is not None:
                        self.proc.stdin.write(HEADER.pack(len(body)) + body)
                        await self.proc.stdin.drain()
                await asyncio.wait_for(asyncio.shield(fut), CANCEL_GRACE_SECONDS)
            except (TimeoutError, ConnectionError, RuntimeError, SandboxError):
                why = f"run {run_id} did not stop within {CANCEL_GRACE_SECONDS:g} s of a cancel"
                self.faulted = self.faulted or why
                log.warning("cancel_not_confirmed", sandbox=self.name, run_id=run_id)

        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(asyncio.ensure_future(stop()))

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def close(self) -> None:
        """Kill the sandbox process and remove its state; safe to call twice."""
        self._mark_dead(self.dead or "sandbox closed")
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 10)
        for task in (self._reader, self._stderr):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.to_thread(self.backend.destroy, self.name)
