"""The rollout's Redis adapter against a real redis-server: abandoned prompts are re-delivered,
prompts a live replica holds are not, and a prompt is never written twice by two live replicas.

Generation itself is replaced by `ScriptedCore` (a group per prompt, as slow as a test needs) so
these run in seconds; tests/integration/test_rollout_service.py runs the same queue with the real
engine, executor and reward."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import free_port, require_binary
from torl.common.redis_layout import PAYLOAD_FIELD, PROMPT_GROUP, RunKeys
from torl.rollout.loop import LoopConfig, PreparedPrompt
from torl.rollout.queue import PromptQueue
from torl.v1 import common_pb2, trajectory_pb2

pytestmark = pytest.mark.timeout(120)
RUN = "qtest"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = require_binary("redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


class ScriptedCore:
    """Stands in for RolloutCore: a one-trajectory group per prompt after `seconds`."""

    def __init__(self, seconds: float, serving: bool = True) -> None:
        self.seconds = seconds
        self.queued_prompts = 0
        self.generated: list[str] = []
        self.serving = serving  # False: behind every prompt's min_version until set

    def config_for(self, overrides: object) -> LoopConfig:
        return LoopConfig(prompt_template="{problem}")

    def prepare(self, prompt: trajectory_pb2.Prompt, config: LoopConfig) -> PreparedPrompt:
        return PreparedPrompt([1, 2, 3])

    def serving_at_least(self, v: common_pb2.WeightVersion) -> bool:
        return self.serving

    async def wait_for_version(self, v: common_pb2.WeightVersion, poll_seconds: float) -> None:
        while not self.serving:
            await asyncio.sleep(poll_seconds)

    async def run_group(self, prompt: trajectory_pb2.Prompt, config: LoopConfig,
                        prepared: PreparedPrompt) -> trajectory_pb2.TrajectoryGroup:
        await asyncio.sleep(self.seconds)
        self.generated.append(prompt.prompt_id)
        return trajectory_pb2.TrajectoryGroup(group_id=prompt.prompt_id, prompt=prompt,
                                              trajectories=[trajectory_pb2.Trajectory(trajectory_id="t")])


def make_queue(url: str, run: str, consumer: str, core: ScriptedCore, claim_idle: float,
               heartbeat: float) -> PromptQueue:
    return PromptQueue(core, url, run, consumer, maxlen=1000, max_in_flight=4, block_ms=50,
                       poll_seconds=0.05, claim_idle_seconds=claim_idle, heartbeat_seconds=heartbeat)


def group_ids(client: object, keys: RunKeys) -> list[str]:
    return [trajectory_pb2.TrajectoryGroup.FromString(f[PAYLOAD_FIELD]).group_id
            for _id, f in client.xrange(keys.trajectories)]  # type: ignore[attr-defined]


def add_and_grab(client: object, keys: RunKeys, prompt_id: str, consumer: str) -> bytes:
    """XADD a prompt and deliver it to `consumer` in one transaction (no live replica sees it first)."""
    pipe = client.pipeline(transaction=True)  # type: ignore[attr-defined]
    pipe.xgroup_create(keys.prompts, PROMPT_GROUP, id="0", mkstream=True)
    prompt = trajectory_pb2.Prompt(prompt_id=prompt_id, problem="p")
    pipe.xadd(keys.prompts, {PAYLOAD_FIELD: prompt.SerializeToString()})
    pipe.xreadgroup(PROMPT_GROUP, consumer, {keys.prompts: ">"}, count=1)
    results = pipe.execute(raise_on_error=False)
    entries = results[2][0][1]
    assert len(entries) == 1
    return bytes(entries[0][0])


async def wait_until(cond: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_prompt_of_a_dead_consumer_is_claimed_and_completed_once(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    run = RUN + "-dead"
    keys = RunKeys(run)
    entry = add_and_grab(client, keys, "orphan", "killed-replica")  # claimed, never acked

    async def scenario() -> ScriptedCore:
        core = ScriptedCore(0.05)
        q = make_queue(redis_url, run, "live", core, claim_idle=1.0, heartbeat=0.2)
        await q.start()
        try:
            await asyncio.sleep(0.5)
            assert core.generated == [], "claimed before the entry was idle for claim_idle_seconds"
            await wait_until(lambda: core.generated == ["orphan"], 10)
            await wait_until(lambda: client.xpending(keys.prompts, PROMPT_GROUP)["pending"] == 0, 5)
        finally:
            await q.close()
        return core

    asyncio.run(scenario())
    assert group_ids(client, keys) == ["orphan"]
    assert client.xpending(keys.prompts, PROMPT_GROUP)["pending"] == 0
    assert entry  # the entry the dead consumer held is the one that completed


def test_heartbeat_keeps_a_long_generation_from_being_claimed(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    run = RUN + "-long"
    keys = RunKeys(run)

    async def scenario() -> tuple[ScriptedCore, ScriptedCore]:
        slow, fast = ScriptedCore(3.0), ScriptedCore(0.01)  # generation 3 s > claim_idle 1 s
        holder = make_queue(redis_url, run, "holder", slow, claim_idle=1.0, heartbeat=0.2)
        await holder.start()
        client.xadd(keys.prompts, {PAYLOAD_FIELD: trajectory_pb2.Prompt(prompt_id="long", problem="p")
                                   .SerializeToString()})
        await wait_until(lambda: holder.held, 5)
        other = make_queue(redis_url, run, "other", fast, claim_idle=1.0, heartbeat=0.2)
        await other.start()
        idle_ms: list[int] = []
        try:
            while not slow.generated:
                idle_ms += [int(p["time_since_delivered"]) for p in client.xpending_range(keys.prompts, PROMPT_GROUP,
                                                                                     "-", "+", 10)]
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
        finally:
            await other.close()
            await holder.close()
        # the holder's heartbeat kept its entry fresh the whole time (never near claim_idle)
        assert idle_ms and max(idle_ms) < 700, max(idle_ms)
        return slow, fast

    slow, fast = asyncio.run(scenario())
    assert slow.generated == ["long"]
    assert fast.generated == [], "a live replica's prompt was claimed while it was generating"
    assert group_ids(client, keys) == ["long"]
    assert client.xpending(keys.prompts, PROMPT_GROUP)["pending"] == 0


def test_stalled_replica_does_not_write_a_claimed_prompt_twice(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    run = RUN + "-stall"
    keys = RunKeys(run)
    entry = add_and_grab(client, keys, "contested", "stalled")

    async def scenario() -> tuple[bool, bool]:
        # "stalled" holds the entry but sent no heartbeat (a long pause); "taker" claims it after 1 s.
        stalled = make_queue(redis_url, run, "stalled", ScriptedCore(0.0), claim_idle=1.0, heartbeat=0.2)
        taker = make_queue(redis_url, run, "taker", ScriptedCore(0.0), claim_idle=1.0, heartbeat=0.2)
        group = trajectory_pb2.TrajectoryGroup(group_id="contested")
        try:
            await asyncio.sleep(1.2)
            assert await taker.claim_abandoned(4) == 1
            await wait_until(lambda: client.xpending(keys.prompts, PROMPT_GROUP)["pending"] == 0, 5)
            late = await stalled.write(entry, group)  # the stalled replica finishes afterwards
            # and the heartbeat of a replica that lost an entry does not take it back
            stalled.held.add(entry)
            touched = await stalled.heartbeat()
        finally:
            await taker.close()
            await stalled.close()
        return late, touched == 0

    late, not_retaken = asyncio.run(scenario())
    assert late is False and not_retaken
    assert group_ids(client, keys) == ["contested"]


def test_restarted_replica_resumes_its_own_backlog(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    run = RUN + "-restart"
    keys = RunKeys(run)
    add_and_grab(client, keys, "mine", "rollout-7")  # delivered to rollout-7, which was then killed

    async def scenario() -> ScriptedCore:
        core = ScriptedCore(0.01)
        q = make_queue(redis_url, run, "rollout-7", core, claim_idle=600.0, heartbeat=10.0)
        await q.start()
        try:
            await wait_until(lambda: core.generated == ["mine"], 10)
            await wait_until(lambda: client.xpending(keys.prompts, PROMPT_GROUP)["pending"] == 0, 5)
        finally:
            await q.close()
        return core

    asyncio.run(scenario())
    assert group_ids(client, keys) == ["mine"]


def test_claim_idle_must_outlast_missed_heartbeats() -> None:
    from pydantic import ValidationError

    from torl.rollout.config import QueueSettings

    with pytest.raises(ValidationError, match="at least 3 x heartbeat_seconds"):
        QueueSettings(claim_idle_seconds=10, heartbeat_seconds=5)
    assert QueueSettings(claim_idle_seconds=30, heartbeat_seconds=10).claim_idle_seconds == 30


def test_prompt_waiting_on_a_lagging_replica_goes_to_one_that_serves_its_version(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    run = RUN + "-lag"
    keys = RunKeys(run)

    async def scenario() -> tuple[ScriptedCore, ScriptedCore]:
        lagging, current = ScriptedCore(0.01, serving=False), ScriptedCore(0.01)
        behind = make_queue(redis_url, run, "restarted-on-base-weights", lagging, claim_idle=1.0, heartbeat=0.2)
        await behind.start()
        prompt = trajectory_pb2.Prompt(prompt_id="v-ahead", problem="p",
                                       min_version=common_pb2.WeightVersion(incarnation=1, step=5))
        client.xadd(keys.prompts, {PAYLOAD_FIELD: prompt.SerializeToString()})
        await wait_until(lambda: behind.waiting, 5)
        ahead = make_queue(redis_url, run, "serving-1-5", current, claim_idle=1.0, heartbeat=0.2)
        await ahead.start()
        try:
            await wait_until(lambda: current.generated == ["v-ahead"], 10)
            lagging.serving = True  # the lagging replica catches up later
            await wait_until(lambda: not behind.held, 5)
        finally:
            await ahead.close()
            await behind.close()
        return lagging, current

    lagging, current = asyncio.run(scenario())
    assert current.generated == ["v-ahead"]
    assert lagging.generated == [], "the replica that lost the entry generated it anyway"
    assert group_ids(client, keys) == ["v-ahead"]
    assert client.xpending(keys.prompts, PROMPT_GROUP)["pending"] == 0
