"""The prompt feed and version ledger: which prompts are out, which groups count, which are stale.

Plain Python over protos, no Redis and no clock of its own (callers pass `now`), so every
decision is unit-tested (tests/unit/test_learner_ledger.py):

- **feed**: keep (max_staleness + 1) x prompts_per_step prompts outstanding, in dataset order
  (epochs, seeded shuffle), each tagged with the step it is meant for and the oldest weights
  rollout may sample it with (`min_version`);
- **judge** an arriving group: dead (malformed), duplicate (applied, read ahead or in the step
  being collected), stale (more than max_staleness versions old, or sampled with weights that
  died with an earlier incarnation), unusable (no response to train on), or ready;
- **take** a group read ahead into the step, judging its staleness again at the version it trains at;
- **re-issue** the prompt of a dropped group, or of one that has not arrived in time;
- **apply** a step's groups (version step + 1) and **snapshot/restore** all of it in checkpoints.

The orchestrator turns these decisions into Redis commands (torl.learner.source).
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torl.learner.datasets import FeedOrder, Problem
from torl.v1 import common_pb2, trajectory_pb2


class Verdict(enum.Enum):
    """What becomes of an arriving group (values are the torl_learner_groups_total outcomes)."""

    DEAD = "dead"
    DUPLICATE = "duplicate"
    STALE = "dropped_stale"
    UNUSABLE = "unusable"
    READY = "ready"


@dataclass
class Decision:
    verdict: Verdict
    staleness: int = 0
    reissue: trajectory_pb2.Prompt | None = None  # put this prompt on the stream again


@dataclass
class Outstanding:
    """A prompt on the stream whose group has not been applied yet."""

    prompt: trajectory_pb2.Prompt
    issued_at: float


@dataclass
class Counters:
    applied: int = 0
    dropped_stale: int = 0
    dropped_unusable: int = 0
    dead: int = 0
    duplicate: int = 0
    reissued: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class Ledger:
    """The orchestrator's bookkeeping of prompts, groups and weight versions."""

    def __init__(self, run_id: str, problems: Sequence[Problem], order: FeedOrder, *, prompts_per_step: int,
                 group_size: int, max_staleness: int, reissue_after_seconds: float) -> None:
        self.run_id = run_id
        self.problems = problems
        self.order = order
        self.prompts_per_step = prompts_per_step
        self.group_size = group_size
        self.max_staleness = max_staleness
        self.reissue_after_seconds = reissue_after_seconds
        # Saved in every checkpoint.
        self.step = 0
        self.cursor = 0  # next feed position
        self.applied_ids: set[str] = set()
        self.outstanding: dict[str, Outstanding] = {}
        self.counters = Counters()
        # Process-local.
        self.incarnation = 0
        self.resumed_from_step = 0
        self.held: set[str] = set()  # group ids arrived and not applied: read ahead or in the step being collected

    @property
    def version(self) -> common_pb2.WeightVersion:
        return common_pb2.WeightVersion(incarnation=self.incarnation, step=self.step)

    def begin(self, incarnation: int) -> None:
        """A new learner process takes over at the current step with a fresh incarnation."""
        self.incarnation = incarnation
        self.resumed_from_step = self.step
        self.held.clear()

    # -- versions --------------------------------------------------------------------------------
    def staleness_of(self, g: trajectory_pb2.TrajectoryGroup) -> int | None:
        """Versions between the group's oldest start version and now; None if its weights are lost.

        Weights of an earlier incarnation are ours only up to the step this learner resumed from;
        later steps of a dead learner never reached a checkpoint.
        """
        worst = 0
        for t in g.trajectories:
            if t.excluded:
                continue
            v = t.version_start
            if v.incarnation > self.incarnation:
                return None
            if v.incarnation < self.incarnation and v.step > self.resumed_from_step:
                return None
            if v.step > self.step:
                return None
            worst = max(worst, int(self.step - v.step))
        return worst

    def min_version(self, ahead: int = 0) -> common_pb2.WeightVersion:
        """Oldest weights a prompt may be sampled with: it is trained `ahead` steps from now, when
        the learner is at version step + ahead, and must then be at most max_staleness old."""
        step = max(self.resumed_from_step, min(self.step, self.step + ahead - self.max_staleness))
        return common_pb2.WeightVersion(incarnation=self.incarnation, step=step)

    # -- arriving groups -------------------------------------------------------------------------
    def judge(self, g: trajectory_pb2.TrajectoryGroup | None, now: float) -> Decision:
        """Sort one arriving group (None: it did not decode or validate). READY groups are held."""
        if g is None:
            self.counters.dead += 1
            return Decision(Verdict.DEAD)
        if g.group_id in self.applied_ids or g.group_id in self.held:
            # The original is applied, read ahead or in the step being collected: this copy adds nothing.
            self.counters.duplicate += 1
            return Decision(Verdict.DUPLICATE)
        stale = self.staleness_of(g)
        if stale is None or stale > self.max_staleness:
            self.counters.dropped_stale += 1
            return Decision(Verdict.STALE, reissue=self._reissue(g.group_id, g.prompt, now))
        if all(t.excluded for t in g.trajectories):
            self.counters.dropped_unusable += 1
            return Decision(Verdict.UNUSABLE, reissue=self._reissue(g.group_id, g.prompt, now))
        self.held.add(g.group_id)
        return Decision(Verdict.READY, staleness=stale)

    def take(self, g: trajectory_pb2.TrajectoryGroup, now: float) -> Decision:
        """A held group enters the step being collected, unless it went stale while read ahead."""
        stale = self.staleness_of(g)
        if stale is None or stale > self.max_staleness:
            self.held.discard(g.group_id)
            self.counters.dropped_stale += 1
            return Decision(Verdict.STALE, reissue=self._reissue(g.group_id, g.prompt, now))
        return Decision(Verdict.READY, staleness=stale)

    def apply(self, group_ids: Sequence[str]) -> None:
        """One optimizer step trained on these groups: the version moves to step + 1."""
        self.step += 1
        for gid in group_ids:
            self.applied_ids.add(gid)
            self.outstanding.pop(gid, None)
            self.held.discard(gid)
        self.counters.applied += len(group_ids)

    # -- prompts ---------------------------------------------------------------------------------
    def feed(self, now: float) -> list[trajectory_pb2.Prompt]:
        """New prompts that top the outstanding set up to (max_staleness + 1) steps' worth (recorded as issued)."""
        per_step = self.prompts_per_step
        target = (self.max_staleness + 1) * per_step
        new: list[trajectory_pb2.Prompt] = []
        while len(self.outstanding) + len(new) < target:
            epoch, idx = self.order.index(self.cursor)
            pid = f"{self.run_id}-e{epoch}-{self.cursor}"
            self.cursor += 1
            if pid in self.applied_ids or pid in self.outstanding:
                continue
            p = self.problems[idx]
            ahead = (len(self.outstanding) + len(new)) // per_step
            new.append(trajectory_pb2.Prompt(
                prompt_id=pid, problem=p.problem, answer=p.answer, dataset=p.dataset,
                step=self.step + 1 + ahead, min_version=self.min_version(ahead), group_size=self.group_size,
            ))
        for p in new:
            self.outstanding[p.prompt_id] = Outstanding(p, now)
        return new

    def overdue(self, now: float) -> list[trajectory_pb2.Prompt]:
        """Re-issues of outstanding prompts whose group has not arrived within reissue_after_seconds."""
        limit = now - self.reissue_after_seconds
        out = []
        for pid, rec in list(self.outstanding.items()):
            if rec.issued_at < limit and pid not in self.held:
                p = self._reissue(pid, None, now)
                if p is not None:
                    out.append(p)
        return out

    def _reissue(self, prompt_id: str, prompt: trajectory_pb2.Prompt | None,
                 now: float) -> trajectory_pb2.Prompt | None:
        """The next attempt of a prompt at the current min version (None: nothing to re-issue)."""
        rec = self.outstanding.get(prompt_id)
        base = rec.prompt if rec is not None else prompt
        if base is None or not base.prompt_id or prompt_id in self.applied_ids or prompt_id in self.held:
            return None
        p = trajectory_pb2.Prompt()
        p.CopyFrom(base)
        p.attempt = base.attempt + 1
        p.min_version.CopyFrom(self.min_version())
        self.outstanding[prompt_id] = Outstanding(p, now)
        self.counters.reissued += 1
        return p

    # -- checkpoints -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "cursor": self.cursor,
            "incarnation": self.incarnation,
            "applied_ids": sorted(self.applied_ids),
            "outstanding": [base64.b64encode(o.prompt.SerializeToString()).decode()
                            for o in self.outstanding.values()],
            "counters": self.counters.as_dict(),
            "run_id": self.run_id,
        }

    def restore(self, state: dict[str, Any], now: float) -> None:
        if state.get("run_id", self.run_id) != self.run_id:
            raise ValueError(f"checkpoint belongs to run {state.get('run_id')!r}, not {self.run_id!r}")
        self.step = int(state["step"])
        self.cursor = int(state["cursor"])
        self.applied_ids = set(state.get("applied_ids", []))
        self.outstanding = {}
        for raw in state.get("outstanding", []):
            p = trajectory_pb2.Prompt.FromString(base64.b64decode(raw))
            self.outstanding[p.prompt_id] = Outstanding(p, now)
        self.counters = Counters(**state.get("counters", {}))
