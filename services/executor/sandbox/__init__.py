"""Sandboxes: one interface (base.py: Backend, Sandbox, Job, JobResult), one module per backend
(gvisor.py, bwrap.py + bwrap_launch.py, process.py), the in-sandbox agent (agent.py, run inside
each sandbox as a plain script) and the factory that picks a backend (factory.py)."""

from torl.executor.sandbox.base import Backend, Job, JobResult, Layout, Sandbox, SandboxError, build_layout
from torl.executor.sandbox.factory import make_backend

__all__ = ["Backend", "Job", "JobResult", "Layout", "Sandbox", "SandboxError", "build_layout", "make_backend"]
