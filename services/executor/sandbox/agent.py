"""The in-sandbox agent: a resident interpreter that runs untrusted code for the host pool.

This file is executed *inside* each sandbox (gVisor or bubblewrap) as a plain script, bound
read-only at /opt/torl/agent.py. It imports only the standard library (plus the pre-loaded math
modules) and never imports torl. It serves run requests from the host over its stdin/stdout as
length-prefixed JSON frames.

Processes inside the sandbox:
- The agent (the sandbox's first process) stays lean: it imports no math module and never forks
  on the request path. It hands runs to ready processes, enforces deadlines, collects output and
  cleans up.
- The zygote, forked once by the agent, imports the heavy modules (sympy, numpy) and forks
  "spares" when the agent asks; it passes each spare's pipes to the agent over a Unix socket and
  reports when one exits. A fork of an interpreter with sympy loaded takes tens of milliseconds
  under gVisor's ptrace platform; in the zygote it overlaps with runs instead of stalling the
  agent's loop.
- The agent keeps one spare per slot ready at all times, and once the sandbox has been idle a
  moment (STOCK_AFTER_IDLE_SECONDS) it has the zygote fork more, one at a time, up to a stock
  (`pool.spares_per_sandbox`): under gVisor's ptrace platform the fork of a sympy-loaded
  interpreter costs tens of ms of CPU, so a burst of runs should find its processes forked
  already, with no fork competing with the runs for the CPU.
- A spare drops to uid/gid 65534 (when root, as under gVisor) so untrusted code cannot signal or
  trace the agent or the zygote, starts its own session, and warms up (runs a tiny program into
  /dev/null) so the copy-on-write page faults of a typical run are taken before a request waits.
- Every run, `strict` or `session`, gets a fresh spare that runs that one program, reports its exit
  code and is killed (with its whole session) as soon as it has reported. No process that ran
  untrusted code ever runs a second program: nothing a run changes in its interpreter (frames,
  builtins, modules, signals, alarms, rlimits, environment, threads, children) can reach a later
  run, and a status line a run forges only ends that run early, as `os._exit` would.
- After every run the agent kills any process that does not belong to a live run (daemons,
  orphans), reaps zombies and removes every file under /tmp that no live run owns.
- Wall-clock limits are enforced here with SIGKILL to the run's session, and again by the host,
  which destroys the whole sandbox if the agent itself stops answering.

Process mode (the `process` backend, for runner pods that are themselves a gVisor sandbox): the
agent is a plain child process of the service, not the first process of a sandbox of its own. It
then owns a private root directory instead of /tmp (work dirs live under it; it alone is wiped),
becomes a child subreaper so every orphan of a run stays in its process tree (where the kernel
allows it; gVisor's does not, and there the service, the pod's init, kills orphans after each
run), kills and cleans only inside that tree, and makes itself, the zygote and the spares
non-dumpable (a run cannot ptrace them or read their /proc files, though it shares their uid).
Each spare also gets its own rlimits: RLIMIT_NPROC (the uid's current tasks plus `nproc_extra`),
RLIMIT_FSIZE, RLIMIT_NOFILE, no core dumps, and dies with the zygote (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import gc
import io
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import struct
import sys
import time
import traceback
import types
from collections import deque
from typing import Any, NoReturn

# What the agent owns and wipes after every run: the sandbox's private /tmp, or in process mode the
# private root directory the backend made for this sandbox (set by main()).
SCRATCH = "/tmp"
RUN_ROOT = "/tmp/runs"
RUN_ROOT_FD = -1  # a descriptor of RUN_ROOT opened while the agent could still read it (set by main())
# Process mode only (None otherwise): the rlimits every spare sets for itself.
PROCESS_LIMITS: dict[str, int] | None = None
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
# Process mode: whether orphans of runs come back to the agent (gVisor's kernel does not implement
# PR_SET_CHILD_SUBREAPER; there they go to the pod's init, the service, which kills them).
SUBREAPER = False
# What a spare runs (into /dev/null) before it is handed a job. The light warm-up always runs
# right after the fork; the deep one (typical first steps of math code) only when the agent asks,
# which it does once the sandbox has been idle a while, one spare at a time, so it never competes
# with back-to-back runs and a request never waits on it while a lightly warmed spare is free.
LIGHT_WARM_UP_CODE = "print(1)\n"
DEEP_WARM_UP_AFTER_IDLE_SECONDS = 0.2  # back-to-back runs never trigger it; sporadic ones find it done
# The stock of spares beyond the one per slot is forked only once no run has been in flight or
# waiting for this long, one spare at a time: a burst of runs takes ready spares without forks
# competing for the CPU, and the stock is rebuilt in the quiet time after it.
STOCK_AFTER_IDLE_SECONDS = 0.05
DEEP_WARM_UP_CODE = """\
try:
    import sympy
    x = sympy.Symbol("x")
    print(sympy.sqrt(8), sympy.Rational(1, 3) + 1, sympy.expand((x + 1) ** 2), sympy.factorint(360))
except ImportError:
    pass
"""
SANDBOX_UID = 65534
# After a run, how long the agent keeps killing what it left behind (a fork bomb: dozens of processes
# that must all exit and be reaped) before it gives up and the host replaces the sandbox.
SWEEP_SECONDS = 4.0  # below the host's hard_timeout_grace_seconds default (5 s)
SPARE_RETRY_SECONDS = 0.05  # after the zygote could not fork a spare (process limit reached)
CANCELLED_RESULT: dict[str, Any] = {
    "exit_code": -9, "timed_out": False, "duration": 0.0, "stdout": "", "stderr": "",
    "stdout_truncated": False, "stderr_truncated": False, "error": "cancelled by the caller",
}
MAX_FRAME = 256 * 1024 * 1024
HEADER = struct.Struct(">I")

# ---------------------------------------------------------------------------------------------
# Frames


def read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        b = os.read(fd, min(n, 1 << 20))
        if not b:
            raise EOFError("pipe closed")
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def read_frame(fd: int) -> dict[str, Any]:
    (size,) = HEADER.unpack(read_exact(fd, HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is too large")
    msg = json.loads(read_exact(fd, size))
    if not isinstance(msg, dict):
        raise ValueError("frame is not a JSON object")
    return msg


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_frame(fd: int, msg: dict[str, Any]) -> None:
    body = json.dumps(msg, separators=(",", ":")).encode()
    write_all(fd, HEADER.pack(len(body)) + body)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ---------------------------------------------------------------------------------------------
# Child side: what a spare does once it receives a job


class ChildContext:
    """State a spare keeps across jobs (only reused in session mode)."""

    def __init__(self, job_r: int, status_w: int, base_env: dict[str, str]) -> None:
        self.job_r = job_r
        self.status_w = status_w
        self.base_env = base_env
        self.mem_mb: int | None = None


CLONE_NEWIPC = 0x08000000


def runs_have_private_ipc() -> bool:
    """Whether every spare gets an IPC namespace of its own (the agent is root in a sandbox of its own)."""
    return os.getuid() == 0 and PROCESS_LIMITS is None


def _private_ipc() -> None:
    """Give this spare (and so its run) an IPC namespace of its own where the agent may (root in a
    gVisor sandbox): SysV shared memory, semaphores and queues a run makes die with it (a spare that
    cannot make one never runs anything). Elsewhere the agent removes them after each run
    (remove_sysv_ipc)."""
    if runs_have_private_ipc():
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWIPC) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWIPC): {os.strerror(err)}")


def _drop_privileges() -> None:
    if os.getuid() == 0:
        os.setgroups([])
        os.setgid(SANDBOX_UID)
        os.setuid(SANDBOX_UID)  # clears every capability of this process


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, *(ctypes.c_ulong(v) for v in (value, 0, 0, 0))) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def tasks_of_uid(uid: int) -> int:
    """Processes and threads whose real uid is `uid` (what Linux counts against RLIMIT_NPROC)."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                status = f.read()
        except OSError:
            continue
        real_uid = threads = None
        for line in status.splitlines():
            if line.startswith(b"Uid:"):
                real_uid = int(line.split()[1])
            elif line.startswith(b"Threads:"):
                threads = int(line.split()[1])
        if real_uid == uid:
            total += threads or 1
    return total


def _apply_process_limits(limits: dict[str, int]) -> None:
    """Process mode: the limits a sandbox would otherwise set for its whole process tree, per spare."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid switch, which clears it
    _prctl(PR_SET_DUMPABLE, 0)  # a run cannot ptrace or read /proc of another spare of its uid
    _deny_tracing()  # nor of a process that is not yet non-dumpable (a freshly started agent)
    # Linux counts every task of the uid against RLIMIT_NPROC (the service, other sandboxes), so the
    # limit is what the uid runs now plus what one run may add.
    nproc = tasks_of_uid(os.getuid()) + int(limits["nproc_extra"])
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    fsize = int(limits["fsize_bytes"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = int(limits["nofile"]) if hard == resource.RLIM_INFINITY else min(int(limits["nofile"]), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
# Syscalls that read or write another process of the same uid: (audit arch, [numbers]) per machine.
TRACING_SYSCALLS = {
    "x86_64": (0xC000003E, [101, 310, 311]),  # ptrace, process_vm_readv, process_vm_writev
    "aarch64": (0xC00000B7, [117, 270, 271]),
}


def _deny_tracing() -> None:
    """A seccomp filter on this process and all it forks: ptrace and process_vm_{read,write}v fail with
    EPERM (other architectures than the machine's own are killed: no syscall-table confusion)."""
    import platform

    arch, numbers = TRACING_SYSCALLS[platform.machine()]
    ld_arch, ld_nr, ret = 0x20 | 0x00 | 0x00, 0x20, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_RET|BPF_K
    jeq = 0x05 | 0x10  # BPF_JMP|BPF_JEQ|BPF_K
    allow, eperm, kill = 0x7FFF0000, 0x00050000 | 1, 0x80000000
    prog = [(ld_arch, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, kill), (ld_nr, 0, 0, 0)]
    for i, nr in enumerate(numbers):
        prog.append((jeq, len(numbers) - i, 0, nr))
    prog += [(ret, 0, 0, allow), (ret, 0, 0, eperm)]

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    filters = (Filter * len(prog))(*[Filter(*f) for f in prog])
    program = Prog(len(prog), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter: {os.strerror(err)}")


def _set_memory_limit(ctx: ChildContext, mem_mb: int) -> None:
    if ctx.mem_mb is None:
        limit = mem_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        ctx.mem_mb = mem_mb


def _install_stdin(data: bytes) -> None:
    fd = os.memfd_create("stdin")
    write_all(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    os.dup2(fd, 0)
    os.close(fd)


def _run_code(code: str) -> int:
    """Run `code` as `python3 -c` would and return its exit code."""
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = main
    sys.argv = ["-c"]
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="strict")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="strict")
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    exit_code = 0
    try:
        compiled = compile(code, "<string>", "exec")
        exec(compiled, main.__dict__)
    except SystemExit as e:
        if e.code is None:
            exit_code = 0
        elif isinstance(e.code, int):
            exit_code = e.code & 0xFF
        else:
            with contextlib.suppress(Exception):
                print(e.code, file=sys.stderr)
            exit_code = 1
    except BaseException as e:
        # Skip this function's own frame so the traceback reads like `python3 -c`.
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        with contextlib.suppress(Exception):
            traceback.print_exception(type(e), e, tb, file=sys.stderr)
        exit_code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return exit_code


def _prepare_run(base_env: dict[str, str], job: dict[str, Any]) -> str:
    work = os.path.join(RUN_ROOT, str(job["id"]))
    os.mkdir(work, 0o700)
    for rel, content in job.get("files") or []:
        path = os.path.normpath(os.path.join(work, rel))
        if not path.startswith(work + os.sep):
            raise ValueError(f"file path {rel!r} leaves the work dir")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(content))
    os.chdir(work)
    os.environ.clear()
    os.environ.update(base_env)
    os.environ["HOME"] = work
    os.environ["TMPDIR"] = work
    _install_stdin(base64.b64decode(job.get("stdin") or ""))
    return work


def _warm_up(base_env: dict[str, str], code: str) -> None:
    """Take the copy-on-write page faults of a typical run now, before a request waits on them
    (under gVisor's ptrace platform the first run in a fresh process paid tens of ms for them).

    Every spare runs exactly this, with stdout/stderr on /dev/null, so what it leaves behind is
    the same for every run. A failed warm-up only leaves a colder spare."""
    saved = [os.dup(1), os.dup(2)]
    null = os.open("/dev/null", os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    try:
        with contextlib.suppress(Exception):
            work = _prepare_run(base_env, {"id": f"warm-up-{os.getpid()}"})
            _run_code(code)
            os.chdir("/")
            shutil.rmtree(work, ignore_errors=True)
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def child_main(ctx: ChildContext) -> None:
    """Body of a spare: take warm-up requests until a job comes; run it, report, exit."""
    while True:
        try:
            job = read_frame(ctx.job_r)
        except (EOFError, ValueError, OSError):
            os._exit(0)
        if job.get("op") == "warm":
            _warm_up(ctx.base_env, DEEP_WARM_UP_CODE)
            try:
                write_all(ctx.status_w, b'{"warm": true}\n')
            except OSError:
                os._exit(1)
            continue
        _set_memory_limit(ctx, int(job["mem_mb"]))
        try:
            _prepare_run(ctx.base_env, job)  # the agent removes the work dir once this process is gone
        except Exception as e:
            os.write(2, f"sandbox: could not prepare the run: {e}\n".encode())
            os._exit(125)
        exit_code = _run_code(job["code"])
        # Report before exiting: the agent answers the host without waiting for this process's
        # teardown, then kills whatever is left of it. This process never runs another program.
        with contextlib.suppress(OSError):
            write_all(ctx.status_w, (json.dumps({"exit_code": exit_code}) + "\n").encode())
        os._exit(exit_code)


# ---------------------------------------------------------------------------------------------
# Zygote: forks spares off the agent's loop


def _spawn_spare(sock: socket.socket, base_env: dict[str, str]) -> None:
    """Fork one spare and pass its pipes (job in; stdout, stderr, status out) to the agent."""
    made: list[int] = []
    try:
        for _ in range(4):
            made += os.pipe()
        job_r, job_w, out_r, out_w, err_r, err_w, status_r, status_w = made
        pid = os.fork()
    except OSError as e:
        # Out of processes (a run's fork bomb fills the sandbox's process limit until the agent
        # has killed it) or descriptors: say so; the agent asks again shortly.
        for end in made:
            os.close(end)
        sock.send(json.dumps({"op": "spare_failed", "error": str(e)}).encode())
        return
    if pid == 0:
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            keep = {0, 1, 2, job_r, out_w, err_w, status_w}
            for fd_name in os.listdir("/proc/self/fd"):
                n = int(fd_name)
                if n not in keep:
                    with contextlib.suppress(OSError):
                        os.close(n)
            _private_ipc()
            _drop_privileges()
            os.setsid()
            if PROCESS_LIMITS is not None:
                _apply_process_limits(PROCESS_LIMITS)
            _warm_up(base_env, LIGHT_WARM_UP_CODE)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.close(out_w)
            os.close(err_w)
            child_main(ChildContext(job_r, status_w, base_env))
        finally:
            os._exit(126)
    for end in (job_r, out_w, err_w, status_w):
        os.close(end)
    try:
        socket.send_fds(sock, [json.dumps({"op": "spare", "pid": pid}).encode()], [job_w, out_r, err_r, status_r])
    finally:
        for end in (job_w, out_r, err_r, status_r):
            os.close(end)


def zygote_main(sock: socket.socket, preload: list[str], base_env: dict[str, str]) -> NoReturn:
    """Import the heavy modules once, then fork a spare per byte the agent sends; report exits."""
    for name in preload:
        __import__(name)
    gc.collect()
    gc.freeze()  # spares then share these objects' pages instead of copying them at the first gc
    sig_r, sig_w = os.pipe()
    os.set_blocking(sig_r, False)
    os.set_blocking(sig_w, False)
    signal.set_wakeup_fd(sig_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "agent")
    sel.register(sig_r, selectors.EVENT_READ, "signal")
    sock.send(json.dumps({"op": "ready"}).encode())
    while True:
        for key, _ in sel.select():
            if key.data == "agent":
                try:
                    wanted = sock.recv(4096)
                except InterruptedError:
                    continue
                if not wanted:
                    os._exit(0)  # the agent is gone
                for _ in range(wanted.count(b"f")):
                    _spawn_spare(sock, base_env)
            else:
                with contextlib.suppress(BlockingIOError):
                    while os.read(sig_r, 512):
                        pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            sock.send(json.dumps({"op": "exit", "pid": pid, "status": status}).encode())


# ---------------------------------------------------------------------------------------------
# Agent side


def descendants(root: int) -> list[int]:
    """Every process below `root` (by parent pid, from one pass over /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def remove_path(path: str) -> bool:
    """Remove a file, link or tree, whatever a run did to the modes inside it (never touching the
    mode of the directory that holds `path`); False when something stayed."""
    holder = os.path.dirname(path)

    def retry(func: Any, p: str, _exc: Any) -> None:  # a run may have made a directory unwritable
        with contextlib.suppress(OSError):
            if os.path.dirname(p) != holder:
                os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)

    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, onerror=retry)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return True
    except OSError:
        pass
    return not os.path.lexists(path)


IPC_RMID, SHM_STAT, SHM_INFO, SEM_STAT, SEM_INFO, MSG_STAT, MSG_INFO = 0, 13, 14, 18, 19, 11, 12
SHM_CPID_OFFSET = 80  # struct shmid_ds on 64-bit Linux: ipc_perm (48), segsz, atime, dtime, ctime, cpid


def remove_sysv_ipc(idle: bool) -> None:
    """Remove the SysV IPC objects runs left behind: shared memory whose creator is gone (always),
    semaphore sets and message queues (when no run is live: they do not name their creator)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(512)
    top = libc.shmctl(0, SHM_INFO, buf)
    for index in range(max(top, -1) + 1):
        shmid = libc.shmctl(index, SHM_STAT, buf)
        if shmid < 0:
            continue
        cpid = int.from_bytes(buf.raw[SHM_CPID_OFFSET : SHM_CPID_OFFSET + 4], "little")
        try:
            os.kill(cpid, 0)
        except ProcessLookupError:
            libc.shmctl(shmid, IPC_RMID, None)
        except OSError:
            pass
    if not idle:
        return
    for index in range(max(libc.semctl(0, 0, SEM_INFO, buf), -1) + 1):
        semid = libc.semctl(index, 0, SEM_STAT, buf)
        if semid >= 0:
            libc.semctl(semid, 0, IPC_RMID)
    for index in range(max(libc.msgctl(0, MSG_INFO, buf), -1) + 1):
        msqid = libc.msgctl(index, MSG_STAT, buf)
        if msqid >= 0:
            libc.msgctl(msqid, IPC_RMID, None)


class ZygoteLost(Exception):
    """The zygote died: this sandbox can make no more spares."""


class Proc:
    """A forked spare (idle, or running its one run) and the agent's ends of its pipes."""

    def __init__(self, pid: int, job_w: int, out_r: int, err_r: int, status_r: int) -> None:
        self.pid = pid
        self.job_w = job_w
        self.out_r = out_r
        self.err_r = err_r
        self.status_r = status_r
        self.status_buf = b""
        self.run: Run | None = None
        self.warm = "light"  # light -> warming (deep warm-up asked) -> deep
        self.exited = False
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for fd in (self.job_w, self.out_r, self.err_r, self.status_r):
            with contextlib.suppress(OSError):
                os.close(fd)


class Capture:
    """Bytes read from one output pipe: the first `cap` kept, then the last `tail_cap` of the rest;
    the bytes in between are counted, and searched for "Error" (ToRL's observation rule needs to
    know whether the whole output contains it)."""

    def __init__(self, cap: int, tail_cap: int) -> None:
        self.cap = cap
        self.tail_cap = tail_cap
        self.data = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.has_error = False
        self._last4 = b""

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if not self.has_error:
            self.has_error = b"Error" in chunk or b"Error" in self._last4 + chunk[:4]
            self._last4 = (self._last4 + chunk[-4:])[-4:]
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
            chunk = chunk[room:]
        if chunk and self.tail_cap > 0:
            self.tail += chunk[-self.tail_cap:]
            if len(self.tail) > self.tail_cap:
                del self.tail[: len(self.tail) - self.tail_cap]

    def fields(self, name: str) -> dict[str, Any]:
        return {
            name: b64(bytes(self.data)),
            f"{name}_truncated": self.total > len(self.data),
            f"{name}_tail": b64(bytes(self.tail)),
            f"{name}_omitted": self.total - len(self.data) - len(self.tail),
            f"{name}_has_error": self.has_error,
        }


class Run:
    def __init__(self, job: dict[str, Any], proc: Proc) -> None:
        self.id = str(job["id"])
        self.mode = str(job["mode"])
        self.proc = proc
        self.started = time.monotonic()
        self.deadline = self.started + float(job["timeout"])
        cap = int(job["max_output"])
        tail = int(job.get("tail", 0))
        self.out = Capture(cap, tail)
        self.err = Capture(cap, tail)
        self.timed_out = False
        self.exit_code: int | None = None
        self.error: str | None = None


class Agent:
    def __init__(
        self,
        ctrl_in: int,
        ctrl_out: int,
        spares: int,
        stock: int,
        base_env: dict[str, str],
        preload: list[str],
    ) -> None:
        self.ctrl_in = ctrl_in
        self.ctrl_out = ctrl_out
        self.target_spares = spares  # kept ready at all times (one per slot)
        self.stock = max(spares, stock)  # kept ready once the sandbox is idle
        self.private_ipc = runs_have_private_ipc()
        self.base_env = base_env
        self.sel = selectors.DefaultSelector()
        self.spares: list[Proc] = []
        self.procs: dict[int, Proc] = {}
        self.runs: dict[str, Run] = {}
        self.fd_owner: dict[int, tuple[Proc, str]] = {}
        self.finished: list[Run] = []
        self.waiting: deque[dict[str, Any]] = deque()  # runs that arrived while no spare was ready
        self.requested = 0  # spares asked of the zygote and not delivered yet
        self.spare_retry_at: float | None = None  # after the zygote failed to fork: when to ask again
        self.idle_since: float | None = None  # since when no run is in flight or waiting
        # The deep warm-up touches sympy to take the page faults of a preloaded copy. Without the
        # preload it would import sympy afresh in every warmed spare: seconds of CPU under ptrace,
        # spent while the host is busy elsewhere (the learner, in an RL step), for runs that may never need it.
        self.deep_warm_up = "sympy" in preload
        self.zygote_pid, self.zygote = self.start_zygote(preload)
        sig_r, sig_w = os.pipe()
        os.set_blocking(sig_w, False)
        os.set_blocking(sig_r, False)
        self.sig_r = sig_r
        signal.set_wakeup_fd(sig_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(sig_r, selectors.EVENT_READ, "signal")
        self.sel.register(ctrl_in, selectors.EVENT_READ, "ctrl")
        self.sel.register(self.zygote, selectors.EVENT_READ, "zygote")

    # -- processes ----------------------------------------------------------------------------

    def start_zygote(self, preload: list[str]) -> tuple[int, socket.socket]:
        """Fork the zygote (cheap: the agent is lean) and wait until it has imported `preload`."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            try:
                mine.close()
                for fd in (self.ctrl_in, self.ctrl_out):
                    os.close(fd)
                zygote_main(theirs, preload, self.base_env)
            finally:
                os._exit(127)
        theirs.close()
        if json.loads(mine.recv(4096) or b"{}").get("op") != "ready":
            raise ZygoteLost("the zygote did not start")
        mine.setblocking(False)
        return pid, mine

    def refill_spares(self) -> None:
        """Ask the zygote for the spares that are missing; never blocks. Runs that wait and the one
        spare per slot are asked for at once; the stock beyond that one at a time, once idle."""
        if self.spare_retry_at is not None and time.monotonic() < self.spare_retry_at:
            return  # the zygote could not fork a moment ago; ask again at spare_retry_at
        self.spare_retry_at = None
        missing = self.target_spares + len(self.waiting) - len(self.spares) - self.requested
        if missing <= 0:
            stock_at = self.stock_at()
            missing = int(stock_at is not None and time.monotonic() >= stock_at)
        if missing > 0:
            self.zygote.send(b"f" * missing)
            self.requested += missing

    def stock_at(self) -> float | None:
        """When to fork the next spare of the stock (None: not idle, a fork already asked for, or the
        stock full)."""
        if self.idle_since is None or self.requested or len(self.spares) >= self.stock:
            return None
        return self.idle_since + STOCK_AFTER_IDLE_SECONDS

    def on_zygote(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.zygote, 4096, 4)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                raise ZygoteLost("the zygote exited")
            msg = json.loads(data)
            if msg["op"] == "spare" and len(fds) == 4:
                self.requested -= 1
                self.spare_retry_at = None
                self.adopt(int(msg["pid"]), fds)
            elif msg["op"] == "spare_failed":
                self.requested -= 1
                self.spare_retry_at = time.monotonic() + SPARE_RETRY_SECONDS
            elif msg["op"] == "exit":
                self.on_child_exit(int(msg["pid"]), int(msg["status"]))
            else:
                for fd in fds:
                    os.close(fd)

    def adopt(self, pid: int, fds: list[int]) -> None:
        job_w, out_r, err_r, status_r = fds
        for end in (out_r, err_r, status_r):
            os.set_blocking(end, False)
        proc = Proc(pid, job_w, out_r, err_r, status_r)
        self.procs[pid] = proc
        for end, kind in ((out_r, "out"), (err_r, "err"), (status_r, "status")):
            self.sel.register(end, selectors.EVENT_READ, "proc")
            self.fd_owner[end] = (proc, kind)
        self.spares.append(proc)
        while self.waiting and self.spares:
            self.start_run(self.waiting.popleft())

    def discard(self, proc: Proc) -> None:
        """Kill a spare and its whole session, forget it (idempotent)."""
        if proc.closed:
            return
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGKILL)
        for fd in (proc.out_r, proc.err_r, proc.status_r):
            if fd in self.fd_owner:
                self.sel.unregister(fd)
                del self.fd_owner[fd]
        proc.close()
        if proc in self.spares:
            self.spares.remove(proc)

    # -- runs -----------------------------------------------------------------------------------

    def start_run(self, job: dict[str, Any]) -> None:
        if not self.spares:
            self.waiting.append(job)
            self.refill_spares()
            return
        # A deep-warmed spare first, then one that is not busy warming up, then any.
        proc = min(self.spares, key=lambda p: ("deep", "light", "warming").index(p.warm))
        self.spares.remove(proc)
        run = Run(job, proc)
        proc.run = run
        self.runs[run.id] = run
        payload: dict[str, Any] = {k: job[k] for k in ("id", "mode", "code", "stdin", "files", "mem_mb") if k in job}
        try:
            write_frame(proc.job_w, payload)
        except OSError as e:
            run.error = f"could not hand the run to its process: {e}"
            self.finish(run)

    def drain(self, proc: Proc) -> None:
        for fd, kind in ((proc.out_r, "out"), (proc.err_r, "err")):
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except (BlockingIOError, OSError):
                    break
                if not chunk:
                    break
                if proc.run is not None:
                    (proc.run.out if kind == "out" else proc.run.err).add(chunk)

    def on_readable(self, fd: int) -> None:
        proc, kind = self.fd_owner[fd]
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.sel.unregister(fd)
            del self.fd_owner[fd]
            return
        if kind == "status":
            proc.status_buf += chunk
            if len(proc.status_buf) > 4096:
                self.fault_proc(proc, "worker sent an oversized status")
                return
            while b"\n" in proc.status_buf:
                line, _, proc.status_buf = proc.status_buf.partition(b"\n")
                if line == b'{"warm": true}':
                    proc.warm = "deep"
                elif proc.run is not None:
                    self.on_worker_status(proc, line)
                else:
                    self.fault_proc(proc, "status from a process with no run")
                    return
            return
        if proc.run is not None:
            (proc.run.out if kind == "out" else proc.run.err).add(chunk)

    def on_worker_status(self, proc: Proc, line: bytes) -> None:
        run = proc.run
        assert run is not None
        try:
            exit_code = int(json.loads(line)["exit_code"])
        except (ValueError, KeyError, TypeError):
            self.fault_proc(proc, "worker sent a malformed status")
            return
        self.drain(proc)
        run.exit_code = exit_code
        self.finish(run)

    def fault_proc(self, proc: Proc, why: str) -> None:
        if proc.run is not None:
            proc.run.exit_code = proc.run.exit_code if proc.run.exit_code is not None else 1
            self.finish(proc.run)
        else:
            self.discard(proc)

    def on_child_exit(self, pid: int, status: int) -> None:
        proc = self.procs.pop(pid, None)
        if proc is None:
            return  # an orphan of some run, reaped
        proc.exited = True
        run = proc.run
        if run is None:
            self.discard(proc)
            return
        self.drain(proc)
        if run.exit_code is None:
            if os.WIFEXITED(status):
                run.exit_code = os.WEXITSTATUS(status)
            else:
                run.exit_code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else 1
        self.finish(run)

    def finish(self, run: Run) -> None:
        """The run is over: its process (and its session) is killed, never reused."""
        proc = run.proc
        proc.run = None
        self.runs.pop(run.id, None)
        self.discard(proc)
        self.finished.append(run)

    def cancel(self, run_id: str) -> None:
        """The host's caller gave up on a run: kill it now (or drop it if it has not started), and report."""
        for job in list(self.waiting):
            if str(job["id"]) == run_id:
                self.waiting.remove(job)
                write_frame(self.ctrl_out, {"op": "result", "id": run_id, **CANCELLED_RESULT})
                return
        run = self.runs.get(run_id)
        if run is not None:
            run.error = "cancelled by the caller"
            self.drain(run.proc)
            self.finish(run)

    def check_deadlines(self) -> None:
        now = time.monotonic()
        for run in list(self.runs.values()):
            if now >= run.deadline:
                run.timed_out = True
                self.drain(run.proc)
                self.finish(run)

    def next_timeout(self) -> float | None:
        times = [r.deadline for r in self.runs.values()]
        if self.spare_retry_at is not None:
            times.append(self.spare_retry_at)
        warm_at = self.deep_warm_up_at()
        if warm_at is not None:
            times.append(warm_at)
        stock_at = self.stock_at()
        if stock_at is not None:
            times.append(stock_at)
        return max(0.0, min(times) - time.monotonic()) if times else None

    def deep_warm_up_at(self) -> float | None:
        """When to ask a spare for the deep warm-up (None: nothing to warm, or not idle). At most
        one spare per slot is deep-warmed: the rest of the stock stays lightly warmed (cheap)."""
        if not self.deep_warm_up or self.idle_since is None or any(p.warm == "warming" for p in self.spares):
            return None
        if sum(p.warm == "deep" for p in self.spares) >= self.target_spares:
            return None
        if not any(p.warm == "light" for p in self.spares):
            return None
        return self.idle_since + DEEP_WARM_UP_AFTER_IDLE_SECONDS

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.zygote_pid:
                raise ZygoteLost(f"the zygote exited with status {status}")
            self.on_child_exit(pid, status)  # orphans of runs end up here (the agent is PID 1)

    def _spare_in_flight(self, pid: int) -> bool:
        """A child of the zygote: a spare whose pipes are on their way to the agent (or one being reaped)."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            return int(stat[stat.rindex(b")") + 2 :].split()[1]) == self.zygote_pid
        except (OSError, ValueError, IndexError):
            return False

    def sweep(self) -> bool:
        """Kill every process that no live spare or run owns; remove unowned files in SCRATCH.
        In process mode only processes in the agent's own tree are candidates (the pod's others,
        the service included, are not the agent's to kill)."""
        me = os.getpid()
        keep_sids = {p.pid for p in self.procs.values() if p.run is not None}
        keep_pids = {p.pid for p in self.procs.values()} | {self.zygote_pid}
        clean = True
        give_up_at = time.monotonic() + SWEEP_SECONDS
        pause = 0.001
        while True:
            strays = []
            if PROCESS_LIMITS is not None:
                candidates = descendants(me)
            else:
                candidates = [int(n) for n in os.listdir("/proc") if n.isdigit()]
            for pid in candidates:
                if pid in (1, me) or pid in keep_pids:
                    continue
                try:
                    if os.getsid(pid) in keep_sids:
                        continue
                except OSError:
                    continue
                if not self._spare_in_flight(pid):
                    strays.append(pid)
            if not strays:
                break
            if time.monotonic() >= give_up_at:
                clean = False
                break
            for pid in strays:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            # Killed processes stay in /proc (and count against the process limit) until they have
            # exited and been reaped, which under load takes far longer than the kill itself.
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
            self.reap()
        live = {r.id for r in self.runs.values()} | {f"warm-up-{pid}" for pid in self.procs}  # a spare warming up
        for name in os.listdir(SCRATCH):
            path = os.path.join(SCRATCH, name)
            if name == "runs" and path == RUN_ROOT:
                for entry in os.listdir(RUN_ROOT_FD):
                    if entry not in live:
                        clean &= remove_path(os.path.join(path, entry))
                continue
            clean &= remove_path(path)
        if PROCESS_LIMITS is None:  # a sandbox of its own: its /dev/shm and SysV IPC are the runs'
            with contextlib.suppress(OSError):
                for name in os.listdir("/dev/shm"):
                    clean &= remove_path(os.path.join("/dev/shm", name))
            if not self.private_ipc:  # else a run's SysV objects died with its own IPC namespace
                remove_sysv_ipc(idle=not self.runs)
        return clean

    def report(self, run: Run) -> None:
        msg = {
            "op": "result",
            "id": run.id,
            "exit_code": run.exit_code if run.exit_code is not None else -9,
            "timed_out": run.timed_out,
            "duration": time.monotonic() - run.started,
            **run.out.fields("stdout"),
            **run.err.fields("stderr"),
            "error": run.error,
        }
        write_frame(self.ctrl_out, msg)

    def serve(self) -> None:
        try:
            self.refill_spares()
            while len(self.spares) < self.target_spares:
                self.sel.select(1.0)
                self.on_zygote()
                self.refill_spares()
            write_frame(self.ctrl_out, {"op": "ready", "pid": os.getpid(), "subreaper": SUBREAPER})
            self.idle_since = time.monotonic()
            self.loop()
        except ZygoteLost as e:
            write_frame(self.ctrl_out, {"op": "fault", "message": str(e)})

    def loop(self) -> None:
        while True:
            for key, _ in self.sel.select(self.next_timeout()):
                if key.data == "signal":
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self.sig_r, 512):
                            pass
                    self.reap()
                elif key.data == "ctrl":
                    try:
                        msg = read_frame(self.ctrl_in)
                    except EOFError:
                        return
                    if msg.get("op") == "run":
                        self.start_run(msg)
                    elif msg.get("op") == "cancel":
                        self.cancel(str(msg.get("id")))
                    elif msg.get("op") == "ping":
                        write_frame(self.ctrl_out, {"op": "pong"})
                elif key.data == "zygote":
                    self.on_zygote()
                elif key.fd in self.fd_owner:
                    self.on_readable(key.fd)
            self.reap()
            self.check_deadlines()
            if self.finished:
                done, self.finished = self.finished, []
                clean = self.sweep()
                for run in done:
                    self.report(run)
                if not clean:
                    message = "could not kill or remove what a run left behind (processes or files)"
                    write_frame(self.ctrl_out, {"op": "fault", "message": message})
            self.refill_spares()
            if self.runs or self.waiting:
                self.idle_since = None
            elif self.idle_since is None:
                self.idle_since = time.monotonic()
            warm_at = self.deep_warm_up_at()
            if warm_at is not None and time.monotonic() >= warm_at:
                self.warm_one_spare()

    def warm_one_spare(self) -> None:
        """The sandbox has been idle: have one spare take the page faults of typical math code now."""
        for proc in self.spares:
            if proc.warm == "light":
                try:
                    write_frame(proc.job_w, {"op": "warm"})
                except OSError:
                    continue
                proc.warm = "warming"
                return


def _enter_process_mode(root: str, limits: dict[str, Any]) -> None:
    """The agent is a plain child of the service: own a private root, keep orphans in this tree,
    be untraceable by runs of the same uid, and die with the service."""
    global SCRATCH, RUN_ROOT, PROCESS_LIMITS, SUBREAPER
    SCRATCH = root
    RUN_ROOT = os.path.join(root, "runs")
    PROCESS_LIMITS = {k: int(limits[k]) for k in ("nproc_extra", "fsize_bytes", "nofile")}
    try:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        SUBREAPER = True
    except OSError:
        SUBREAPER = False
    _prctl(PR_SET_DUMPABLE, 0)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.chdir(root)


def main() -> None:
    # First: no process of the sandbox's uid (a run, under bwrap or the process backend) may ptrace
    # the agent or open its /proc files (its control pipe to the host among them). The zygote and
    # the spares are forked from here and inherit it.
    _prctl(PR_SET_DUMPABLE, 0)
    args = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    if args.get("process") is not None:
        _enter_process_mode(str(args["root"]), dict(args["process"]))
    for path in args.get("site", []):
        sys.path.insert(0, path)
    base_env = dict(args.get("env", {}))
    os.environ.clear()
    os.environ.update(base_env)
    # The protocol uses private copies of fds 0/1; the originals point nowhere useful.
    ctrl_in = os.dup(0)
    ctrl_out = os.dup(1)
    null = os.open("/dev/null", os.O_RDWR) if os.path.exists("/dev/null") else os.open("/", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.makedirs(RUN_ROOT, exist_ok=True)
    # Runs drop to uid 65534 when the agent is root; otherwise they share the agent's uid. Either way
    # a run may create its own work dir here (named by its unguessable run id) but not list the
    # others'; the agent lists it through a descriptor opened before the read bit goes.
    global RUN_ROOT_FD
    os.chmod(RUN_ROOT, 0o700)
    RUN_ROOT_FD = os.open(RUN_ROOT, os.O_RDONLY | os.O_DIRECTORY)
    os.chmod(RUN_ROOT, 0o1733 if os.getuid() == 0 else 0o300)
    Agent(
        ctrl_in,
        ctrl_out,
        int(args.get("spares", 2)),
        int(args.get("stock", 0)),
        base_env,
        [str(m) for m in args.get("preload", [])],
    ).serve()


if __name__ == "__main__":
    main()
