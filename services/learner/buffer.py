"""The learner's one Redis adapter: prompt feed, trajectory consumer group, dead letters, acks.

Delivery is at-least-once (DESIGN.md "Versions, acks and resume"): a trajectory entry stays
pending in the `learner` consumer group until the orchestrator acks it, which it does only after
a checkpoint containing the entry's update is durable. After a restart the same consumer name
reads its own pending entries first (XREADGROUP from id 0), then claims entries other consumers
left idle (XAUTOCLAIM), then reads new ones. Malformed entries go to the `dead` stream with the
reason and are acked at once (the dead-letter copy is the durable record). Dedupe by group id is
the orchestrator's job (it owns the set of applied ids, saved in each checkpoint).

Redis may restart under a running learner (a pod rescheduled, a failover). Every command is
retried on connection and timeout errors with capped exponential backoff for up to
`retry_seconds` (the trainer passes loop.step_timeout_seconds), counted in
torl_learner_redis_errors_total and torl_learner_redis_unavailable_seconds_total. Retrying is safe
here: XREADGROUP of pending ids and XACK are idempotent; a reply lost with the connection leaves
its entries pending under this consumer, so after an error `read` re-reads its own pending list;
a re-sent XADD of prompts may duplicate a prompt, which dedupe by group id absorbs.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from google.protobuf.message import DecodeError
from redis.backoff import NoBackoff
from redis.retry import Retry

from torl.common.logging import get_logger
from torl.common.redis_layout import (
    PAYLOAD_FIELD,
    PROMPT_GROUP,
    TRAJECTORY_GROUP,
    RunKeys,
    format_version,
    parse_version,
)
from torl.learner import metrics as m
from torl.learner.config import BufferSettings
from torl.v1 import common_pb2, trajectory_pb2

log = get_logger("torl.learner.buffer")

T = TypeVar("T")
RETRYABLE = (redis.ConnectionError, redis.TimeoutError)


class RedisUnavailable(RuntimeError):
    """Redis did not answer within the retry budget (or the learner was stopped while waiting)."""


@dataclass
class Entry:
    """One entry read from the trajectory stream: a valid group, or a reason it is malformed."""

    entry_id: str
    raw: bytes
    group: trajectory_pb2.TrajectoryGroup | None
    error: str = ""
    redelivered: bool = False  # came from the pending list (read before a restart or by another consumer)


def validate_group(group: trajectory_pb2.TrajectoryGroup) -> str:
    """Why a decoded group cannot be trained on ('' when it can)."""
    if not group.group_id:
        return "missing group_id"
    if not group.trajectories:
        return "no trajectories"
    if not group.prompt_token_ids:
        return "missing prompt_token_ids"
    for i, t in enumerate(group.trajectories):
        n = len(t.token_ids)
        where = f"trajectory {i} ({t.trajectory_id or 'no id'})"
        if t.excluded:
            continue  # masked whole; its token arrays are never used
        if n == 0:
            return f"{where}: no token_ids"
        if len(t.logprobs) != n:
            return f"{where}: {len(t.logprobs)} logprobs for {n} token_ids (missing logprobs)"
        if len(t.loss_mask) != n:
            return f"{where}: loss_mask length {len(t.loss_mask)} != token_ids length {n}"
        if any(m not in (0, 1) for m in t.loss_mask):
            return f"{where}: loss_mask values must be 0 or 1"
        if not all(math.isfinite(x) for x in t.logprobs):
            return f"{where}: non-finite logprob"
        if not math.isfinite(t.reward):
            return f"{where}: non-finite reward"
    return ""


def decode_entry(entry_id: str, fields: dict[bytes, bytes], redelivered: bool = False) -> Entry:
    raw = fields.get(PAYLOAD_FIELD)
    if raw is None:
        return Entry(entry_id, b"", None, f"no payload field {PAYLOAD_FIELD.decode()!r}", redelivered)
    group = trajectory_pb2.TrajectoryGroup()
    try:
        group.ParseFromString(raw)
    except DecodeError as e:
        return Entry(entry_id, raw, None, f"not a TrajectoryGroup proto: {e}", redelivered)
    reason = validate_group(group)
    return Entry(entry_id, raw, None if reason else group, reason, redelivered)


def _id(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class RedisBuffer:
    """Streams of one run (`torl:{run_id}:*`) as the learner sees them."""

    def __init__(
        self,
        url: str,
        run_id: str,
        cfg: BufferSettings,
        client: redis.Redis | None = None,
        *,
        retry_seconds: float = 60.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.keys = RunKeys(run_id)
        self.cfg = cfg
        self.retry_seconds = retry_seconds
        self._stop = stop or threading.Event()
        # Typed as Any: redis-py's annotations do not distinguish bytes from decoded replies.
        # redis-py's own retries are off: `_call` owns retrying, so every error is counted and logged.
        self.r: Any = client or redis.Redis.from_url(
            url, socket_timeout=30, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0)
        )
        self._own_pending_cursor: str | None = "0"  # None once this consumer's old pending list is read
        self._next_claim = 0.0
        self._held: set[str] = set()  # read by this process and not yet acked: never handed out twice
        self.errors = 0  # connection/timeout errors seen (each retried)
        self.unavailable_seconds = 0.0  # time spent waiting for Redis to come back

    def _call(self, op: str, fn: Callable[[], T]) -> T:
        """Run one Redis command, retrying connection/timeout errors with capped exponential
        backoff (0.2 s doubling to 5 s) for up to `retry_seconds`; a lost consumer group (Redis
        came back without its data) is created again."""
        delay = 0.2
        first_error: float | None = None
        recreate_groups = False
        while True:
            try:
                if recreate_groups:
                    self._create_groups()
                return fn()
            except RETRYABLE as e:
                error: Exception = e
            except redis.ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                error = e
                recreate_groups = True
            now = time.monotonic()
            first_error = now if first_error is None else first_error
            self.errors += 1
            m.REDIS_ERRORS.labels(op=op).inc()
            waited = now - first_error
            if waited >= self.retry_seconds or self._stop.is_set():
                raise RedisUnavailable(
                    f"Redis unavailable for {waited:.1f}s during {op} (retry budget {self.retry_seconds:.0f}s): "
                    f"{type(error).__name__}: {error}"
                ) from error
            log.warning("redis_retry", op=op, error=f"{type(error).__name__}: {error}", retry_in=delay,
                        waited_seconds=round(waited, 2))
            self._stop.wait(min(delay, self.retry_seconds - waited))
            slept = time.monotonic() - now
            self.unavailable_seconds += slept
            m.REDIS_UNAVAILABLE_SECONDS.inc(slept)
            delay = min(delay * 2, 5.0)
            if op in ("read", "autoclaim"):
                # A reply lost with the connection left its entries pending under this consumer.
                self._own_pending_cursor = "0"

    def ensure_streams(self) -> None:
        """Create both streams and their consumer groups (idempotent)."""
        self._call("ensure_streams", self._create_groups)

    def _create_groups(self) -> None:
        for key, group in ((self.keys.prompts, PROMPT_GROUP), (self.keys.trajectories, TRAJECTORY_GROUP)):
            try:
                self.r.xgroup_create(key, group, id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    # -- prompts ---------------------------------------------------------------------------------
    def publish_prompts(self, prompts: Sequence[trajectory_pb2.Prompt]) -> list[str]:
        payloads = [p.SerializeToString() for p in prompts]

        def send() -> list[Any]:
            pipe = self.r.pipeline(transaction=False)
            for payload in payloads:
                pipe.xadd(self.keys.prompts, {PAYLOAD_FIELD: payload}, maxlen=self.cfg.prompts_maxlen,
                          approximate=True)
            return list(pipe.execute())

        return [_id(x) for x in self._call("publish_prompts", send)]

    # -- run state -------------------------------------------------------------------------------
    def set_version(self, version: common_pb2.WeightVersion) -> None:
        self._call("set_version", lambda: self.r.set(self.keys.version, format_version(version)))

    def get_version(self) -> common_pb2.WeightVersion:
        return parse_version(self._call("get_version", lambda: self.r.get(self.keys.version)))

    def write_state(self, fields: dict[str, str | int]) -> None:
        self._call("write_state", lambda: self.r.hset(self.keys.state, mapping=fields))

    def read_state(self) -> dict[str, str]:
        raw: dict[bytes, bytes] = self._call("read_state", lambda: self.r.hgetall(self.keys.state))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def next_incarnation(self) -> int:
        """A number larger than any earlier learner of this run used (atomic; a retry may skip one)."""
        return int(self._call("next_incarnation", lambda: self.r.hincrby(self.keys.state, "incarnation", 1)))

    # -- trajectories ----------------------------------------------------------------------------
    def read(self, count: int, block_ms: int) -> list[Entry]:
        """Next entries: own pending after a restart, then idle ones of others, then new ones.

        An entry is handed out once per process; it stays pending in Redis until `ack`.
        """
        if self._own_pending_cursor is not None:
            got = self._read_group(self._own_pending_cursor, count, None)
            if got:
                self._own_pending_cursor = got[-1][0]
                return self._hold([decode_entry(i, f, redelivered=True) for i, f in got])
            self._own_pending_cursor = None
        claimed = self._hold(self._autoclaim(count))
        if claimed:
            return claimed
        return self._hold([decode_entry(i, f) for i, f in self._read_group(">", count, block_ms)])

    def _hold(self, entries: list[Entry]) -> list[Entry]:
        fresh = [e for e in entries if e.entry_id not in self._held]
        self._held.update(e.entry_id for e in fresh)
        return fresh

    def _read_group(self, start: str, count: int, block_ms: int | None) -> list[tuple[str, dict[bytes, bytes]]]:
        resp = self._call("read", lambda: self.r.xreadgroup(
            TRAJECTORY_GROUP, self.cfg.consumer, {self.keys.trajectories: start}, count=count, block=block_ms
        ))
        out: list[tuple[str, dict[bytes, bytes]]] = []
        trimmed: list[Any] = []  # pending entries trimmed away by MAXLEN: nothing left to read
        for _stream, items in resp or []:
            for entry_id, fields in items:
                if fields is None:
                    trimmed.append(entry_id)
                    continue
                out.append((_id(entry_id), fields))
        if trimmed:
            self._call("ack", lambda: self.r.xack(self.keys.trajectories, TRAJECTORY_GROUP, *trimmed))
        return out

    def _autoclaim(self, count: int) -> list[Entry]:
        # Scanning the pending list costs O(pending): do it at most once per idle period.
        now = time.monotonic()
        if self.cfg.claim_min_idle_ms <= 0 or now < self._next_claim:
            return []
        self._next_claim = now + min(self.cfg.claim_min_idle_ms / 1000.0, 5.0)
        resp = self._call("autoclaim", lambda: self.r.xautoclaim(
            self.keys.trajectories, TRAJECTORY_GROUP, self.cfg.consumer, self.cfg.claim_min_idle_ms, "0-0", count=count
        ))
        items = resp[1] if isinstance(resp, list | tuple) and len(resp) > 1 else []
        return [
            decode_entry(_id(i), f, redelivered=True) for i, f in items if f is not None and _id(i) not in self._held
        ]

    def dead_letter(self, entry: Entry, reason: str) -> None:
        """Copy the raw entry to the dead stream with the reason, then ack it."""
        fields = {b"raw": entry.raw, b"reason": reason.encode(), b"entry_id": entry.entry_id.encode()}
        self._call("dead_letter", lambda: self.r.xadd(self.keys.dead, fields, maxlen=self.cfg.dead_maxlen,
                                                      approximate=True))
        self.ack([entry.entry_id])

    def ack(self, entry_ids: Iterable[str]) -> int:
        ids = list(entry_ids)
        if not ids:
            return 0
        n = int(self._call("ack", lambda: self.r.xack(self.keys.trajectories, TRAJECTORY_GROUP, *ids)))
        self._held.difference_update(ids)
        return n

    def pending_count(self) -> int:
        info = self._call("pending", lambda: self.r.xpending(self.keys.trajectories, TRAJECTORY_GROUP))
        return int(info["pending"]) if isinstance(info, dict) else 0

    def dead_entries(self) -> list[dict[str, str]]:
        out = []
        for entry_id, fields in self._call("dead_entries", lambda: self.r.xrange(self.keys.dead)):
            out.append({"entry_id": fields[b"entry_id"].decode(), "reason": fields[b"reason"].decode(),
                        "id": _id(entry_id)})
        return out

    def memory(self) -> dict[str, int]:
        """Redis memory and stream lengths, for metrics."""
        info: dict[str, Any] = self._call("memory", lambda: self.r.info("memory"))

        def lengths() -> list[Any]:
            pipe = self.r.pipeline(transaction=False)
            for k in (self.keys.prompts, self.keys.trajectories, self.keys.dead):
                pipe.xlen(k)
            return list(pipe.execute())

        lp, lt, ld = self._call("memory", lengths)
        return {
            "used_memory_bytes": int(info.get("used_memory", 0)),
            "prompts_len": int(lp),
            "trajectories_len": int(lt),
            "dead_len": int(ld),
        }

    def close(self) -> None:
        self.r.close()
