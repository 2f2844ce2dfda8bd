"""The one place that picks a sandbox backend from the settings (`sandbox.backend`)."""

from __future__ import annotations

import os
import shutil

from torl.common.logging import get_logger
from torl.executor.config import SandboxSettings
from torl.executor.sandbox.base import Backend, SandboxError, build_layout
from torl.executor.sandbox.bwrap import BwrapBackend
from torl.executor.sandbox.gvisor import GVisorBackend
from torl.executor.sandbox.process import ProcessBackend, gvisor_markers, process_layout

log = get_logger("torl.executor.sandbox.factory")


def make_backend(settings: SandboxSettings) -> Backend:
    """The configured backend. `auto`: gVisor when runsc works, else bubblewrap when it works (loudly),
    else the process backend only when this service itself runs inside gVisor; never unsandboxed."""
    sb = settings
    backend: Backend
    if sb.backend == "process":
        backend = ProcessBackend(sb, process_layout(sb))
        backend.check()
        return backend
    layout = build_layout(sb)
    if sb.backend == "gvisor":
        backend = GVisorBackend(sb, layout)
        backend.check()
        return backend
    if sb.backend == "bwrap":
        backend = BwrapBackend(sb, layout)
        backend.check()
        return backend
    reasons: list[str] = []
    if shutil.which(sb.runsc_path) is None or os.geteuid() != 0:
        reasons.append("gvisor: needs runsc on PATH and root")
    else:
        try:
            backend = GVisorBackend(sb, layout)
            backend.check()
            return backend
        except SandboxError as e:
            log.warning("gvisor_unavailable", reason=str(e))
            reasons.append(f"gvisor: {e}")
    try:
        backend = BwrapBackend(sb, layout)
        backend.check()
        return backend
    except SandboxError as e:
        log.warning("bwrap_unavailable", reason=str(e))
        reasons.append(f"bwrap: {e}")
    markers = gvisor_markers()
    if not markers:
        raise SandboxError(
            "no sandbox backend works here (" + "; ".join(reasons) + "), and this service does not run inside "
            "gVisor, so backend=auto will not run untrusted code as plain processes"
        )
    log.info("auto_backend_process", reason="this service runs inside gVisor", markers=markers)
    backend = ProcessBackend(sb, process_layout(sb))
    backend.check()
    return backend
