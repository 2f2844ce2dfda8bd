"""Where `torl train` puts rollout and learner on one GPU box (the `train.placement` section).

- `cpu` (default): nothing is set; the services use what they find (the demo runs on CPU).
- `separate`: rollout sees `rollout_devices` and the learner `learner_devices` (CUDA_VISIBLE_DEVICES
  of each process; one device per learner rank), so neither can touch the other's memory.
- `shared`: both see `shared_device`; vLLM takes `rollout_memory_fraction` of it
  (rollout `engine.gpu_memory_utilization`) and the learner caps its PyTorch allocator at
  `learner_memory_fraction` (learner `engine.cuda_memory_fraction`); the two must leave headroom
  (sum <= 0.95) for CUDA contexts and NCCL buffers.

`wiring` turns the section into each service's environment and `--set` overrides; it needs no GPU,
so the choices are checked on any machine (tests/unit/test_cli_placement.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, model_validator

from torl.common.config import StrictModel

_DEVICES = r"^[0-9]+(,[0-9]+)*$"


class PlacementSettings(StrictModel):
    """Devices of rollout and learner for `torl train` on one machine."""

    mode: Literal["cpu", "separate", "shared"] = Field(
        "cpu", description="cpu: set nothing; separate: own GPUs per service; shared: one GPU, split by fractions."
    )
    rollout_devices: str = Field("0", pattern=_DEVICES, description="CUDA_VISIBLE_DEVICES of rollout (separate).")
    learner_devices: str = Field(
        "1", pattern=_DEVICES, description="CUDA_VISIBLE_DEVICES of the learner (separate); one per learner rank."
    )
    shared_device: str = Field("0", pattern=r"^[0-9]+$", description="The one GPU both use (shared).")
    rollout_memory_fraction: float = Field(
        0.5, gt=0.0, lt=1.0, description="Share of the shared GPU's memory vLLM may take (gpu_memory_utilization)."
    )
    learner_memory_fraction: float = Field(
        0.4, gt=0.0, lt=1.0, description="Cap of the learner's PyTorch allocator on the shared GPU."
    )

    @model_validator(mode="after")
    def _check(self) -> PlacementSettings:
        if self.mode == "separate":
            overlap = set(self.rollout_devices.split(",")) & set(self.learner_devices.split(","))
            if overlap:
                raise ValueError(f"rollout_devices and learner_devices share GPU(s) {sorted(overlap)}; "
                                 "use mode: shared to split one GPU")
        if self.mode == "shared" and self.rollout_memory_fraction + self.learner_memory_fraction > 0.95:
            raise ValueError(f"rollout_memory_fraction + learner_memory_fraction = "
                             f"{self.rollout_memory_fraction + self.learner_memory_fraction:.2f} > 0.95: "
                             "leave headroom for CUDA contexts and NCCL buffers")
        return self


@dataclass
class Wiring:
    env: dict[str, dict[str, str]] = field(default_factory=dict)  # service -> extra environment
    sets: dict[str, list[str]] = field(default_factory=dict)  # service -> extra --set overrides


def wiring(p: PlacementSettings, learner_ranks: int) -> Wiring:
    """Each service's environment and overrides for this placement."""
    if p.mode == "cpu":
        return Wiring()
    if p.mode == "separate":
        learner = p.learner_devices.split(",")
        if len(learner) < learner_ranks:
            raise ValueError(f"train.placement.learner_devices lists {len(learner)} GPU(s) for {learner_ranks} "
                             "learner ranks: one GPU per rank")
        tp = len(p.rollout_devices.split(","))
        return Wiring(
            env={"rollout": {"CUDA_VISIBLE_DEVICES": p.rollout_devices},
                 "learner": {"CUDA_VISIBLE_DEVICES": ",".join(learner[:learner_ranks])}},
            sets={"rollout": [f"engine.tensor_parallel_size={tp}"], "learner": []},
        )
    if learner_ranks > 1:
        raise ValueError("train.placement.mode shared puts everything on one GPU: learner_ranks must be 1")
    return Wiring(
        env={name: {"CUDA_VISIBLE_DEVICES": p.shared_device} for name in ("rollout", "learner")},
        sets={"rollout": [f"engine.gpu_memory_utilization={p.rollout_memory_fraction}"],
              "learner": [f"engine.cuda_memory_fraction={p.learner_memory_fraction}"]},
    )
