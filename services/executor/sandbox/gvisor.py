"""gVisor backend: each sandbox is an OCI bundle run by `runsc run` (never `runsc do`).

The bundle's root is a skeleton directory (mount points and merged-/usr symlinks, nothing else),
read-only; the interpreter, the math packages and the agent are read-only binds; /tmp is a
tmpfs. No network (`--network=none`), no capabilities for run processes (the agent keeps only
what it needs to drop to uid 65534 and to kill and clean up after runs), noNewPrivileges, rlimits.
Wall-clock limits are enforced from outside the run (the agent) and from outside the sandbox
(the host pool kills the container).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from torl.common.logging import get_logger
from torl.executor.config import SandboxSettings
from torl.executor.sandbox.base import Backend, Layout, SandboxError, is_leftover

log = get_logger("torl.executor.sandbox.gvisor")

# The agent runs as root inside the sandbox only to drop each run to uid 65534, to give each run
# its own IPC namespace (CAP_SYS_ADMIN, for unshare) and to kill and clean up after it; run
# processes end up with no capabilities at all.
AGENT_CAPABILITIES = ["CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_SYS_ADMIN"]
CFS_PERIOD_US = 100_000
LIMITS_WARNING = (
    "gVisor sandboxes run WITHOUT their memory and CPU limits (sandbox.memory_mb, sandbox.cpus): runsc could "
    "not apply cgroup limits here; a sandbox is bounded only by RLIMIT_AS per run times its process limit"
)
MERGED_USR_LINKS = {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin": "usr/sbin"}


def make_rootfs(root: Path, layout: Layout) -> None:
    """An empty skeleton: symlinks into /usr and a mount point for every bind."""
    root.mkdir(parents=True, exist_ok=True)
    for d in ("tmp", "proc", "dev", "etc"):
        (root / d).mkdir(exist_ok=True)
    for name, target in MERGED_USR_LINKS.items():
        link = root / name
        if not link.is_symlink() and not link.exists():
            link.symlink_to(target)
    for host, dest in layout.binds:
        point = root / dest.lstrip("/")
        if os.path.isdir(host):
            point.mkdir(parents=True, exist_ok=True)
        else:
            point.parent.mkdir(parents=True, exist_ok=True)
            point.touch(exist_ok=True)


def oci_spec(
    root: Path, layout: Layout, args: list[str], settings: SandboxSettings, limits: bool = True
) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", f"size={settings.tmpfs_mb}m"],
        },
    ]
    for host, dest in layout.binds:
        mounts.append({"destination": dest, "type": "bind", "source": host, "options": ["rbind", "ro"]})
    rlimits = [
        {"type": "RLIMIT_NPROC", "hard": settings.max_processes, "soft": settings.max_processes},
        {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096},
        {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
    ]
    linux: dict[str, Any] = {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]}
    if limits:
        # The sandbox's cgroup (runsc names it after the container): memory and CPU of the whole
        # sandbox, whatever the runs in it do (RLIMIT_AS alone bounds one process only).
        linux["resources"] = {
            "memory": {"limit": settings.memory_mb * 1024 * 1024},
            "cpu": {"quota": int(settings.cpus * CFS_PERIOD_US), "period": CFS_PERIOD_US},
        }
    return {
        "ociVersion": "1.0.0",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": [f"{k}={v}" for k, v in layout.env.items()],
            "cwd": "/tmp",
            "capabilities": {
                "bounding": AGENT_CAPABILITIES,
                "effective": AGENT_CAPABILITIES,
                "permitted": AGENT_CAPABILITIES,
            },
            "rlimits": rlimits,
            "noNewPrivileges": True,
        },
        "root": {"path": str(root), "readonly": True},
        "hostname": "sandbox",
        "mounts": mounts,
        "linux": linux,
    }


class GVisorBackend(Backend):
    name = "gvisor"
    weak_isolation = False

    def __init__(self, settings: SandboxSettings, layout: Layout) -> None:
        self.settings = settings
        self.layout = layout
        self.state = Path(settings.state_dir)
        self.runsc_root = self.state / "runsc"
        self.bundles = self.state / "bundles"
        self.rootfs = self.state / "rootfs"
        self.runsc = shutil.which(settings.runsc_path) or settings.runsc_path
        self.limits_enforced = True  # sandbox.memory_mb / sandbox.cpus (False: runsc could not apply them here)

    def _runsc(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.runsc, "--root", str(self.runsc_root), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _global_flags(self) -> list[str]:
        return [f"--platform={self.settings.runsc_platform}", "--network=none"]

    def health_warnings(self) -> list[str]:
        return [] if self.limits_enforced else [LIMITS_WARNING]

    def check(self) -> None:
        """Start one real container from a bundle and expect it to answer; with the sandbox's memory
        and CPU limits when runsc can apply them here, else without (loudly: /healthz warns)."""
        if shutil.which(self.runsc) is None:
            raise SandboxError(f"runsc not found ({self.settings.runsc_path})")
        if os.geteuid() != 0:
            raise SandboxError("the gVisor backend needs root to run OCI bundles")
        self.prepare()
        try:
            self._check_container(limits=True)
        except SandboxError as e:
            self._check_container(limits=False)
            self.limits_enforced = False
            log.error("sandbox_limits_not_enforced", reason=str(e), warning=LIMITS_WARNING)

    def _check_container(self, limits: bool) -> None:
        name = f"{self.settings.name_prefix}-check-{os.getpid()}"
        bundle = self.bundles / name
        bundle.mkdir(parents=True, exist_ok=True)
        code = [self.layout.python, "-I", "-c", "print('ok')"]
        spec = oci_spec(self.rootfs, self.layout, code, self.settings, limits=limits)
        (bundle / "config.json").write_text(json.dumps(spec))
        cmd = [self.runsc, "--root", str(self.runsc_root), *self._global_flags(), "run", "--bundle", str(bundle)]
        try:
            proc = subprocess.run(
                [*cmd, name],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SandboxError("runsc check container did not finish in 60 s") from None
        finally:
            self.destroy(name)
        if proc.returncode != 0 or proc.stdout.strip() != "ok":
            raise SandboxError(f"runsc check failed (rc={proc.returncode}): {proc.stderr.strip()[-500:]}")

    def prepare(self) -> None:
        self.runsc_root.mkdir(parents=True, exist_ok=True)
        self.bundles.mkdir(parents=True, exist_ok=True)
        listed = self._runsc("list", "-quiet")
        for name in listed.stdout.split():
            if is_leftover(name, self.settings.name_prefix):
                log.warning("removing_leftover_sandbox", sandbox=name)
                self.destroy(name)
        for stale in self.bundles.iterdir():
            if is_leftover(stale.name, self.settings.name_prefix):
                shutil.rmtree(stale, ignore_errors=True)
        make_rootfs(self.rootfs, self.layout)

    def launch_command(self, name: str, agent_args: list[str]) -> list[str]:
        bundle = self.bundles / name
        bundle.mkdir(parents=True, exist_ok=True)
        spec = oci_spec(self.rootfs, self.layout, agent_args, self.settings, limits=self.limits_enforced)
        (bundle / "config.json").write_text(json.dumps(spec))
        return [self.runsc, "--root", str(self.runsc_root), *self._global_flags(), "run", "--bundle", str(bundle), name]

    def destroy(self, name: str) -> None:
        try:
            self._runsc("kill", name, "KILL", timeout=15)
            self._runsc("delete", "-force", name, timeout=30)
        except subprocess.TimeoutExpired:
            log.error("runsc_cleanup_timeout", sandbox=name)
        shutil.rmtree(self.bundles / name, ignore_errors=True)
