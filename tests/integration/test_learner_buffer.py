"""The learner's Redis buffer against a real redis-server: prompt feed, pending re-claim after a
restart, acks, dead letters for malformed groups, MAXLEN and memory reporting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port, require_binary
from torl.cli.local import Supervisor
from torl.common.redis_layout import PAYLOAD_FIELD, PROMPT_GROUP, RunKeys
from torl.learner.buffer import RedisBuffer, validate_group
from torl.learner.config import BufferSettings
from torl.v1 import trajectory_pb2

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    require_binary("redis-server")
    port = free_port()
    with Supervisor(tmp_path / "logs") as sup:
        sup.wait_healthy(sup.start_redis(port, tmp_path / "redis"), 20)
        yield f"redis://127.0.0.1:{port}/0"


def group(gid: str, n: int = 2) -> trajectory_pb2.TrajectoryGroup:
    return trajectory_pb2.TrajectoryGroup(
        group_id=gid,
        prompt_token_ids=[1, 2, 3],
        trajectories=[
            trajectory_pb2.Trajectory(trajectory_id=f"{gid}-{i}", token_ids=[5, 6, 7], logprobs=[-0.1, -0.2, -0.3],
                                      loss_mask=[1, 0, 1], reward=1.0 if i == 0 else -1.0)
            for i in range(n)
        ],
    )


def add(url: str, run: str, payload: bytes | None) -> str:
    r = redis.Redis.from_url(url)
    fields = {PAYLOAD_FIELD: payload} if payload is not None else {b"other": b"x"}
    return str(r.xadd(RunKeys(run).trajectories, fields).decode())  # type: ignore[union-attr]


def test_prompts_reach_the_rollout_group_and_stream_is_capped(redis_url: str) -> None:
    buf = RedisBuffer(redis_url, "r1", BufferSettings(prompts_maxlen=100))
    buf.ensure_streams()
    buf.ensure_streams()  # idempotent
    prompts = [trajectory_pb2.Prompt(prompt_id=f"p{i}", problem=f"q{i}", answer=str(i)) for i in range(1000)]
    buf.publish_prompts(prompts)
    r = redis.Redis.from_url(redis_url)
    assert r.xlen(RunKeys("r1").prompts) <= 300  # approximate trimming keeps it near MAXLEN
    resp = r.xreadgroup(PROMPT_GROUP, "rollout-0", {RunKeys("r1").prompts: ">"}, count=1)
    got = trajectory_pb2.Prompt.FromString(resp[0][1][0][1][PAYLOAD_FIELD])  # type: ignore[index]
    assert got.prompt_id.startswith("p")
    mem = buf.memory()
    assert mem["used_memory_bytes"] > 0
    assert mem["prompts_len"] == r.xlen(RunKeys("r1").prompts)
    assert buf.next_incarnation() == 1
    assert buf.next_incarnation() == 2


def test_unacked_groups_are_redelivered_after_restart_and_ack_clears_them(redis_url: str) -> None:
    cfg = BufferSettings(claim_min_idle_ms=0)
    buf = RedisBuffer(redis_url, "r2", cfg)
    buf.ensure_streams()
    ids = [add(redis_url, "r2", group(f"g{i}").SerializeToString()) for i in range(3)]
    first = buf.read(10, 100)
    assert [e.entry_id for e in first] == ids
    assert all(e.group is not None and not e.redelivered for e in first)
    assert buf.pending_count() == 3
    buf.ack(ids[:1])
    # A new learner process with the same consumer name: pending entries come back first.
    again = RedisBuffer(redis_url, "r2", cfg)
    redelivered = again.read(10, 100)
    assert [e.entry_id for e in redelivered] == ids[1:]
    assert all(e.redelivered for e in redelivered)
    assert again.read(10, 50) == []  # then only new entries (none yet)
    new_id = add(redis_url, "r2", group("g9").SerializeToString())
    assert [e.entry_id for e in again.read(10, 100)] == [new_id]
    again.ack([*ids[1:], new_id])
    assert again.pending_count() == 0


def test_idle_pending_entries_of_another_consumer_are_claimed(redis_url: str) -> None:
    other = RedisBuffer(redis_url, "r3", BufferSettings(consumer="learner-old"))
    other.ensure_streams()
    eid = add(redis_url, "r3", group("g").SerializeToString())
    assert [e.entry_id for e in other.read(10, 100)] == [eid]
    mine = RedisBuffer(redis_url, "r3", BufferSettings(consumer="learner-new", claim_min_idle_ms=1))
    import time

    time.sleep(0.01)
    claimed = mine.read(10, 100)
    assert [e.entry_id for e in claimed] == [eid]
    assert claimed[0].redelivered


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xff\xff\xff\x0f", "not a TrajectoryGroup proto"),
        (None, "no payload field"),
        ("missing_logprobs", "missing logprobs"),
        ("mask_mismatch", "loss_mask length 2 != token_ids length 3"),
        ("no_trajectories", "no trajectories"),
    ],
)
def test_malformed_groups_go_to_dead_letters_with_reason(redis_url: str, payload: object, reason: str) -> None:
    buf = RedisBuffer(redis_url, "r4", BufferSettings())
    buf.ensure_streams()
    g = group("bad")
    if payload == "missing_logprobs":
        del g.trajectories[1].logprobs[:]
        raw: bytes | None = g.SerializeToString()
    elif payload == "mask_mismatch":
        del g.trajectories[0].loss_mask[-1]
        raw = g.SerializeToString()
    elif payload == "no_trajectories":
        del g.trajectories[:]
        raw = g.SerializeToString()
    else:
        raw = payload  # type: ignore[assignment]
    eid = add(redis_url, "r4", raw)
    good = add(redis_url, "r4", group("ok").SerializeToString())
    entries = buf.read(10, 100)
    assert [e.entry_id for e in entries] == [eid, good]
    bad, ok = entries
    assert bad.group is None and reason in bad.error
    assert ok.group is not None and ok.error == ""
    buf.dead_letter(bad, bad.error)
    dead = buf.dead_entries()
    assert len(dead) == 1 and dead[0]["entry_id"] == eid and reason in dead[0]["reason"]
    assert buf.pending_count() == 1  # the bad one was acked, the good one waits for a checkpoint


def test_excluded_trajectory_needs_no_token_arrays() -> None:
    g = group("g")
    g.trajectories[1].excluded = True
    del g.trajectories[1].logprobs[:]
    assert validate_group(g) == ""
    g.trajectories[0].loss_mask[0] = 2
    assert "0 or 1" in validate_group(g)
