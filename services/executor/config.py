"""Configuration of the executor service (env prefix TORL_EXECUTOR_). Imports only pydantic."""

from __future__ import annotations

import os
from typing import ClassVar, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from torl.common.config import GrpcServerSettings, ServiceSettings, StrictModel, TlsClientSettings

Isolation = Literal["strict", "session"]
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
MAX_FILES_BOUND = 10_000  # the largest limits.max_files may be (also bounds the REST body's lists)
MAX_BATCH_BOUND = 100_000  # the largest limits.max_batch may be


def _default_pool_size() -> int:
    return max(1, os.cpu_count() or 1)


class RestSettings(StrictModel):
    """The REST gateway (FastAPI) for other teams."""

    enabled: bool = Field(True, description="Serve REST (also /healthz, /readyz, /metrics).")
    host: str = Field(
        "127.0.0.1",
        description="Bind address. Without an API keys file only loopback addresses are allowed.",
    )
    port: int = Field(8080, ge=0, le=65535, description="REST port; 0 picks a free one (printed at start).")
    api_keys_file: str | None = Field(
        None, description="YAML/JSON file of API keys (a mounted Kubernetes Secret works); reloaded on change."
    )
    max_body_bytes: int = Field(
        2 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024, description="Largest request body; larger gets 413."
    )
    default_isolation: Isolation = Field("strict", description="Isolation of REST runs when the key sets none.")


class SandboxSettings(StrictModel):
    """How sandboxes are made."""

    backend: Literal["auto", "gvisor", "bwrap", "process"] = Field(
        "auto",
        description="gvisor (runsc OCI bundles), bwrap (weaker), process (plain child processes: only inside a "
        "gVisor pod, or with allow_unsandboxed_process), or auto: gvisor when runsc works, else bwrap when it "
        "works, else process only when this service itself runs inside gVisor.",
    )
    allow_unsandboxed_process: bool = Field(
        False,
        description="With backend=process outside gVisor: run untrusted code as plain processes on this host's "
        "kernel anyway (development only; logged and reported by /healthz as UNSANDBOXED).",
    )
    runsc_path: str = Field("runsc", description="The runsc binary (name on PATH or absolute path).")
    runsc_platform: Literal["ptrace", "kvm", "systrap"] = Field(
        "ptrace", description="gVisor platform; ptrace is the one that works on plain VMs."
    )
    bwrap_path: str = Field("bwrap", description="The bubblewrap binary.")
    bwrap_uid_base: int = Field(
        910_000,
        ge=1000,
        le=2**31 - 8192,
        description="Service running as root: bwrap sandbox n runs as unused host uid/gid base+n (so "
        "RLIMIT_NPROC applies to it; Linux exempts host root).",
    )
    state_dir: str = Field(
        "/tmp/torl-executor",
        description="Private dir for runsc state, bundles and the rootfs skeleton; leftovers are cleaned at start.",
    )
    name_prefix: str = Field(
        "torl-exec",
        pattern=r"^[a-z0-9][a-z0-9-]{0,40}$",
        description="Prefix of sandbox container names; leftovers with it are removed at start.",
    )
    python: str | None = Field(
        None, description="Interpreter run inside the sandbox (default: the service's own interpreter)."
    )
    packages: list[str] = Field(
        default_factory=lambda: ["sympy", "mpmath", "numpy", "scipy"],
        description="Python packages made visible (read-only) inside the sandbox.",
    )
    preload: list[str] = Field(
        default_factory=lambda: ["sympy", "numpy"],
        description="Modules imported by the resident interpreter before any run.",
    )
    tmpfs_mb: int = Field(256, ge=16, le=65536, description="Size of the sandbox's /tmp (work dirs live there).")
    max_processes: int = Field(
        256,
        ge=16,
        le=65536,
        description="RLIMIT_NPROC inside the sandbox (backend=process: processes and threads a run may add to "
        "those its uid already has when its process is forked).",
    )
    memory_mb: int = Field(
        4096,
        ge=256,
        le=1_048_576,
        description="gVisor: memory of one sandbox, all its runs and gVisor's own kernel together (the "
        "sandbox's cgroup, from the OCI spec); past it the sandbox is killed and replaced. bwrap: not applied; "
        "process backend: the pod's resources.limits.",
    )
    cpus: float = Field(
        2.0,
        gt=0.0,
        le=1024.0,
        description="gVisor: CPU time of one sandbox, in cores (the cgroup's CFS quota per 100 ms period).",
    )
    start_timeout_seconds: float = Field(90.0, ge=1.0, le=900.0, description="Longest a sandbox may take to start.")

    @model_validator(mode="after")
    def _check_unsandboxed(self) -> SandboxSettings:
        if self.allow_unsandboxed_process and self.backend != "process":
            raise ValueError(
                f"sandbox.allow_unsandboxed_process=true needs sandbox.backend=process (got {self.backend!r}): "
                "backend=auto never runs untrusted code unsandboxed"
            )
        return self


class PoolSettings(StrictModel):
    """The pool of pre-started sandboxes."""

    size: int = Field(
        default_factory=_default_pool_size, ge=1, le=512, description="Sandboxes kept started (default: CPU cores)."
    )
    slots_per_sandbox: int = Field(2, ge=1, le=64, description="Runs one sandbox executes at the same time.")
    spares_per_sandbox: int = Field(
        2,
        ge=1,
        le=128,
        description="Fresh processes each sandbox keeps forked ahead of runs once it is idle (every run takes one "
        "and it dies with the run), so a burst of runs finds them ready; at least slots_per_sandbox are kept at "
        "all times. Each costs memory in the sandbox: ~35 MB with sympy and numpy preloaded under gVisor's "
        "ptrace platform, ~12 MB with no preload. The default keeps one per default slot: a larger stock next to a "
        "fork bomb took a sandbox past its memory limit in CI; raise it where runs come in bursts (the demo: 32, "
        "with no preload).",
    )
    recycle_after_runs: int = Field(
        5000, ge=1, le=10_000_000, description="A sandbox is replaced after this many runs (and after any fault)."
    )
    max_queue: int = Field(10_000, ge=1, le=1_000_000, description="Runs waiting for a slot; more are rejected.")
    queue_timeout_seconds: float = Field(
        120.0, ge=0.1, le=3600.0, description="Longest a run waits for a slot before it is rejected."
    )
    hard_timeout_grace_seconds: float = Field(
        5.0, ge=0.5, le=600.0, description="Past a run's timeout by this much, the host destroys the sandbox."
    )


class LimitsSettings(StrictModel):
    """Per-run limits and their defaults."""

    default_timeout_seconds: float = Field(10.0, gt=0.0, le=3600.0, description="Wall-clock limit when unset.")
    max_timeout_seconds: float = Field(60.0, gt=0.0, le=3600.0, description="Largest timeout a caller may ask.")
    default_memory_mb: int = Field(1024, ge=64, le=1_048_576, description="Address-space limit (MiB) when unset.")
    max_memory_mb: int = Field(4096, ge=64, le=1_048_576, description="Largest memory limit a caller may ask.")
    max_output_bytes: int = Field(
        64 * 1024, ge=1024, le=64 * 1024 * 1024, description="Cap of stdout and of stderr; beyond it truncated=true."
    )
    max_code_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="Largest program.")
    max_stdin_bytes: int = Field(1024 * 1024, ge=0, le=64 * 1024 * 1024, description="Largest stdin.")
    max_files: int = Field(32, ge=0, le=MAX_FILES_BOUND, description="Most input files per run.")
    max_files_bytes: int = Field(
        4 * 1024 * 1024, ge=0, le=256 * 1024 * 1024, description="Largest total size of input files."
    )
    max_batch: int = Field(4096, ge=1, le=MAX_BATCH_BOUND, description="Most runs in one batch request.")


class ExecutorSettings(ServiceSettings):
    """Settings of `torl executor serve`."""

    model_config = SettingsConfigDict(env_prefix="TORL_EXECUTOR_")
    service_name: ClassVar[str] = "executor"

    grpc: GrpcServerSettings = Field(
        default_factory=lambda: GrpcServerSettings(port=50051), description="gRPC server settings."
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Separate /metrics port; 0 = only on the REST server's /metrics."
    )
    role: Literal["all", "gateway", "runner"] = Field(
        "all",
        description="all: gateway and runner in one process; gateway: auth + fan-out to `runners`; "
        "runner: executes, gRPC only.",
    )
    runners: list[str] = Field(
        default_factory=list, description="gRPC targets (host:port) of runners, for role=gateway."
    )
    runners_tls: TlsClientSettings = Field(
        default_factory=lambda: TlsClientSettings(), description="TLS / mTLS of the gateway's calls to `runners`."
    )
    runner_token_file: str | None = Field(
        None,
        description="role=gateway: file holding the token this gateway presents to its runners (metadata "
        "x-torl-runner-token); required with role=gateway. Mount it only in the gateway, never on a runner.",
    )
    runner_token_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="role=runner: hex SHA-256 of the gateway's runner token; required with role=runner. A runner "
        "accepts only calls that present that token, and holds only its digest, so code running on the runner "
        "(same pod, same network namespace) can neither read the token nor impersonate the gateway.",
    )
    grpc_api_keys_required: bool = Field(
        False, description="Require an API key (metadata `authorization: Bearer K`) on gRPC too."
    )
    grpc_allow_anonymous: bool = Field(
        False,
        description="Serve anonymous gRPC callers on a non-loopback grpc.host (keys not required). Without it, "
        "such a bind needs grpc_api_keys_required=true; set it only where a NetworkPolicy fences the port.",
    )
    grpc_default_isolation: Isolation = Field("strict", description="Isolation of gRPC runs that set none.")
    rest: RestSettings = Field(default_factory=lambda: RestSettings(), description="REST gateway.")
    sandbox: SandboxSettings = Field(default_factory=lambda: SandboxSettings(), description="Sandbox backend.")
    pool: PoolSettings = Field(default_factory=lambda: PoolSettings(), description="Sandbox pool.")
    limits: LimitsSettings = Field(default_factory=lambda: LimitsSettings(), description="Per-run limits.")

    @model_validator(mode="after")
    def _check(self) -> ExecutorSettings:
        if self.rest.enabled and self.rest.api_keys_file is None and self.rest.host not in LOOPBACK_HOSTS:
            raise ValueError(
                f"rest.host={self.rest.host!r} needs rest.api_keys_file: without API keys the REST server "
                "binds to loopback only"
            )
        if self.sandbox.backend == "process" and self.role == "all" and self.rest.api_keys_file is not None:
            raise ValueError(
                "sandbox.backend=process runs untrusted code as this service's own uid, which can read "
                "rest.api_keys_file: run role=runner (no keys) behind a role=gateway instead"
            )
        if self.role == "gateway" and not self.runners:
            raise ValueError("role=gateway needs at least one entry in runners")
        if self.grpc_api_keys_required and self.rest.api_keys_file is None:
            raise ValueError(
                "grpc_api_keys_required=true needs rest.api_keys_file (the keys gRPC callers are checked "
                "against): without it every gRPC call would be anonymous"
            )
        if self.limits.default_timeout_seconds > self.limits.max_timeout_seconds:
            raise ValueError("limits.default_timeout_seconds exceeds limits.max_timeout_seconds")
        if self.limits.default_memory_mb > self.limits.max_memory_mb:
            raise ValueError("limits.default_memory_mb exceeds limits.max_memory_mb")
        return self
