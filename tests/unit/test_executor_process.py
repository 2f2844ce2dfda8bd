"""The process backend's guards: config validation of the unsandboxed switch, gVisor detection, and
backend selection that never runs untrusted code unsandboxed unless told to twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from torl.executor.config import ExecutorSettings
from torl.executor.sandbox import SandboxError, make_backend
from torl.executor.sandbox.process import GVISOR_PROC_VERSION, gvisor_markers

INSIDE_GVISOR = bool(gvisor_markers())


@pytest.mark.parametrize("backend", ["auto", "gvisor", "bwrap"])
def test_allow_unsandboxed_needs_backend_process(backend: str) -> None:
    with pytest.raises(ValidationError, match=r"allow_unsandboxed_process=true needs sandbox.backend=process"):
        ExecutorSettings(sandbox={"backend": backend, "allow_unsandboxed_process": True})


def test_backend_process_is_a_valid_choice() -> None:
    s = ExecutorSettings(sandbox={"backend": "process", "allow_unsandboxed_process": True})
    assert s.sandbox.backend == "process" and s.sandbox.allow_unsandboxed_process
    assert ExecutorSettings(sandbox={"backend": "process"}).sandbox.allow_unsandboxed_process is False


def test_process_backend_refused_next_to_api_keys(tmp_path: Path) -> None:
    """Runs share the service's uid: a role=all process service could leak its own API keys file."""
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys: []\n")
    with pytest.raises(ValidationError, match=r"can read rest.api_keys_file: run role=runner"):
        ExecutorSettings(sandbox={"backend": "process"}, rest={"api_keys_file": str(keys)})
    runner = ExecutorSettings(role="runner", sandbox={"backend": "process"}, rest={"api_keys_file": str(keys)})
    assert runner.role == "runner"


def test_gvisor_markers(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "version").write_text(
        "Linux version 4.4.0-21-generic (buildd@lgw01-21) (gcc version 5.3.1 20160413) #37-Ubuntu SMP "
        "Mon Apr 18 18:33:37 UTC 2016\n"
    )
    assert gvisor_markers(bare) == []
    sentry = tmp_path / "sentry"
    sentry.mkdir()
    (sentry / "sentry-meminfo").write_text("")
    assert gvisor_markers(sentry) == [str(sentry / "sentry-meminfo")]
    version = tmp_path / "version"
    version.mkdir()
    (version / "version").write_text(GVISOR_PROC_VERSION + "\n")
    assert gvisor_markers(version) == [f"{version / 'version'} is gVisor's"]
    assert gvisor_markers(tmp_path / "missing") == []


@pytest.mark.skipif(INSIDE_GVISOR, reason="runs on a real kernel; inside gVisor the process backend is allowed")
def test_explicit_process_backend_refused_outside_gvisor(tmp_path: Path) -> None:
    settings = ExecutorSettings(sandbox={"backend": "process", "state_dir": str(tmp_path)})
    with pytest.raises(SandboxError, match=r"refusing the process backend outside gVisor.*allow_unsandboxed_process"):
        make_backend(settings.sandbox)


@pytest.mark.skipif(INSIDE_GVISOR, reason="these tests run on a real kernel; inside gVisor auto may pick process")
def test_auto_never_falls_back_to_unsandboxed_processes(tmp_path: Path) -> None:
    """runsc and bwrap both unusable, not inside gVisor: auto must refuse, naming every reason."""
    settings = ExecutorSettings(
        sandbox={
            "backend": "auto",
            "state_dir": str(tmp_path),
            "runsc_path": str(tmp_path / "no-runsc"),
            "bwrap_path": str(tmp_path / "no-bwrap"),
        }
    )
    with pytest.raises(SandboxError) as info:
        make_backend(settings.sandbox)
    message = str(info.value)
    assert "gvisor:" in message and "bwrap:" in message
    assert "will not run untrusted code as plain processes" in message


def test_helm_runner_config_selects_the_process_backend() -> None:
    """The chart's runner pods (gVisor RuntimeClass, uid 10001) run sandbox.backend=process; the
    gateway config does not name a backend (it runs no code)."""
    import yaml

    from tests.deploy.tools import CI_VALUES, render

    docs = render("-f", str(CI_VALUES[0]))
    configs = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: yaml.safe_load(d["data"]["config.yaml"])
        for d in docs
        if d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {})
    }
    runner = ExecutorSettings(**configs["executor-runner"])
    assert runner.role == "runner" and runner.sandbox.backend == "process"
    assert runner.sandbox.allow_unsandboxed_process is False
    assert "sandbox" not in configs["executor-gateway"]
    pods = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs if d["kind"] == "Deployment"}
    assert pods["executor-runner"]["spec"]["template"]["spec"]["runtimeClassName"] == "gvisor"
