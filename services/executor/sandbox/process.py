"""Process backend: the agent runs as a plain child process of the service, with no sandbox of its own.

Why it exists: in Kubernetes the runner pods already run under gVisor (`runtimeClassName: gvisor`)
as uid 10001 without privileges, so the service can neither start runsc (no nested sandbox, no
root) nor drop runs to another uid. There the pod is the sandbox: untrusted code reaches gVisor's
kernel, never the node's. This backend runs the same agent (zygote, spares, strict/session, reset
between runs, deadlines, output caps) with:

- a scrubbed environment (only the layout's PATH/LANG/thread variables; nothing of the service's),
  no inherited file descriptors, and a private root directory per sandbox under
  `sandbox.state_dir`/process (work dir, HOME and TMPDIR of each run; wiped after every run);
- per-run-process rlimits set by the agent: RLIMIT_NPROC (what the uid runs now plus
  `sandbox.max_processes`), RLIMIT_AS (the run's memory limit), RLIMIT_FSIZE (`sandbox.tmpfs_mb`),
  RLIMIT_NOFILE, no core dumps; uid 65534 for runs only when the service is root;
- cleanup inside the agent's own process tree only (it is a child subreaper), and this service as
  a subreaper too (or the pod's init, PID 1), so whatever a dead agent left behind is killed and
  reaped here on destroy. gVisor's kernel does not implement PR_SET_CHILD_SUBREAPER: there a run's
  daemon (double fork) is reparented to the pod's init, this service, which therefore kills its
  orphans after every run before it answers (the agent says in its ready frame which case holds).

What it does NOT give (weaker than gvisor/bwrap even inside a gVisor pod): runs share the
service's uid, so a run can signal the service or other sandboxes' processes (a denial of service
of that pod) and read or write anything that uid can, including files written by absolute path
outside its work dir, which are not cleaned. Hence the guard: outside gVisor this backend runs
only with `sandbox.backend=process` AND `sandbox.allow_unsandboxed_process=true`, logs an
UNSANDBOXED error at start, and /healthz reports `unsandboxed: true`; `auto` picks it only when
this service itself runs inside gVisor (`gvisor_markers()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from torl.common.logging import get_logger
from torl.executor.config import SandboxSettings
from torl.executor.sandbox.agent import descendants
from torl.executor.sandbox.base import AGENT_FILE, Backend, Layout, Sandbox, SandboxError, build_layout, is_leftover

log = get_logger("torl.executor.sandbox.process")

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
# gVisor's kernel reports this fixed version string (no builder, no compiler, unlike any real build).
GVISOR_PROC_VERSION = "Linux version 4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016"
UNSANDBOXED_WARNING = (
    "process backend OUTSIDE gVisor: untrusted code runs UNSANDBOXED as plain processes on this host's kernel "
    "(allowed by sandbox.allow_unsandboxed_process=true; development only)"
)
SHARED_UID_WARNING = (
    "process backend: runs share the service's uid inside the pod's gVisor sandbox; between runs they are "
    "isolated only by process boundaries, rlimits and cleanup of their own directory"
)
ORPHANS_WARNING = (
    "process backend: this service is neither PID 1 nor a child subreaper, so processes a run detaches "
    "(double fork) outlive it; run the service as the container's first process"
)
NOFILE = 4096


def gvisor_markers(proc: Path = Path("/proc")) -> list[str]:
    """What shows that this process runs on gVisor's kernel (empty: a real Linux kernel).

    Markers, none of which an unprivileged process can fake on a real kernel (procfs is the kernel's):
    `/proc/sentry-meminfo` (gVisor's kernel is "the sentry"; present in every gVisor release we know of),
    `/proc/gvisor` (newer releases), and gVisor's fixed `/proc/version` string."""
    found = [str(proc / name) for name in ("sentry-meminfo", "gvisor") if (proc / name).exists()]
    with contextlib.suppress(OSError):
        if (proc / "version").read_text().strip() == GVISOR_PROC_VERSION:
            found.append(f"{proc / 'version'} is gVisor's")
    return found


def process_layout(settings: SandboxSettings) -> Layout:
    """The service's own interpreter (its packages are importable as they are for the service) and
    the standard sandbox environment, without PYTHONPATH: nothing is bound anywhere."""
    env = dict(build_layout(settings).env)
    env.pop("PYTHONPATH", None)
    python = settings.python or sys.executable
    return Layout(python=python, binds=(), env=env, agent_path=str(AGENT_FILE), site=())


class ProcessBackend(Backend):
    name = "process"
    weak_isolation = True  # runs share the service's uid (see the module docstring)

    def __init__(self, settings: SandboxSettings, layout: Layout) -> None:
        self.settings = settings
        self.layout = layout
        self.root = Path(settings.state_dir) / "process"
        self.markers = gvisor_markers()
        self.unsandboxed = not self.markers
        self.as_root = os.geteuid() == 0
        self._lock = threading.Lock()
        self._agents: dict[str, int] = {}  # live agents: sandbox name -> pid
        self._spawning = 0  # agents forked whose pid is not known yet
        self.orphans_come_here = os.getpid() == 1  # or prepare() makes this process a subreaper

    # -- checks ---------------------------------------------------------------------------------

    def check(self) -> None:
        if self.unsandboxed and not self.settings.allow_unsandboxed_process:
            raise SandboxError(
                "refusing the process backend outside gVisor (no /proc/sentry-meminfo, /proc/gvisor or gVisor "
                "/proc/version here): untrusted code would run unsandboxed on this host's kernel; use gvisor or "
                "bwrap, or set sandbox.backend=process and sandbox.allow_unsandboxed_process=true (development only)"
            )
        self._smoke_test()
        self.log_warnings()

    def _smoke_test(self) -> None:
        """The interpreter starts with the scrubbed environment and imports the preloaded modules, as the
        uid the runs will have (65534 when this service is root: the interpreter must be readable by it)."""
        code = "".join(f"import {m}\n" for m in self.settings.preload) + "print('ok')"
        uid = 65534 if self.as_root else None
        try:
            proc = subprocess.run(
                [self.layout.python, "-I", "-B", "-c", code],
                env=self.layout.env,
                cwd="/",
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                user=uid,
                group=uid,
                extra_groups=[] if uid is not None else None,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise SandboxError(f"process backend check could not start {self.layout.python}: {e}") from e
        if proc.returncode != 0 or proc.stdout.strip() != "ok":
            who = "uid 65534" if self.as_root else f"uid {os.getuid()}"
            raise SandboxError(
                f"process backend check failed as {who} (rc={proc.returncode}): {proc.stderr.strip()[-500:]}"
            )

    def log_warnings(self) -> None:
        if self.unsandboxed:
            log.error("unsandboxed_process_backend", backend=self.name, warning=UNSANDBOXED_WARNING)
        else:
            log.warning("process_backend_in_gvisor", markers=self.markers, warning=SHARED_UID_WARNING)

    def health_warnings(self) -> list[str]:
        warnings = [UNSANDBOXED_WARNING if self.unsandboxed else SHARED_UID_WARNING]
        return warnings + ([] if self.orphans_come_here else [ORPHANS_WARNING])

    # -- lifecycle ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Become a non-dumpable subreaper (orphans of dead agents come here to be killed), remove leftovers."""
        # Runs share this process's uid: non-dumpable, it cannot be ptraced by them and its /proc files
        # (environ, mem, ...) become unreadable to them.
        if _prctl(PR_SET_DUMPABLE, 0) != 0:
            raise SandboxError(f"prctl(PR_SET_DUMPABLE): {os.strerror(ctypes.get_errno())}")
        if _prctl(PR_SET_CHILD_SUBREAPER, 1) == 0:
            self.orphans_come_here = True
        elif not self.orphans_come_here:
            log.error("process_orphans_untracked", warning=ORPHANS_WARNING)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)
        for stale in self.root.iterdir():
            if is_leftover(stale.name, self.settings.name_prefix):
                log.warning("removing_leftover_sandbox", sandbox=stale.name)
                shutil.rmtree(stale, ignore_errors=True)

    def launch_command(self, name: str, agent_args: list[str]) -> list[str]:
        root = self.root / name
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        root.chmod(0o711 if self.as_root else 0o700)  # runs as 65534 must reach <root>/runs
        options = json.loads(agent_args[-1])
        options["root"] = str(root)
        options["process"] = {
            "nproc_extra": self.settings.max_processes,
            "fsize_bytes": self.settings.tmpfs_mb * 1024 * 1024,
            "nofile": NOFILE,
        }
        return [*agent_args[:-1], json.dumps(options)]

    def launch_env(self) -> dict[str, str]:
        return dict(self.layout.env)

    def spawning(self, name: str) -> None:
        with self._lock:
            self._spawning += 1

    def spawned(self, name: str, pid: int | None) -> None:
        with self._lock:
            self._spawning -= 1
            if pid is not None:
                self._agents[name] = pid

    async def after_run(self, sandbox: Sandbox) -> None:
        """Where the agent is no subreaper (gVisor), a run's detached processes are this process's
        orphans by now (the agent killed the rest of its tree before reporting): kill them first."""
        if not sandbox.ready_info.get("subreaper", True) and self.orphans_come_here:
            await asyncio.to_thread(self.kill_orphans, 2.0)

    def destroy(self, name: str) -> None:
        """The agent is dead by now (or about to be): kill and reap whatever it left behind, remove its root."""
        with self._lock:
            self._agents.pop(name, None)
        self.kill_orphans()
        shutil.rmtree(self.root / name, ignore_errors=True)

    def kill_orphans(self, timeout: float = 5.0) -> None:
        """Kill (with their trees) and reap this process's children that are no live agent: orphans of
        dead agents, which reparented here. Children in this process's own session (its ordinary
        subprocesses) are never touched; while an agent is being forked, nothing is (it could be it)."""
        me, my_sid = os.getpid(), os.getsid(0)
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                busy = self._spawning > 0
                live = set(self._agents.values())
                orphans: list[int] = []
                if not busy:
                    for pid in _children(me):
                        with contextlib.suppress(OSError):
                            if pid not in live and os.getsid(pid) != my_sid:
                                orphans.append(pid)
                    for pid in orphans:
                        for victim in [pid, *descendants(pid)]:
                            with contextlib.suppress(OSError):
                                os.kill(victim, signal.SIGKILL)
            for pid in orphans:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            if not busy and not orphans:
                return
            if time.monotonic() > deadline:
                log.error("process_orphans_left", count=len(orphans), spawning=busy)
                return
            time.sleep(0.01)


def _prctl(option: int, value: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(option, *(ctypes.c_ulong(v) for v in (value, 0, 0, 0))))


def _children(parent: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            if int(stat[stat.rindex(b")") + 2 :].split()[1]) == parent:
                found.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return found
