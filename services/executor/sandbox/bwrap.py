"""bubblewrap backend: the same sandbox shape as gVisor, for machines where runsc does not work.

WEAKER ISOLATION: code runs on the host kernel (namespaces only, no gVisor kernel in between),
so a kernel bug is a host compromise. Every start logs a warning and /healthz reports it.
The jail has new user/pid/net/ipc/uts/cgroup namespaces, uid 65534, no capabilities, read-only
binds of only the interpreter, the math packages and the agent, a private /proc, a minimal /dev
and a tmpfs /tmp; `prlimit` sets the process and file limits.

The process limit: Linux ignores RLIMIT_NPROC for processes whose real uid is host root, and a
sandbox that root starts maps its uid to host root. So when the service runs as root, each
sandbox is started as its own unprivileged host uid (`sandbox.bwrap_uid_base` + n) through
bwrap_launch.py. Where that cannot work (unprivileged user namespaces disabled), the backend falls
back to root-started sandboxes, says so loudly, and /healthz reports `process_limit_enforced:
false`: a fork bomb is then bounded only by the run's timeout and the host's pid limit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from torl.common.logging import get_logger
from torl.executor.config import SandboxSettings
from torl.executor.sandbox.base import Backend, Layout, SandboxError
from torl.executor.sandbox.bwrap_launch import staged_path

log = get_logger("torl.executor.sandbox.bwrap")

WEAK_WARNING = (
    "bubblewrap backend: isolation is WEAKER than gVisor (untrusted code talks to the host kernel); "
    "use it only where runsc cannot run"
)
NPROC_WARNING = (
    "bubblewrap backend started as root without a separate host uid: RLIMIT_NPROC is not enforced, "
    "so a fork bomb is bounded only by the run timeout and the host pid limit"
)
MERGED_USR_LINKS = {"/bin": "usr/bin", "/lib": "usr/lib", "/lib64": "usr/lib64", "/sbin": "usr/sbin"}
LAUNCHER = Path(__file__).with_name("bwrap_launch.py")
UID_RANGE = 4096  # host uids base .. base+4095, one per live sandbox


class BwrapBackend(Backend):
    name = "bwrap"
    weak_isolation = True

    def __init__(self, settings: SandboxSettings, layout: Layout) -> None:
        self.settings = settings
        self.layout = layout
        self.bwrap = shutil.which(settings.bwrap_path) or settings.bwrap_path
        self.prlimit = shutil.which("prlimit")
        self.as_root = os.geteuid() == 0
        # Root-started sandboxes switch to their own host uid unless that turned out not to work.
        self.separate_uids = self.as_root
        self.process_limit_enforced = True
        self._uids: dict[str, int] = {}
        self._lock = threading.Lock()

    def check(self) -> None:
        if shutil.which(self.bwrap) is None:
            raise SandboxError(f"bwrap not found ({self.settings.bwrap_path})")
        if self.separate_uids:
            try:
                self._check_once()
            except SandboxError as e:
                log.error("bwrap_separate_uid_failed", error=str(e), warning=NPROC_WARNING)
                self.separate_uids = False
        if not self.separate_uids:
            self._check_once()
        self.process_limit_enforced = self.separate_uids or not self.as_root
        log.warning("weak_isolation", backend="bwrap", warning=WEAK_WARNING)
        if not self.process_limit_enforced:
            log.warning("process_limit_not_enforced", backend="bwrap", warning=NPROC_WARNING)

    def _check_once(self) -> None:
        name = f"check-{os.getpid()}"
        cmd = self._command(name, [self.layout.python, "-I", "-c", "print('ok')"])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            raise SandboxError("bwrap check did not finish in 30 s") from None
        finally:
            self.destroy(name)
        if proc.returncode != 0 or proc.stdout.strip() != "ok":
            raise SandboxError(f"bwrap check failed (rc={proc.returncode}): {proc.stderr.strip()[-500:]}")

    def prepare(self) -> None:
        log.warning("weak_isolation", backend="bwrap", warning=WEAK_WARNING)

    def health_warnings(self) -> list[str]:
        return [WEAK_WARNING] + ([] if self.process_limit_enforced else [NPROC_WARNING])

    def _host_uid(self, name: str) -> int:
        with self._lock:
            if name not in self._uids:
                used = set(self._uids.values())
                free = next((i for i in range(UID_RANGE) if self.settings.bwrap_uid_base + i not in used), None)
                if free is None:
                    raise SandboxError(f"more than {UID_RANGE} bwrap sandboxes at once")
                self._uids[name] = self.settings.bwrap_uid_base + free
            return self._uids[name]

    def _command(self, name: str, args: list[str]) -> list[str]:
        binds = list(self.layout.binds)
        sources = [host for host, _ in binds]
        if self.separate_uids:  # the launcher stages every source where an unprivileged bwrap can reach it
            binds = [(staged_path(i), dest) for i, (_, dest) in enumerate(binds)]
        cmd = [
            self.bwrap,
            "--unshare-all",
            "--unshare-user",
            "--uid", "65534",
            "--gid", "65534",
            "--hostname", "sandbox",
            "--die-with-parent",
            "--new-session",
            "--cap-drop", "ALL",
            "--clearenv",
        ]
        for k, v in self.layout.env.items():
            cmd += ["--setenv", k, v]
        for host, dest in binds:
            cmd += ["--ro-bind", host, dest]
        for link, target in MERGED_USR_LINKS.items():
            cmd += ["--symlink", target, link]
        cmd += ["--proc", "/proc", "--dev", "/dev"]
        cmd += ["--perms", "1777", "--size", str(self.settings.tmpfs_mb * 1024 * 1024), "--tmpfs", "/tmp"]
        cmd += ["--chdir", "/tmp", "--", *args]
        if self.separate_uids:
            uid = self._host_uid(name)
            spec = {"uid": uid, "gid": uid, "sources": sources, "argv": cmd}
            cmd = [sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(spec)]
        if self.prlimit is not None:
            n = str(self.settings.max_processes)
            cmd = [self.prlimit, f"--nproc={n}:{n}", "--nofile=4096:4096", "--core=0:0", "--", *cmd]
        return cmd

    def launch_command(self, name: str, agent_args: list[str]) -> list[str]:
        return self._command(name, agent_args)

    def destroy(self, name: str) -> None:
        """Nothing outlives the bwrap process: --die-with-parent and the pid namespace end it all.
        The sandbox's host uid goes back to the free list."""
        with self._lock:
            self._uids.pop(name, None)
