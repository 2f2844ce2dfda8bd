"""Redis adapter: prompts in through the consumer group `rollout`, TrajectoryGroups out.

- Prompts are read from `torl:{run}:prompts` with XREADGROUP (group `rollout`, consumer = the
  replica id); on start the replica first re-reads its own pending entries (a restart resumes
  them). A prompt is acked only in the same MULTI as the XADD of its group to
  `torl:{run}:trajectories` (MAXLEN ~), so a crash never loses or duplicates one.
- A prompt whose min_version is ahead of the serving weights waits until it is served.
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


class PromptQueue:
    def __init__(self, core: RolloutCore, redis_url: str, run_id: str, consumer: str,
                 maxlen: int, max_in_flight: int, block_ms: int, poll_seconds: float) -> None:
        import redis.asyncio as aioredis

        self.core = core
        self.keys = RunKeys(run_id)
        self.consumer = consumer
        self.maxlen = maxlen
        self.block_ms = block_ms
        self.poll_seconds = poll_seconds
        self.redis: Any = aioredis.Redis.from_url(redis_url)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        await self.ensure_group()
        self._reader = asyncio.create_task(self._read_loop())

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
                self.core.queued_prompts += 1
                self._spawn(self._handle(entry_id, fields))

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
                    self.core.queued_prompts += 1
                    self._spawn(self._handle(entry_id, fields))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.error("prompt_read_failed", error=f"{type(e).__name__}: {e}")
                await asyncio.sleep(1.0)

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        raw = fields.get(PAYLOAD_FIELD, b"")
        prompt = trajectory_pb2.Prompt()
        try:
            prompt.ParseFromString(raw)
        except DecodeError as e:
            self.core.queued_prompts -= 1
            await self._dead(entry_id, raw, f"undecodable Prompt: {e}")
            return
        await self._process(entry_id, prompt, raw)

    async def _process(self, entry_id: bytes | None, prompt: trajectory_pb2.Prompt, raw: bytes | None) -> None:
        async with self._slots:
            self.core.queued_prompts -= 1
            try:
                config = self.core.config_for(None)
                prepared = self.core.prepare(prompt, config)
                await self.core.wait_for_version(prompt.min_version, self.poll_seconds)
                group = await self.core.run_group(prompt, config, prepared)
                await self._write(entry_id, group)
            except InvalidArgument as e:
                if entry_id is not None:
                    await self._dead(entry_id, raw or prompt.SerializeToString(), e.message)
                else:
                    log.warning("submitted_prompt_rejected", prompt_id=prompt.prompt_id, reason=e.message)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis down or similar: leave the entry pending, it is re-read later
                log.error("group_failed", prompt_id=prompt.prompt_id, error=f"{type(e).__name__}: {e}")

    async def _write(self, entry_id: bytes | None, group: trajectory_pb2.TrajectoryGroup) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.trajectories, {PAYLOAD_FIELD: group.SerializeToString()},
                      maxlen=self.maxlen, approximate=True)
            if entry_id is not None:
                pipe.xack(self.keys.prompts, PROMPT_GROUP, entry_id)
            await pipe.execute()
        metrics.GROUPS.labels(outcome="stream").inc()

    async def _dead(self, entry_id: bytes, raw: bytes, reason: str) -> None:
        log.warning("prompt_dead", entry=entry_id.decode(), reason=reason)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.dead, {PAYLOAD_FIELD: raw, b"reason": reason.encode()},
                      maxlen=DEAD_MAXLEN, approximate=True)
            pipe.xack(self.keys.prompts, PROMPT_GROUP, entry_id)
            await pipe.execute()
        metrics.GROUPS.labels(outcome="dead").inc()

    async def close(self) -> None:
        self._stopping = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()
