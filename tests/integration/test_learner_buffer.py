"""The learner's Redis buffer against a real redis-server: prompt feed, pending re-claim after a
restart, acks, dead letters for malformed groups, MAXLEN and memory reporting, and riding out a
Redis restart (retries with backoff, counted; nothing lost)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from tests.conftest import free_port, require_binary
from tests.e2e.helpers import RedisServer
from torl.cli.local import Supervisor
from torl.common.redis_layout import PAYLOAD_FIELD, PROMPT_GROUP, TRAJECTORY_GROUP, RunKeys
from torl.learner.buffer import RedisBuffer, RedisUnavailable, validate_group
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


def read_until(buf: RedisBuffer, want: int, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    got: list[str] = []
    while len(got) < want and time.monotonic() < deadline:
        got += [e.entry_id for e in buf.read(10, 100)]
    return got


def test_buffer_rides_out_redis_restarts(tmp_path: Path) -> None:
    """Redis restarted (graceful, AOF) while the learner reads: commands are retried with backoff,
    counted, and nothing is lost — an entry whose reply died with the connection is re-read from
    this consumer's pending list; Redis back without its data gets its consumer groups again."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        errors_before = REGISTRY.get_sample_value("torl_learner_redis_errors_total", {"op": "read"}) or 0.0
        buf = RedisBuffer(server.url, "r5", BufferSettings(claim_min_idle_ms=0), retry_seconds=30)
        buf.ensure_streams()
        first = add(server.url, "r5", group("g0").SerializeToString())
        assert read_until(buf, 1) == [first]
        # An entry delivered to this consumer whose reply never reached it (lost with the connection).
        lost = add(server.url, "r5", group("g1").SerializeToString())
        raw = redis.Redis.from_url(server.url)
        raw.xreadgroup(TRAJECTORY_GROUP, "learner-0", {RunKeys("r5").trajectories: ">"}, count=10)
        raw.close()

        server.stop_graceful()
        restarter = threading.Timer(2.0, server.start)
        restarter.start()
        t0 = time.monotonic()
        buf.publish_prompts([trajectory_pb2.Prompt(prompt_id="p-during-outage", problem="q", answer="1")])
        waited = time.monotonic() - t0
        restarter.join()
        assert waited >= 1.0, "publish returned while Redis was down"
        assert buf.errors >= 1 and buf.unavailable_seconds >= 1.0, (buf.errors, buf.unavailable_seconds)
        r = redis.Redis.from_url(server.url)
        assert r.xlen(RunKeys("r5").prompts) == 1

        # A read while Redis is down is retried until it is back, then this consumer's own pending
        # list is read again: the entry whose reply was lost comes back, and new entries follow.
        server.stop_graceful()
        later: list[str] = []

        def restart_and_write() -> None:
            server.start()
            later.append(add(server.url, "r5", group("g2").SerializeToString()))

        restarter = threading.Timer(1.0, restart_and_write)
        restarter.start()
        got = read_until(buf, 2)
        restarter.join()
        assert sorted(got) == sorted([lost, *later])
        errors = REGISTRY.get_sample_value("torl_learner_redis_errors_total", {"op": "read"}) or 0.0
        assert errors > errors_before
        assert buf.ack([first, lost, *later]) == 3
        assert buf.pending_count() == 0

        # Redis back empty (no persistence): the consumer group is created again and reading goes on.
        server.kill9()
        fresh = RedisServer(tmp_path / "redis-empty", port=server.port)
        fresh.start()
        try:
            new = add(fresh.url, "r5", group("g3").SerializeToString())
            assert read_until(buf, 1) == [new]
        finally:
            fresh.close()
        buf.close()
    finally:
        server.close()


def test_buffer_gives_up_after_its_retry_budget_or_when_stopped(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    buf = RedisBuffer(server.url, "r6", BufferSettings(), retry_seconds=1.5)
    buf.ensure_streams()
    server.close()
    t0 = time.monotonic()
    with pytest.raises(RedisUnavailable, match=r"Redis unavailable for 1\.\ds during read \(retry budget 2s\)"):
        buf.read(10, 100)
    assert 1.4 <= time.monotonic() - t0 < 10.0
    stop = threading.Event()
    stopped = RedisBuffer(server.url, "r6", BufferSettings(), retry_seconds=600, stop=stop)
    threading.Timer(0.5, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(RedisUnavailable, match="during ack"):
        stopped.ack(["1-0"])
    assert time.monotonic() - t0 < 5.0, "a stopped learner kept waiting for Redis"
