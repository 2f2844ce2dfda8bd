"""`torl train`'s device placement (train.placement) turned into each service's environment and
overrides, checked without a GPU: separate devices, one shared device with memory fractions, and
the combinations refused with a message; the overrides are valid service config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from torl.cli.main import build_settings
from torl.cli.placement import PlacementSettings, wiring
from torl.cli.up import load_train_section


def test_cpu_sets_nothing() -> None:
    w = wiring(PlacementSettings(), learner_ranks=2)
    assert w.env == {} and w.sets == {}


def test_separate_devices_per_service_and_rank() -> None:
    w = wiring(PlacementSettings(mode="separate", rollout_devices="0,1", learner_devices="2,3,4"), learner_ranks=2)
    assert w.env == {"rollout": {"CUDA_VISIBLE_DEVICES": "0,1"}, "learner": {"CUDA_VISIBLE_DEVICES": "2,3"}}
    assert w.sets["rollout"] == ["engine.tensor_parallel_size=2"]  # vLLM spans the rollout's GPUs
    with pytest.raises(ValueError, match="one GPU per rank"):
        wiring(PlacementSettings(mode="separate", learner_devices="1"), learner_ranks=2)
    with pytest.raises(ValidationError, match="share GPU"):
        PlacementSettings(mode="separate", rollout_devices="0,1", learner_devices="1")


def test_shared_device_with_memory_fractions_and_valid_overrides() -> None:
    p = PlacementSettings(mode="shared", shared_device="0", rollout_memory_fraction=0.55, learner_memory_fraction=0.35)
    w = wiring(p, learner_ranks=1)
    assert w.env == {"rollout": {"CUDA_VISIBLE_DEVICES": "0"}, "learner": {"CUDA_VISIBLE_DEVICES": "0"}}
    rollout: Any = build_settings("rollout", None, w.sets["rollout"])
    learner: Any = build_settings("learner", None, w.sets["learner"])
    assert rollout.engine.gpu_memory_utilization == 0.55
    assert learner.engine.cuda_memory_fraction == 0.35
    with pytest.raises(ValidationError, match="headroom"):
        PlacementSettings(mode="shared", rollout_memory_fraction=0.6, learner_memory_fraction=0.4)
    with pytest.raises(ValueError, match="learner_ranks must be 1"):
        wiring(p, learner_ranks=2)


def test_train_section_reads_placement_and_ranks(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  learner_ranks: 2\n  placement:\n    mode: separate\n    learner_devices: '1,2'\n")
    cfg = load_train_section(f)
    assert cfg.learner_ranks == 2 and cfg.placement.learner_devices == "1,2"


def test_torl_train_refuses_a_placement_that_does_not_fit_its_ranks(tmp_path: Path) -> None:
    """--learner-ranks reaches the placement check, which fails before anything starts."""
    from torl.cli.up import run_train
    from torl.common.config import ConfigError

    f = tmp_path / "run.yaml"
    f.write_text(f"train:\n  run_dir: {tmp_path / 'run'}\n  placement:\n    mode: shared\n")
    with pytest.raises(ConfigError, match="learner_ranks must be 1"):
        run_train(f, learner_ranks=2)
    assert not (tmp_path / "run").exists()
