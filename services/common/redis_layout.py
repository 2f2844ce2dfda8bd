"""The Redis layout of one run (docs/architecture.md): key names, consumer groups, payload field.

Every stream entry carries one serialized proto in the field `p`. Rollout and learner each have
their own client adapter; both take names from here so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from torl.v1 import common_pb2

PAYLOAD_FIELD = b"p"
PROMPT_GROUP = "rollout"  # consumer group of rollout replicas on the prompts stream
TRAJECTORY_GROUP = "learner"  # consumer group of the learner on the trajectories stream


@dataclass(frozen=True)
class RunKeys:
    """Keys of one run: everything lives under `torl:{run_id}:`."""

    run_id: str

    @property
    def prefix(self) -> str:
        return f"torl:{self.run_id}:"

    @property
    def prompts(self) -> str:
        return self.prefix + "prompts"

    @property
    def trajectories(self) -> str:
        return self.prefix + "trajectories"

    @property
    def dead(self) -> str:
        return self.prefix + "dead"

    @property
    def version(self) -> str:
        return self.prefix + "version"

    @property
    def state(self) -> str:
        return self.prefix + "state"


def format_version(v: common_pb2.WeightVersion) -> str:
    """`incarnation:step`, the value of the `version` key."""
    return f"{v.incarnation}:{v.step}"


def parse_version(raw: str | bytes | None) -> common_pb2.WeightVersion:
    """Inverse of format_version; None or empty → version 0:0."""
    if not raw:
        return common_pb2.WeightVersion()
    text = raw.decode() if isinstance(raw, bytes) else raw
    inc, _, step = text.partition(":")
    return common_pb2.WeightVersion(incarnation=int(inc), step=int(step or 0))


def version_key(v: common_pb2.WeightVersion) -> tuple[int, int]:
    """Sort key: versions compare by (incarnation, step)."""
    return (int(v.incarnation), int(v.step))
