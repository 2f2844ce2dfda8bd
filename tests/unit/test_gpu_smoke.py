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

import pytest

from torl.common.config import ConfigError

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


def test_qwen2_05b_config_is_a_valid_qwen2_config_of_those_shapes() -> None:
    from transformers import AutoConfig

    from torl.rollout.tiny_model import build_tiny

    mod = smoke()
    cfg = mod.qwen2_05b_config(build_tiny(None, 0))
    hf = AutoConfig.for_model(**cfg)  # validates e.g. layer_types against num_hidden_layers
    assert (hf.num_hidden_layers, hf.hidden_size, hf.num_key_value_heads, hf.vocab_size) == (24, 896, 2, 151936)
    assert hf.tie_word_embeddings


def test_configs_pass_every_service_check_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    mod = smoke()
    for name, model, dtype in (("tiny", "tiny", "float32"), ("qwen05", str(tmp_path), "bfloat16")):
        (tmp_path / "config.json").write_text("{}")  # train.model must be a model directory
        cfg = mod.train_config(f"smoke-{name}", model, 0.35, 3, dtype)
        assert cfg["learner"]["engine"]["precision"] == "bf16" and cfg["learner"]["engine"]["gradient_checkpointing"]
        assert cfg["rollout"]["engine"]["enforce_eager"] is False
        mod.check_config(mod.write_yaml(cfg, tmp_path / f"{name}.yaml"))  # what --dry-run does
    bad = mod.train_config("smoke-bad", "tiny", 0.35, 3, "float32")
    bad["learner"]["engine"]["precision"] = "bf17"
    with pytest.raises(ConfigError, match="precision"):
        mod.check_config(mod.write_yaml(bad, tmp_path / "bad.yaml"))
    script = str(ROOT / "scripts" / "gpu_smoke.py")
    for args in (["--phases", "tiny,warp"], ["--rollout-mem", "0.99"]):
        done = subprocess.run([sys.executable, script, "--dry-run", *args], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2 and "error" in done.stderr, done.stderr
