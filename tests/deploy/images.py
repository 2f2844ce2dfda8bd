"""What a Docker image installs and runs, read from its Dockerfile, and a fresh venv built the same way.

`install_steps` turns the build stage's `pip install` / `pip uninstall` commands into argument
lists (the torl package replaced by a wheel built from this tree), so a test installs exactly the
image's package set. `modules_used` lists the modules the image's entry point, health check and
init containers import: every torl module of the service's packages and what they import (followed
through torl's own modules, function-level imports included), plus the chart's init-container
script. No Docker daemon is needed.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO
from tests.deploy.tools import CHART, DOCKER_DIR

SERVICES_DIR = REPO / "services"
# Files the chart runs in an image's init containers (rollout and learner pods).
INIT_SCRIPTS = {"rollout": [CHART / "files" / "download_model.py"], "learner": [CHART / "files" / "download_model.py"]}
# What every image runs besides its service package: the `torl` entry point and the health check.
ENTRY_POINTS = ("torl.cli.main", "torl.common.healthcheck")
# Imports a service makes only for an opt-in feature; they are not in its extra on purpose.
OPTIONAL = {
    "wandb": "learner tracking.wandb_project",
    "torch.utils.tensorboard": "learner tracking.tensorboard",
    "pyarrow.parquet": "Parquet problem files",
    # learner weight_sync.transport=nccl: CUDA only; the learner-gpu image carries vllm for it.
    "vllm.distributed.weight_transfer.nccl_common": "learner weight_sync.transport=nccl (GPU)",
    "vllm.distributed.weight_transfer.packed_tensor": "learner weight_sync.transport=nccl (GPU)",
}
# Build-stage env that would reach past the package registries (the CPU torch index): the same
# torch==2.13.0+cpu wheel comes from the machine's wheel directory (PIP_FIND_LINKS) instead.
DROPPED_ENV = {"PIP_EXTRA_INDEX_URL", "PIP_NO_CACHE_DIR"}


@dataclass
class Image:
    name: str
    service: str
    env: dict[str, str] = field(default_factory=dict)
    steps: list[list[str]] = field(default_factory=list)  # pip argument lists, in order


def _build_stage(path: Path) -> list[str]:
    """Instructions of the stage named `build` (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    stage: list[str] = []
    inside = False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            if inside:
                break
            inside = line.split()[-2:][0].upper() == "AS" and line.split()[-1] == "build"
        if inside:
            stage.append(line)
    assert stage, f"{path.name}: no `FROM ... AS build` stage"
    return stage


def read_image(path: Path, wheel: Path) -> Image:
    """The pip steps of the Dockerfile's build stage, with paths made absolute and `.` the wheel."""
    name = path.name.removesuffix(".Dockerfile")
    image = Image(name=name, service=name.split("-")[0])
    for line in _build_stage(path):
        word, _, rest = line.partition(" ")
        if word.upper() == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                if key not in DROPPED_ENV and not key.startswith("PATH"):
                    image.env[key] = value
        if word.upper() != "RUN":
            continue
        for command in rest.split("&&"):
            args = shlex.split(command)
            if args[:2] not in (["pip", "install"], ["pip", "uninstall"]):
                continue
            out = []
            for i, arg in enumerate(args[1:]):
                if args[i] == "-c":  # the previous argument was -c: a constraints file in the context
                    arg = str(REPO / arg)
                elif arg == "." or arg.startswith(".["):
                    arg = f"{wheel}{arg[1:]}"
                out.append(arg)
            image.steps.append(out)
    return image


def create_venv(image: Image, venv: Path) -> subprocess.CompletedProcess[str]:
    """A fresh venv (no system site-packages) with the image's pip steps run in it."""
    # No ensurepip (slow, and pip is not part of the image's set): this interpreter's pip installs
    # into the venv through --python.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=600)
    env = {**os.environ, **image.env}
    for key in DROPPED_ENV:
        env.pop(key, None)
    log = []
    for step in image.steps:
        # --no-compile: the image compiles nothing either (PYTHONDONTWRITEBYTECODE); it only saves CPU here.
        quiet = ["-q", "--no-compile"] if step[0] == "install" else []
        pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
        res = subprocess.run([*pip, *step, *quiet], env=env, capture_output=True, text=True, timeout=1500,
                             check=False)
        log.append(f"$ pip {' '.join(step)}\n{res.stdout}{res.stderr}")
        if res.returncode != 0:
            return subprocess.CompletedProcess(step, res.returncode, "\n".join(log), res.stderr)
    return subprocess.CompletedProcess(["pip"], 0, "\n".join(log), "")


def _module_file(module: str) -> Path | None:
    """The source of a torl module (torl.x.y -> services/x/y.py or services/x/y/__init__.py)."""
    parts = module.split(".")[1:]
    base = SERVICES_DIR.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str, top_level_only: bool = False) -> set[str]:
    """Modules a file imports (top level and inside functions, or top level only), relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in (tree.body if top_level_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "__future__":
                continue
            found.add(base)
            for alias in node.names:  # `from torl.x import y` may name the module torl.x.y
                if base.startswith("torl") and _module_file(f"{base}.{alias.name}"):
                    found.add(f"{base}.{alias.name}")
    return found


def _type_checking_only(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and sub.module:
                    out.add(sub.module)
                elif isinstance(sub, ast.Import):
                    out.update(a.name for a in sub.names)
    return out


def modules_used(service: str) -> tuple[list[str], list[str]]:
    """(torl modules, third-party modules) an image of `service` runs: its package, the CLI entry
    point, the health check, everything they import through torl's modules, and its init scripts."""
    roots = []
    for p in sorted((SERVICES_DIR / service).rglob("*.py")):
        dotted = ".".join(p.relative_to(SERVICES_DIR).with_suffix("").parts)
        roots.append("torl." + dotted.removesuffix(".__init__"))
    todo = [*roots, *ENTRY_POINTS]
    seen: set[str] = set()
    third: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is None:
            continue
        skip = _type_checking_only(path)
        # The CLI's other commands (train, up, eval, report) import the whole stack lazily; an image
        # runs `torl <svc> serve`, which loads only the service's own modules (torl.cli.main.SERVICES).
        for imp in _imports(path, module, top_level_only=module in ENTRY_POINTS) - skip:
            if imp.startswith("torl"):
                if _module_file(imp):
                    todo.append(imp)
            elif imp.split(".")[0] not in sys.stdlib_module_names:
                third.add(imp)
    for script in INIT_SCRIPTS.get(service, []):
        third.update(i for i in _imports(script, "__main__") if i.split(".")[0] not in sys.stdlib_module_names)
    third -= set(OPTIONAL)
    torl = sorted(m for m in seen if _module_file(m))
    return torl, sorted(third)


def dockerfiles() -> list[Path]:
    return sorted(DOCKER_DIR.glob("*.Dockerfile"))
