"""The prompt feed and version ledger (no Redis): feed order and min versions, accept / duplicate /
stale / unusable / dead decisions, re-issue of dropped and overdue prompts, the staleness rule
across incarnations, apply and checkpoint round trip; and how a step's batch is split over ranks."""

from __future__ import annotations

import pytest

from torl.learner.datasets import FeedOrder, Problem
from torl.learner.grpo import Sample
from torl.learner.ledger import Ledger, Verdict
from torl.learner.ranks import shard
from torl.v1 import common_pb2, trajectory_pb2

PROBLEMS = [Problem(f"p{i}", f"What is {i}+1?", str(i + 1), "toy") for i in range(6)]


def ledger(max_staleness: int = 0, per_step: int = 2, reissue_after: float = 10.0) -> Ledger:
    led = Ledger("run", PROBLEMS, FeedOrder(len(PROBLEMS), seed=0, shuffle=False), prompts_per_step=per_step,
                 group_size=2, max_staleness=max_staleness, reissue_after_seconds=reissue_after)
    led.begin(incarnation=1)
    return led


def group(gid: str, inc: int = 1, step: int = 0, excluded: bool = False,
          prompt: trajectory_pb2.Prompt | None = None) -> trajectory_pb2.TrajectoryGroup:
    v = common_pb2.WeightVersion(incarnation=inc, step=step)
    g = trajectory_pb2.TrajectoryGroup(group_id=gid, prompt=prompt or trajectory_pb2.Prompt(prompt_id=gid))
    for i in range(2):
        g.trajectories.add(trajectory_id=f"{gid}-{i}", version_start=v, excluded=excluded)
    return g


def test_feed_keeps_staleness_plus_one_steps_outstanding_in_order() -> None:
    led = ledger(max_staleness=1, per_step=2)
    led.step = 3
    led.begin(incarnation=2)  # resumed at step 3
    first = led.feed(now=0.0)
    assert [p.prompt_id for p in first] == ["run-e0-0", "run-e0-1", "run-e0-2", "run-e0-3"]
    assert [p.step for p in first] == [4, 4, 5, 5]
    # Trained now: at most 1 version old, but never older than the resume point.
    assert [(p.min_version.incarnation, p.min_version.step) for p in first] == [(2, 3), (2, 3), (2, 3), (2, 3)]
    assert led.feed(now=1.0) == []  # already topped up
    led.apply(["run-e0-0", "run-e0-1"])
    nxt = led.feed(now=2.0)
    assert [p.prompt_id for p in nxt] == ["run-e0-4", "run-e0-5"]
    assert [p.min_version.step for p in nxt] == [4, 4]  # trained at step 6 at the latest: 5 is 1 old
    assert [p.prompt_id for p in ledger().feed(0.0)] == ["run-e0-0", "run-e0-1"]


def test_judge_ready_duplicate_stale_unusable_dead() -> None:
    led = ledger()
    led.feed(now=0.0)
    assert led.judge(group("run-e0-0"), now=1.0).verdict is Verdict.READY
    assert led.judge(group("run-e0-0"), now=1.0).verdict is Verdict.DUPLICATE  # a copy of a held group
    assert led.judge(None, now=1.0).verdict is Verdict.DEAD
    stale = led.judge(group("run-e0-1", inc=0, step=3), now=1.0)  # weights of a dead learner past its resume
    assert stale.verdict is Verdict.STALE
    assert stale.reissue is not None and stale.reissue.attempt == 1 and stale.reissue.prompt_id == "run-e0-1"
    unusable = led.judge(group("run-e0-1", excluded=True), now=2.0)
    assert unusable.verdict is Verdict.UNUSABLE and unusable.reissue is not None and unusable.reissue.attempt == 2
    led.apply(["run-e0-0"])
    assert led.judge(group("run-e0-0"), now=3.0).verdict is Verdict.DUPLICATE  # applied already
    assert led.counters.as_dict() == {"applied": 1, "dropped_stale": 1, "dropped_unusable": 1, "dead": 1,
                                      "duplicate": 2, "reissued": 2}


def test_group_read_ahead_is_judged_again_when_taken() -> None:
    led = ledger(max_staleness=1)
    led.feed(now=0.0)
    g = group("run-e0-0", step=0)
    assert led.judge(g, now=0.0).verdict is Verdict.READY
    led.apply(["run-e0-9"])
    assert led.take(g, now=1.0).staleness == 1
    led.apply(["run-e0-8"])  # two versions later it is too old for max_staleness 1
    d = led.take(g, now=2.0)
    assert d.verdict is Verdict.STALE and d.reissue is not None
    assert "run-e0-0" not in led.held  # its re-issued copy may be accepted again


def test_overdue_prompts_are_reissued_unless_arrived() -> None:
    led = ledger(reissue_after=10.0)
    led.feed(now=0.0)
    assert led.overdue(now=5.0) == []
    led.judge(group("run-e0-0"), now=6.0)  # arrived: never re-issued
    again = led.overdue(now=11.0)
    assert [p.prompt_id for p in again] == ["run-e0-1"] and again[0].attempt == 1
    assert led.overdue(now=12.0) == []  # its clock restarted at 11
    assert [p.prompt_id for p in led.overdue(now=22.0)] == ["run-e0-1"]


@pytest.mark.parametrize(("inc", "step", "expected"), [
    (2, 7, 0), (2, 5, 2), (1, 5, 2),  # ours: this incarnation, or an earlier one at or before the resume point
    (1, 6, None),  # a dead learner's step that never reached a checkpoint
    (3, 0, None), (2, 8, None),  # from the future
])
def test_staleness_rule_across_incarnations(inc: int, step: int, expected: int | None) -> None:
    led = ledger()
    led.step = 5
    led.begin(incarnation=2)
    led.step = 7
    assert led.staleness_of(group("g", inc=inc, step=step)) == expected


def test_snapshot_restore_round_trip() -> None:
    led = ledger()
    led.feed(now=0.0)
    led.judge(group("run-e0-0"), now=0.0)
    led.apply(["run-e0-0"])
    state = led.snapshot()
    other = ledger()
    other.restore(state, now=100.0)
    assert (other.step, other.cursor, other.applied_ids) == (1, 2, {"run-e0-0"})
    assert list(other.outstanding) == ["run-e0-1"] and other.outstanding["run-e0-1"].issued_at == 100.0
    assert other.counters == led.counters
    with pytest.raises(ValueError, match="belongs to run"):
        ledger().restore({**state, "run_id": "other"}, now=0.0)


def _sample(n: int) -> Sample:
    return Sample([1] * 2, [3] * n, [0.0] * n, [1] * n, 1.0)


def test_shard_gives_every_rank_the_same_number_of_micro_batches() -> None:
    samples = [_sample(n) for n in (9, 1, 5, 7, 3)]  # 5 sequences over 2 ranks: uneven
    parts = shard(samples, world_size=2, micro_batch_size=2)
    assert [len(p) for p in parts] == [2, 2]
    assert [[len(mb) for mb in p] for p in parts] == [[2, 1], [2, 0]]  # rank 1 pads with an empty one
    flat = [s for p in parts for mb in p for s in mb]
    assert sorted(len(s.response_ids) for s in flat) == [1, 3, 5, 7, 9]  # each sample exactly once
    assert [len(s.response_ids) for s in parts[0][0]] == [9, 5]  # dealt longest first: tokens balanced
    # More ranks than samples: the idle rank still runs the one (empty) micro-batch.
    assert [[len(mb) for mb in p] for p in shard(samples[:1], 2, 4)] == [[1], [0]]
    assert shard([], 2, 4) == [[], []]
