"""Redis adapter: prompts in through the consumer group `rollout`, TrajectoryGroups out.

- Prompts are read from `torl:{run}:prompts` with XREADGROUP (group `rollout`, consumer = the
  replica id); on start the replica first re-reads its own pending entries (a restart resumes
  them).
- Prompts held by a replica that died (kill -9, lost node) stay pending under its name. Every
  `heartbeat_seconds` a replica refreshes the idle time of the entries it holds (XCLAIM JUSTID
  to itself, only while it still owns them) and claims entries idle longer than
  `claim_idle_seconds` (XAUTOCLAIM), so another replica, or the same one restarted, completes them.
- A prompt is acked only in the same atomic step (a Lua script) as the XADD of its group to
  `torl:{run}:trajectories` (MAXLEN ~), and only if this replica still owns the entry: a replica
  whose prompt was claimed away while it was stalled drops its copy instead of writing a second
  group. A crash therefore never loses a prompt, and two live replicas do not both write one.
  (The learner also drops a second group with the same group id, so a duplicate that slips through,
  e.g. after a Redis failover, costs only compute.)
- A prompt whose min_version is ahead of the serving weights waits until served. While it waits
  its entry gets no heartbeat: if this replica stays behind (e.g. restarted on its base weights and
  not pushed the current ones), a replica that serves the version claims it after
  `claim_idle_seconds`, and this one, once it catches up, sees it no longer owns the entry and skips it.
- A prompt that cannot be generated at all (undecodable, empty, over the prompt budget with
  `reject`) goes to `torl:{run}:dead` with the reason (fields `p` and `reason`) and is acked.
- Prompts submitted over gRPC (SubmitPrompts) join the same workers; their groups are written
  to the same stream (they have no stream entry to ack).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from google.protobuf.message import DecodeError

from torl.common.errors import InvalidArgument
from torl.common.logging import get_logger
from torl.common.redis_layout import PAYLOAD_FIELD, PROMPT_GROUP, RunKeys
from torl.rollout import metrics
from torl.rollout.core import RolloutCore
from torl.v1 import trajectory_pb2

log = get_logger("torl.rollout.queue")
DEAD_MAXLEN = 100_000

# KEYS: prompts, output stream. ARGV: group, consumer, entry id, maxlen, then field/value pairs.
# Appends the entry and acks the prompt only while `consumer` still owns it; returns 1 or 0.
_WRITE_IF_OWNER = """
local owned = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #owned == 0 then return 0 end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(fields))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# KEYS: prompts. ARGV: group, consumer, entry ids. Resets the idle time of the ids `consumer`
# still owns (XCLAIM JUSTID leaves the delivery count alone); returns how many it refreshed.
_TOUCH_OWNED = """
local n = 0
for i = 3, #ARGV do
  local owned = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #owned > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    n = n + 1
  end
end
return n
"""


class PromptQueue:
    def __init__(self, core: RolloutCore, redis_url: str, run_id: str, consumer: str,
                 maxlen: int, max_in_flight: int, block_ms: int, poll_seconds: float,
                 claim_idle_seconds: float = 600.0, heartbeat_seconds: float = 10.0) -> None:
        import redis.asyncio as aioredis

        self.core = core
        self.keys = RunKeys(run_id)
        self.consumer = consumer
        self.maxlen = maxlen
        self.block_ms = block_ms
        self.poll_seconds = poll_seconds
        self.claim_idle_ms = int(claim_idle_seconds * 1000)
        self.heartbeat_seconds = heartbeat_seconds
        self.redis: Any = aioredis.Redis.from_url(redis_url)
        self._write_if_owner: Any = self.redis.register_script(_WRITE_IF_OWNER)
        self._touch_owned: Any = self.redis.register_script(_TOUCH_OWNED)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        self.held: set[bytes] = set()  # stream entries this replica is working on
        self.waiting: set[bytes] = set()  # of those, entries waiting for a weight version (no heartbeat)
        self._claim_cursor: bytes | str = "0-0"
        self._reader: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        await self.ensure_group()
        self._reader = asyncio.create_task(self._read_loop())
        self._keeper = asyncio.create_task(self._keep_loop())

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.prompts, PROMPT_GROUP, id="0", mkstream=True)
        except Exception as e:  # BUSYGROUP: it exists already
            if "BUSYGROUP" not in str(e):
                raise

    def submit(self, prompt: trajectory_pb2.Prompt) -> None:
        """A prompt from SubmitPrompts (already validated)."""
        self.core.queued_prompts += 1
        self._spawn(self._process(None, prompt, None))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _take(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        self.held.add(entry_id)
        self.core.queued_prompts += 1
        self._spawn(self._handle(entry_id, fields))

    async def _drain_backlog(self) -> None:
        """Entries delivered to this consumer before a restart and never acked: resume them."""
        last: bytes | str = "0"
        while True:
            resp = await self.redis.xreadgroup(PROMPT_GROUP, self.consumer, {self.keys.prompts: last}, count=100)
            entries = resp[0][1] if resp else []
            if not entries:
                return
            for entry_id, fields in entries:
                last = entry_id
                if not fields:  # trimmed from the stream while pending: nothing left to generate
                    await self.redis.xack(self.keys.prompts, PROMPT_GROUP, entry_id)
                    continue
                if entry_id not in self.held:
                    metrics.PROMPTS_RESUMED.labels(source="own_backlog").inc()
                    self._take(entry_id, fields)

    async def _read_loop(self) -> None:
        backlog_done = False
        while not self._stopping:
            try:
                if not backlog_done:
                    await self._drain_backlog()
                    backlog_done = True
                free = self._max_in_flight - len(self._tasks)
                if free <= 0:
                    await asyncio.sleep(0.05)
                    continue
                resp = await self.redis.xreadgroup(
                    PROMPT_GROUP, self.consumer, {self.keys.prompts: ">"}, count=free, block=self.block_ms
                )
                for entry_id, fields in resp[0][1] if resp else []:
                    self._take(entry_id, fields)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.error("prompt_read_failed", error=f"{type(e).__name__}: {e}")
                await asyncio.sleep(1.0)

    async def _keep_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.heartbeat_seconds)
            try:
                await self.heartbeat()
                free = self._max_in_flight - len(self._tasks)
                if free > 0:
                    await self.claim_abandoned(free)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis away: try again next beat; held entries stay ours meanwhile
                log.error("prompt_keepalive_failed", error=f"{type(e).__name__}: {e}")

    async def heartbeat(self) -> int:
        """Reset the idle time of the entries this replica still owns; how many it refreshed."""
        return await self._touch(sorted(self.held - self.waiting))

    async def _touch(self, ids: list[bytes]) -> int:
        if not ids:
            return 0
        return int(await self._touch_owned(keys=[self.keys.prompts], args=[PROMPT_GROUP, self.consumer, *ids]))

    async def claim_abandoned(self, count: int) -> int:
        """Take over up to `count` entries idle past claim_idle (their replica died); how many it took.

        A replica that is itself waiting for a weight version is behind: it claims nothing (its own
        waiting entries are idle too, and XAUTOCLAIM would hand them back to it)."""
        if self.waiting:
            return 0
        taken = 0
        start = self._claim_cursor
        resp = await self.redis.xautoclaim(
            self.keys.prompts, PROMPT_GROUP, self.consumer, self.claim_idle_ms, start_id=start, count=count
        )
        self._claim_cursor = resp[0]
        for entry_id, fields in resp[1]:
            if entry_id in self.held:
                continue
            if not fields:  # the entry was trimmed from the stream: nothing left to generate
                await self.redis.xack(self.keys.prompts, PROMPT_GROUP, entry_id)
                continue
            log.warning("prompt_claimed", entry=entry_id.decode(), idle_ms_over=self.claim_idle_ms)
            metrics.PROMPTS_RESUMED.labels(source="claimed").inc()
            self._take(entry_id, fields)
            taken += 1
        return taken

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            raw = fields.get(PAYLOAD_FIELD, b"")
            prompt = trajectory_pb2.Prompt()
            try:
                prompt.ParseFromString(raw)
            except DecodeError as e:
                self.core.queued_prompts -= 1
                await self._dead(entry_id, raw, f"undecodable Prompt: {e}")
                return
            await self._process(entry_id, prompt, raw)
        finally:
            self.held.discard(entry_id)

    async def _process(self, entry_id: bytes | None, prompt: trajectory_pb2.Prompt, raw: bytes | None) -> None:
        async with self._slots:
            self.core.queued_prompts -= 1
            try:
                config = self.core.config_for(None)
                prepared = self.core.prepare(prompt, config)
                if entry_id is not None and not self.core.serving_at_least(prompt.min_version):
                    self.waiting.add(entry_id)
                    try:
                        await self.core.wait_for_version(prompt.min_version, self.poll_seconds)
                    finally:
                        self.waiting.discard(entry_id)
                    if not await self._touch([entry_id]):  # claimed meanwhile by a replica serving it
                        log.warning("prompt_claimed_elsewhere_while_waiting", entry=entry_id.decode(),
                                    prompt_id=prompt.prompt_id)
                        metrics.GROUPS.labels(outcome="lost_claim").inc()
                        return
                else:
                    await self.core.wait_for_version(prompt.min_version, self.poll_seconds)
                group = await self.core.run_group(prompt, config, prepared)
                await self.write(entry_id, group)
            except InvalidArgument as e:
                if entry_id is not None:
                    await self._dead(entry_id, raw or prompt.SerializeToString(), e.message)
                else:
                    log.warning("submitted_prompt_rejected", prompt_id=prompt.prompt_id, reason=e.message)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis down or similar: leave the entry pending, it is re-read later
                log.error("group_failed", prompt_id=prompt.prompt_id, error=f"{type(e).__name__}: {e}")

    async def write(self, entry_id: bytes | None, group: trajectory_pb2.TrajectoryGroup) -> bool:
        """Append the group (and ack its prompt, if it came from the stream); False if the prompt was
        claimed by another replica meanwhile, in which case nothing is written."""
        payload = group.SerializeToString()
        if entry_id is None:
            await self.redis.xadd(self.keys.trajectories, {PAYLOAD_FIELD: payload}, maxlen=self.maxlen,
                                  approximate=True)
        elif not await self._owned_append(self.keys.trajectories, entry_id, self.maxlen, [PAYLOAD_FIELD, payload]):
            log.warning("group_dropped_prompt_claimed_elsewhere", entry=entry_id.decode(), prompt_id=group.group_id)
            metrics.GROUPS.labels(outcome="lost_claim").inc()
            return False
        metrics.GROUPS.labels(outcome="stream").inc()
        return True

    async def _owned_append(self, stream: str, entry_id: bytes, maxlen: int, fields: list[bytes]) -> bool:
        args: list[Any] = [PROMPT_GROUP, self.consumer, entry_id, maxlen, *fields]
        return bool(await self._write_if_owner(keys=[self.keys.prompts, stream], args=args))

    async def _dead(self, entry_id: bytes, raw: bytes, reason: str) -> None:
        log.warning("prompt_dead", entry=entry_id.decode(), reason=reason)
        if await self._owned_append(self.keys.dead, entry_id, DEAD_MAXLEN,
                                    [PAYLOAD_FIELD, raw, b"reason", reason.encode()]):
            metrics.GROUPS.labels(outcome="dead").inc()
        else:
            metrics.GROUPS.labels(outcome="lost_claim").inc()

    async def close(self) -> None:
        self._stopping = True
        for task in (self._reader, self._keeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()
