"""Each CPU image's package set, installed into a fresh venv exactly as its Dockerfile installs it
(the same pip commands, constraints files and extras; tests/deploy/images.py reads them), then
made to do what the image does: import every module its entry point, health check and init
containers use, answer `torl <svc> serve --help`, and accept the config the chart gives its pods
(`torl config show`). A dependency missing from an image's extra fails here, without Docker.

The GPU images cannot be installed here (CUDA wheels); test_gpu_pins.py checks their lock instead.
Cost: one venv per image, built concurrently once per session (the installs mostly wait on the
package registry); the module is marked slow. Measured figures: docs/deploy.md, "What was verified where".
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.deploy.images import create_venv, modules_used, read_image
from tests.deploy.tools import CHART, DOCKER_DIR, render

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CPU_IMAGES = ("executor", "reward", "learner-cpu", "rollout-cpu")
# The chart component whose rendered config each image's service is given.
COMPONENT = {"executor": "executor-gateway", "reward": "reward", "learner-cpu": "learner", "rollout-cpu": "rollout"}

IMPORT_CHECK = """
import importlib, json, sys
failed = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception as e:  # report every failure, not only the first
        failed[name] = f"{type(e).__name__}: {e}"
print(json.dumps(failed))
"""


@pytest.fixture(scope="session")
def torl_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The torl package as the images' build stage makes it (protos generated, then a wheel)."""
    out = tmp_path_factory.mktemp("wheel")
    # The build backend in an isolated env, as `docker build` gets it (the venv's setuptools may predate pyproject's).
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(out)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    (wheel,) = out.glob("torl-*.whl")
    return wheel


class Venv:
    def __init__(self, path: Path, cwd: Path, ok: bool) -> None:
        self.path = path
        self.cwd = cwd
        self.ok = ok

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{self.path / 'bin'}:/usr/bin:/bin", "HOME": str(self.cwd), "VLLM_CPU_KVCACHE_SPACE": "1"}
        return subprocess.run(list(args), cwd=self.cwd, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)


@pytest.fixture(scope="session")
def venvs(torl_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Venv, str]]:
    """Every CPU image's venv, built concurrently (the installs mostly wait on the registry):
    image -> (venv, pip log). A failed install is reported by that image's tests only."""
    def build(name: str) -> tuple[Venv, str]:
        image = read_image(DOCKER_DIR / f"{name}.Dockerfile", torl_wheel)
        assert any(step[0] == "install" and any(str(torl_wheel) in a for a in step) for step in image.steps), (
            f"{name}: the Dockerfile installs no torl extra"
        )
        root = tmp_path_factory.mktemp(name)
        res = create_venv(image, root / "venv")
        return Venv(root / "venv", root, ok=res.returncode == 0), res.stdout

    with ThreadPoolExecutor(max_workers=len(CPU_IMAGES)) as pool:
        futures = {name: pool.submit(build, name) for name in CPU_IMAGES}
        return {name: f.result() for name, f in futures.items()}


@pytest.fixture(params=list(CPU_IMAGES))
def image_venv(request: pytest.FixtureRequest, venvs: dict[str, tuple[Venv, str]]) -> tuple[str, Venv]:
    name: str = request.param
    venv, log = venvs[name]
    assert venv.ok, f"{name}: the image's pip steps failed in a fresh venv:\n{log[-4000:]}"
    return name, venv


@pytest.fixture(scope="module")
def chart_configs() -> dict[str, dict[str, Any]]:
    docs = render("-f", str(CHART / "ci" / "cpu-values.yaml"))
    return {
        d["metadata"]["name"].removeprefix("t-torl-").removesuffix("-config"): yaml.safe_load(d["data"]["config.yaml"])
        for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")
    }


def test_image_imports_every_module_it_runs(image_venv: tuple[str, Venv]) -> None:
    name, venv = image_venv
    torl_modules, third_party = modules_used(name.split("-")[0])
    res = venv.run("python", "-c", IMPORT_CHECK, json.dumps(third_party + torl_modules), timeout=600)
    assert res.returncode == 0, res.stderr
    failed = json.loads(res.stdout.strip().splitlines()[-1])
    assert not failed, f"{name} image cannot import: " + json.dumps(failed, indent=1)


def test_image_serves_help_and_accepts_the_chart_config(
    image_venv: tuple[str, Venv], chart_configs: dict[str, dict[str, Any]]
) -> None:
    name, venv = image_venv
    service = name.split("-")[0]
    res = venv.run("torl", service, "serve", "--help")
    assert res.returncode == 0 and "--config" in res.stdout, res.stdout + res.stderr
    health = venv.run("python", "-m", "torl.common.healthcheck", "--help")  # HEALTHCHECK and exec probes
    assert health.returncode == 0 and "--target" in health.stdout, health.stderr
    cfg = venv.cwd / "config.yaml"
    cfg.write_text(yaml.safe_dump(chart_configs[COMPONENT[name]]))
    shown = venv.run("torl", "config", "show", service, "--config", str(cfg))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    effective = json.loads(shown.stdout)
    assert effective["grpc"]["port"] == chart_configs[COMPONENT[name]]["grpc"]["port"]
    bad = venv.run("torl", "config", "show", service, "--config", str(cfg), "--set", "grpc.port=-1")
    assert bad.returncode != 0 and "grpc.port" in bad.stdout + bad.stderr
