"""Dockerfiles: linted with hadolint, held to the image rules (multi-stage, pinned bases, non-root,
HEALTHCHECK, no compilers in the final stage unless the file says why), and kept buildable: every
COPY source exists and is inside the build context, the extras they install exist, and the package
they install builds as a wheel that holds every service and the generated protos.

No Docker daemon here: the images themselves are built by `docker build` on a machine that has one.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.deploy.tools import DOCKER_DIR, run, tool

pytestmark = pytest.mark.timeout(300)

DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))
EXPECTED = {"executor", "reward", "rollout-gpu", "rollout-cpu", "learner-gpu", "learner-cpu"}
COMPILERS = ("gcc", "g++", "build-essential", "make", "clang")


def stages(path: Path) -> list[list[str]]:
    """Instructions (continuation lines joined, comments dropped) split into build stages."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    for pat in patterns:
        pat = pat.rstrip("/")
        bare = pat[3:] if pat.startswith("**/") else pat
        if fnmatch.fnmatch(rel, pat) or rel == pat or rel.startswith(pat + "/") or fnmatch.fnmatch(rel, bare):
            return True
    return False


def _setuptools_major() -> int:
    try:
        return int(metadata.version("setuptools").split(".")[0])
    except metadata.PackageNotFoundError:
        return 0


def test_one_dockerfile_per_image() -> None:
    assert {p.name.removesuffix(".Dockerfile") for p in DOCKERFILES} == EXPECTED


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.stem for p in DOCKERFILES])
def test_hadolint(path: Path) -> None:
    res = run([tool("hadolint"), "--no-color", str(path)])
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.stem for p in DOCKERFILES])
def test_image_rules(path: Path) -> None:
    st = stages(path)
    assert len(st) >= 2, "multi-stage: build tools stay in the build stage"
    for stage in st:
        image = stage[0].split()[1]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?", image), f"unpinned base image {image}"
        assert not image.endswith(":latest")
    final = st[-1]
    users = [ln for ln in final if ln.upper().startswith("USER ")]
    assert users and users[-1].split()[1].split(":")[0] not in ("0", "root"), "final stage must run as non-root"
    assert any(ln.upper().startswith("HEALTHCHECK ") for ln in final)
    assert any(ln.startswith('ENTRYPOINT ["torl"]') for ln in final)
    svc = path.name.split("-")[0].removesuffix(".Dockerfile")
    assert any(ln.startswith(f'CMD ["{svc}", "serve"]') for ln in final)
    installs = " ".join(ln for ln in final if "apt-get install" in ln)
    compilers = [c for c in COMPILERS if re.search(rf"(^|\s){re.escape(c)}(=|\s|$)", installs)]
    if compilers:
        header = path.read_text(encoding="utf-8").split("FROM", 1)[0]
        assert "compile" in header and "on purpose" in header, f"{compilers} in the final stage without a reason"
    assert not any(re.search(r"(^|\s)(curl|wget)\s", ln) for ln in final if ln.startswith("RUN"))


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.stem for p in DOCKERFILES])
def test_copy_sources_exist_in_the_build_context(path: Path) -> None:
    patterns = dockerignore_patterns()
    for stage in stages(path):
        for line in stage:
            if not line.upper().startswith("COPY ") or "--from=" in line:
                continue
            *sources, _dest = line.split()[1:]
            for src in sources:
                rel = src.rstrip("/")
                assert (REPO / rel).exists(), f"COPY {src}: not in the repository"
                assert not ignored(rel, patterns), f"COPY {src}: excluded by .dockerignore"


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.stem for p in DOCKERFILES])
def test_installed_extras_exist(path: Path) -> None:
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    used = re.findall(r'"\.\[([\w,-]+)\]"', path.read_text(encoding="utf-8"))
    assert used, "the image installs the torl package"
    for group in used:
        assert set(group.split(",")) <= extras, f"unknown extra in {group}"


def test_service_images_carry_no_foreign_stack() -> None:
    """Executor and reward images carry no torch or vLLM (CONVENTIONS: each service its own deps)."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name in ("executor", "reward"):
        text = (DOCKER_DIR / f"{name}.Dockerfile").read_text(encoding="utf-8")
        for group in re.findall(r'"\.\[([\w,-]+)\]"', text):
            deps = " ".join(d for e in group.split(",") for d in extras[e])
            assert "torch" not in deps and "vllm" not in deps, (name, group)


@pytest.mark.timeout(240)
def test_package_builds_as_in_the_images(tmp_path: Path) -> None:
    """The build stage's steps on a clean export of the committed tree: generate protos, build the
    wheel; it must contain every service package and torl.v1."""
    src = tmp_path / "src"
    src.mkdir()
    archive = tmp_path / "tree.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), "HEAD"], cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(src, filter="data")
    gen = subprocess.run([sys.executable, "scripts/gen_protos.py"], cwd=src, capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr
    wheel_dir = tmp_path / "wheels"
    # Build with the venv's setuptools when it is new enough for pyproject.toml (>=77); otherwise
    # let pip fetch the build backend into an isolated env, as `docker build` does.
    no_isolation = ["--no-build-isolation"] if _setuptools_major() >= 77 else []
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *no_isolation, ".", "-w", str(wheel_dir)],
        cwd=src, capture_output=True, text=True, timeout=200,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheel_dir.glob("torl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in ("common", "cli", "executor", "reward", "rollout", "learner", "v1"):
        assert f"torl/{pkg}/__init__.py" in names, f"torl.{pkg} missing from the wheel"
    assert "torl/v1/executor_pb2_grpc.py" in names
