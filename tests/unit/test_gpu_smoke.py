"""What of the GPU smoke run a CPU can check: the wrapper parses, the generated `torl train` configs pass
every service's strict settings, the 0.5B model has the real Qwen2-0.5B layout, bad arguments are refused.
The run itself needs a GPU (scripts/gpu_smoke.sh); it was not run here."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def smoke() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "scripts" / "gpu_smoke.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_wrapper_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_smoke.sh")], check=True)


def test_qwen2_05b_layout_has_the_real_parameter_count() -> None:
    mod = smoke()
    shapes = dict(mod.qwen2_shapes(**mod.QWEN2_05B))
    assert sum(math.prod(s) for s in shapes.values()) == 494_032_768  # Qwen2.5-0.5B, tied embeddings
    assert shapes["model.layers.23.self_attn.k_proj.weight"] == (128, 896)  # 2 KV heads of 64
    assert "lm_head.weight" not in shapes


def test_configs_pass_every_service_check_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    script = str(ROOT / "scripts" / "gpu_smoke.py")
    done = subprocess.run([sys.executable, script, "--dry-run", "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny.yaml passes every service's config check" in done.stdout
    assert "qwen05.yaml passes every service's config check" in done.stdout
    cfg = (tmp_path / "qwen05.yaml").read_text()
    assert "gradient_checkpointing: true" in cfg and "precision: bf16" in cfg and "enforce_eager: false" in cfg
    for bad in (["--phases", "tiny,warp"], ["--rollout-mem", "0.99"]):
        done = subprocess.run([sys.executable, script, "--dry-run", *bad], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2 and "error" in done.stderr, done.stderr
