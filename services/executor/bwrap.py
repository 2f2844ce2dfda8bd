"""bubblewrap backend: the same sandbox shape as gVisor, for machines where runsc does not work.

WEAKER ISOLATION: code runs on the host kernel (namespaces only, no gVisor kernel in between),
so a kernel bug is a host compromise. Every start logs a warning and /healthz reports it.
The jail has new user/pid/net/ipc/uts/cgroup namespaces, uid 65534, no capabilities, read-only
binds of only the interpreter, the math packages and the agent, a private /proc, a minimal /dev
and a tmpfs /tmp; `prlimit` sets the process and file limits.
"""

from __future__ import annotations

import shutil
import subprocess

from torl.common.logging import get_logger
from torl.executor.config import SandboxSettings
from torl.executor.sandbox import Backend, Layout, SandboxError

log = get_logger("torl.executor.bwrap")

WEAK_WARNING = (
    "bubblewrap backend: isolation is WEAKER than gVisor (untrusted code talks to the host kernel); "
    "use it only where runsc cannot run"
)
MERGED_USR_LINKS = {"/bin": "usr/bin", "/lib": "usr/lib", "/lib64": "usr/lib64", "/sbin": "usr/sbin"}


class BwrapBackend(Backend):
    name = "bwrap"
    weak_isolation = True

    def __init__(self, settings: SandboxSettings, layout: Layout) -> None:
        self.settings = settings
        self.layout = layout
        self.bwrap = shutil.which(settings.bwrap_path) or settings.bwrap_path
        self.prlimit = shutil.which("prlimit")

    def check(self) -> None:
        if shutil.which(self.bwrap) is None:
            raise SandboxError(f"bwrap not found ({self.settings.bwrap_path})")
        cmd = self._command([self.layout.python, "-I", "-c", "print('ok')"])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            raise SandboxError("bwrap check did not finish in 30 s") from None
        if proc.returncode != 0 or proc.stdout.strip() != "ok":
            raise SandboxError(f"bwrap check failed (rc={proc.returncode}): {proc.stderr.strip()[-500:]}")
        log.warning("weak_isolation", backend="bwrap", warning=WEAK_WARNING)

    def prepare(self) -> None:
        log.warning("weak_isolation", backend="bwrap", warning=WEAK_WARNING)

    def _command(self, args: list[str]) -> list[str]:
        cmd: list[str] = []
        if self.prlimit is not None:
            n = str(self.settings.max_processes)
            cmd += [self.prlimit, f"--nproc={n}:{n}", "--nofile=4096:4096", "--core=0:0", "--"]
        cmd += [
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
        for host, dest in self.layout.binds:
            cmd += ["--ro-bind", host, dest]
        for link, target in MERGED_USR_LINKS.items():
            cmd += ["--symlink", target, link]
        cmd += ["--proc", "/proc", "--dev", "/dev"]
        cmd += ["--perms", "1777", "--size", str(self.settings.tmpfs_mb * 1024 * 1024), "--tmpfs", "/tmp"]
        cmd += ["--chdir", "/tmp", "--", *args]
        return cmd

    def launch_command(self, name: str, agent_args: list[str]) -> list[str]:
        return self._command(agent_args)

    def destroy(self, name: str) -> None:
        """Nothing outlives the bwrap process: --die-with-parent and the pid namespace end it all."""
