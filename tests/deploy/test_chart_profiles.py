"""The chart's paper profiles (deploy/helm/torl/profiles/) and its template-time consistency checks.

The profiles are generated from configs/qwen2.5-math-*.yaml (scripts/gen_chart_profiles.py); these
tests hold the committed files equal to the generator's output, render and validate them strictly,
check that the pods' service configs carry every configs/ setting and the GPU defaults, and that
each consistency check refuses a bad combination with its message (and accepts the edge case next
to it, so a check cannot pass by refusing everything).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO
from tests.deploy.tools import CHART, helm_template, load_script, render, run, tool

pytestmark = pytest.mark.timeout(300)

gen = load_script("gen_chart_profiles")

PROFILES = sorted(gen.PROFILES)
SECRET = ["--set", "executor.apiKeys.existingSecret=torl-executor-api-keys"]
P7B = CHART / "profiles" / "qwen2.5-math-7b.yaml"
GIB = 1024**3
WEIGHTS_7B_BF16 = 7_615_616_512 * 2


def profile_args(name: str, *extra: str) -> list[str]:
    return ["-f", str(CHART / "profiles" / f"{name}.yaml"), *SECRET, *extra]


def service_config(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == f"t-torl-{component}-config"]
    cfg: dict[str, Any] = yaml.safe_load(cm["data"]["config.yaml"])
    return cfg


def workload(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    (wl,) = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == f"t-torl-{component}"]
    return wl


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(*profile_args(name)) for name in PROFILES}


def test_committed_profiles_are_generated_from_configs() -> None:
    for name in PROFILES:
        committed = (CHART / "profiles" / f"{name}.yaml").read_text(encoding="utf-8")
        assert committed == gen.render(name), (
            f"profiles/{name}.yaml is stale against configs/{name}.yaml: run python scripts/gen_chart_profiles.py"
        )
    res = subprocess.run([sys.executable, "scripts/gen_chart_profiles.py", "--check"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr


def test_a_changed_config_makes_the_profile_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    for name in PROFILES:
        source = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
        source["learner"]["engine"]["lr"] = 3.0e-6
        (configs / f"{name}.yaml").write_text(yaml.safe_dump(source))
    monkeypatch.setattr(gen, "CONFIGS", configs)
    name = PROFILES[0]
    assert gen.render(name) != (CHART / "profiles" / f"{name}.yaml").read_text()
    assert gen.profile(name)["learner"]["config"]["engine"]["lr"] == 3.0e-6


@pytest.mark.parametrize("name", PROFILES)
def test_profile_lints_and_validates_strictly(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    res = run([tool("helm"), "lint", "--strict", str(CHART), *profile_args(name)])
    assert res.returncode == 0, res.stdout + res.stderr
    for doc in rendered[name]:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs: checked in test_chart.py
        for version in ("1.30.0", "1.35.0"):
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("name", PROFILES)
def test_profile_carries_the_configs_settings(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    from torl.common.config import load_settings
    from torl.learner.config import LearnerSettings
    from torl.rollout.config import RolloutSettings

    source = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text(encoding="utf-8"))
    docs = rendered[name]
    for component, cls in (("rollout", RolloutSettings), ("learner", LearnerSettings)):
        # What the service reads from the pod's config file (its own loader and validation).
        settings = load_settings(cls, file_values=service_config(docs, component))
        for key, want in leaves(source[component]).items():
            if key in ("data.train_path", "data.eval_path"):
                want = want.replace("data/", "/opt/torl/data/", 1)
                assert (REPO / "data" / want.removeprefix("/opt/torl/data/")).is_file(), want
            got: Any = settings
            for part in key.split("."):
                got = getattr(got, part)
            got = list(got) if isinstance(got, tuple) else got
            assert got == want, f"{name}: {component}.{key} = {got!r} in the pod, configs/ says {want!r}"
    learner = service_config(docs, "learner")
    assert learner["run_id"] == source["train"]["run_id"]
    assert learner["weight_sync"]["dtype"] == source["rollout"]["engine"]["dtype"] == "bfloat16"


@pytest.mark.parametrize("name", PROFILES)
def test_gpu_defaults(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    hw = gen.PROFILES[name]
    docs = rendered[name]
    engine = service_config(docs, "rollout")["engine"]
    assert engine["enforce_eager"] is False, "CUDA graphs on with GPUs"
    assert engine["tensor_parallel_size"] == hw.rollout_gpus
    assert engine["gpu_memory_utilization"] == 0.85
    (c,) = workload(docs, "rollout")["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == hw.rollout_gpus
    learner = workload(docs, "learner")
    assert learner["spec"]["replicas"] == hw.learner_nodes
    (lc,) = learner["spec"]["template"]["spec"]["containers"]
    assert lc["resources"]["limits"]["nvidia.com/gpu"] == hw.learner_gpus_per_node
    assert f"--nproc-per-node={hw.learner_gpus_per_node}" in lc["args"]
    # CPU replicas keep the service's eager default.
    cpu = service_config(render("-f", str(CHART / "ci" / "cpu-values.yaml")), "rollout")["engine"]
    assert "enforce_eager" not in cpu and "tensor_parallel_size" not in cpu


def test_gpu_runtime_class_on_gpu_pods_only() -> None:
    docs = render(*profile_args("qwen2.5-math-7b", "--set", "gpuRuntimeClassName=nvidia"))
    classes = {d["metadata"]["name"]: d["spec"]["template"]["spec"].get("runtimeClassName")
               for d in docs if d["kind"] in ("StatefulSet", "Deployment")}
    assert classes["t-torl-rollout"] == classes["t-torl-learner"] == "nvidia"
    assert classes["t-torl-executor-runner"] == "gvisor"
    assert classes["t-torl-reward"] is None and classes["t-torl-redis"] is None


def test_rollout_staging_is_sized_from_the_model(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name in PROFILES:
        weights = gen.PROFILES[name].parameters * 2
        pod = workload(rendered[name], "rollout")["spec"]["template"]["spec"]
        vols = {v["name"]: v for v in pod["volumes"]}
        shm = vols["shm"]["emptyDir"]["sizeLimit"]
        assert shm.endswith("Gi")
        assert weights <= int(shm[:-2]) * GIB <= 1.25 * weights + GIB, (name, shm)
        assert int(vols["tmp"]["emptyDir"]["sizeLimit"]) == 8 * GIB + int(shm[:-2]) * GIB
        assert service_config(rendered[name], "rollout")["weights"]["staging_dir"] == "/dev/shm"
    assert shm == "18Gi"  # 7B: 15.23 GB x 1.25 = 17.7 GiB


@pytest.mark.parametrize(
    ("bad", "good", "message"),
    [
        (
            ["--set", "learner.config.weight_sync.dtype=float32"],
            ["--set", "learner.config.weight_sync.dtype=bfloat16"],
            "learner.config.weight_sync.dtype (float32) differs from model.dtype (bfloat16): the rollout rejects",
        ),
        (
            ["--set", "rollout.config.engine.dtype=float16"],
            ["--set", "rollout.config.engine.dtype=auto"],
            "rollout.config.engine.dtype (float16) differs from model.dtype (bfloat16)",
        ),
        (
            ["--set", "rollout.config.engine.tensor_parallel_size=1"],
            ["--set", "rollout.config.engine.tensor_parallel_size=2"],
            "rollout.gpus (2) differs from rollout.config.engine.tensor_parallel_size (1)",
        ),
        (
            ["--set", "rollout.shmSizeLimit=14Gi"],  # 15.03 GB < 15.23 GB of bf16 weights
            ["--set", "rollout.shmSizeLimit=15Gi"],  # 16.11 GB
            "rollout.shmSizeLimit (14Gi = 15.03 GB) is smaller than one weight push "
            "(model.parameters 7615616512 x bfloat16 = 15.23 GB)",
        ),
        (
            ["--set", "learner.config.weight_sync.deadline_seconds=152"],  # 15.23 GB at 100 MB/s = 152.3 s
            ["--set", "learner.config.weight_sync.deadline_seconds=153"],
            "learner.config.weight_sync.deadline_seconds (152) is too short for the model: a push of 15.23 GB "
            "takes 152 s at checks.minPushMBps=100 MB/s",
        ),
        (
            ["--set", "rollout.config.weights.max_update_gib=14"],
            ["--set", "rollout.config.weights.max_update_gib=15"],
            "one weight push (15.23 GB) exceeds rollout.config.weights.max_update_gib (14 GiB)",
        ),
    ],
    ids=["sync-dtype", "engine-dtype", "tensor-parallel", "staging", "deadline", "max-update"],
)
def test_consistency_check_refuses_bad_combination(bad: list[str], good: list[str], message: str) -> None:
    res = helm_template(*profile_args("qwen2.5-math-7b", *bad))
    assert res.returncode != 0, f"{bad} was accepted"
    assert f"torl chart: {message}" in res.stderr, res.stderr
    ok = helm_template(*profile_args("qwen2.5-math-7b", *good))
    assert ok.returncode == 0, ok.stderr


def test_staging_check_skipped_when_weights_do_not_stage_in_shm() -> None:
    args = ["--set", "rollout.shmSizeLimit=1Gi", "--set", "rollout.config.weights.staging_dir=/staging"]
    assert helm_template(*profile_args("qwen2.5-math-7b", *args)).returncode == 0


def test_shared_model_cache(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["qwen2.5-math-7b"]
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "t-torl-models"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for comp in ("rollout", "learner"):
        pod = workload(docs, comp)["spec"]["template"]["spec"]
        (vol,) = [v for v in pod["volumes"] if v["name"] == "model"]
        assert vol["persistentVolumeClaim"]["claimName"] == "t-torl-models"
        (init,) = pod["initContainers"]
        env = {e["name"]: e.get("value") for e in init["env"]}
        model_dir = service_config(docs, comp)["engine" if comp == "rollout" else "model_dir"]
        assert env["MODEL_DIR"] == (model_dir["model_dir"] if comp == "rollout" else model_dir)
        assert env["MODEL_DIR"] == "/models/hub/Qwen/Qwen2.5-Math-7B/main"
        (main,) = pod["containers"]
        assert {"name": "model", "mountPath": "/models", "readOnly": True} in main["volumeMounts"]
    off = render(*profile_args("qwen2.5-math-7b", "--set", "model.hub.sharedCache.enabled=false"))
    assert not [d for d in off if d["metadata"]["name"] == "t-torl-models"]
    pod = workload(off, "rollout")["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "model")["emptyDir"]["sizeLimit"] == "40Gi"


def test_download_script_fetches_once_for_concurrent_pods(tmp_path: Path) -> None:
    """The init container's script, as rendered, run by three "pods" at once against one cache
    directory: one download (a stand-in huggingface_hub counts them: no network here), all find
    the model complete."""
    docs = render(*profile_args("qwen2.5-math-1.5b"))
    (init,) = workload(docs, "rollout")["spec"]["template"]["spec"]["initContainers"]
    script = init["command"][2]
    stub = tmp_path / "stub" / "huggingface_hub"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        "import os, pathlib, time\n"
        "def snapshot_download(repo_id, revision, local_dir):\n"
        "    with open(os.environ['CALLS'], 'a') as f:\n"
        "        f.write(f'{repo_id}@{revision}\\n')\n"
        "    time.sleep(0.5)\n"
        "    (pathlib.Path(local_dir) / 'config.json').write_text('{}')\n"
    )
    calls = tmp_path / "calls"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "stub"), "CALLS": str(calls),
           "MODEL_NAME": "Qwen/Qwen2.5-Math-1.5B", "MODEL_REVISION": "main",
           "MODEL_DIR": str(tmp_path / "models" / "hub" / "Qwen" / "Qwen2.5-Math-1.5B" / "main")}
    results: list[subprocess.CompletedProcess[str]] = []

    def pod() -> None:
        results.append(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                      timeout=60, check=False))

    threads = [threading.Thread(target=pod) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    assert calls.read_text().splitlines() == ["Qwen/Qwen2.5-Math-1.5B@main"]
    assert sorted(r.stdout.split()[1] for r in results) == ["cached", "cached", "downloaded"]
    assert (Path(env["MODEL_DIR"]) / "config.json").is_file()
