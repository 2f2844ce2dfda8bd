"""The learner's one Redis adapter: prompt feed, trajectory consumer group, dead letters, acks.

Delivery is at-least-once (DESIGN.md "Versions, acks and resume"): a trajectory entry stays
pending in the `learner` consumer group until the orchestrator acks it, which it does only after
a checkpoint containing the entry's update is durable. After a restart the same consumer name
reads its own pending entries first (XREADGROUP from id 0), then claims entries other consumers
left idle (XAUTOCLAIM), then reads new ones. Malformed entries go to the `dead` stream with the
reason and are acked at once (the dead-letter copy is the durable record). Dedupe by group id is
the orchestrator's job (it owns the set of applied ids, saved in each checkpoint).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from google.protobuf.message import DecodeError

from torl.common.redis_layout import (
    PAYLOAD_FIELD,
    PROMPT_GROUP,
    TRAJECTORY_GROUP,
    RunKeys,
    format_version,
    parse_version,
)
from torl.learner.config import BufferSettings
from torl.v1 import common_pb2, trajectory_pb2


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

    def __init__(self, url: str, run_id: str, cfg: BufferSettings, client: redis.Redis | None = None) -> None:
        self.keys = RunKeys(run_id)
        self.cfg = cfg
        # Typed as Any: redis-py's annotations do not distinguish bytes from decoded replies.
        self.r: Any = client or redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        self._own_pending_cursor: str | None = "0"  # None once this consumer's old pending list is read
        self._next_claim = 0.0
        self._held: set[str] = set()  # read by this process and not yet acked: never handed out twice

    def ensure_streams(self) -> None:
        """Create both streams and their consumer groups (idempotent)."""
        for key, group in ((self.keys.prompts, PROMPT_GROUP), (self.keys.trajectories, TRAJECTORY_GROUP)):
            try:
                self.r.xgroup_create(key, group, id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    # -- prompts ---------------------------------------------------------------------------------
    def publish_prompts(self, prompts: Sequence[trajectory_pb2.Prompt]) -> list[str]:
        pipe = self.r.pipeline(transaction=False)
        for p in prompts:
            pipe.xadd(
                self.keys.prompts,
                {PAYLOAD_FIELD: p.SerializeToString()},
                maxlen=self.cfg.prompts_maxlen,
                approximate=True,
            )
        return [_id(x) for x in pipe.execute()]

    # -- run state -------------------------------------------------------------------------------
    def set_version(self, version: common_pb2.WeightVersion) -> None:
        self.r.set(self.keys.version, format_version(version))

    def get_version(self) -> common_pb2.WeightVersion:
        return parse_version(self.r.get(self.keys.version))

    def write_state(self, fields: dict[str, str | int]) -> None:
        self.r.hset(self.keys.state, mapping=fields)

    def read_state(self) -> dict[str, str]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.keys.state)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def next_incarnation(self) -> int:
        """A number larger than any earlier learner of this run used (atomic)."""
        return int(self.r.hincrby(self.keys.state, "incarnation", 1))

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
        resp = self.r.xreadgroup(
            TRAJECTORY_GROUP, self.cfg.consumer, {self.keys.trajectories: start}, count=count, block=block_ms
        )
        out: list[tuple[str, dict[bytes, bytes]]] = []
        for _stream, items in resp or []:
            for entry_id, fields in items:
                if fields is None:  # pending entry trimmed away by MAXLEN: nothing left to read
                    self.r.xack(self.keys.trajectories, TRAJECTORY_GROUP, entry_id)
                    continue
                out.append((_id(entry_id), fields))
        return out

    def _autoclaim(self, count: int) -> list[Entry]:
        # Scanning the pending list costs O(pending): do it at most once per idle period.
        now = time.monotonic()
        if self.cfg.claim_min_idle_ms <= 0 or now < self._next_claim:
            return []
        self._next_claim = now + min(self.cfg.claim_min_idle_ms / 1000.0, 5.0)
        resp = self.r.xautoclaim(
            self.keys.trajectories, TRAJECTORY_GROUP, self.cfg.consumer, self.cfg.claim_min_idle_ms, "0-0", count=count
        )
        items = resp[1] if isinstance(resp, list | tuple) and len(resp) > 1 else []
        return [
            decode_entry(_id(i), f, redelivered=True) for i, f in items if f is not None and _id(i) not in self._held
        ]

    def dead_letter(self, entry: Entry, reason: str) -> None:
        """Copy the raw entry to the dead stream with the reason, then ack it."""
        self.r.xadd(
            self.keys.dead,
            {b"raw": entry.raw, b"reason": reason.encode(), b"entry_id": entry.entry_id.encode()},
            maxlen=self.cfg.dead_maxlen,
            approximate=True,
        )
        self.ack([entry.entry_id])

    def ack(self, entry_ids: Iterable[str]) -> int:
        ids = list(entry_ids)
        if not ids:
            return 0
        self._held.difference_update(ids)
        return int(self.r.xack(self.keys.trajectories, TRAJECTORY_GROUP, *ids))

    def pending_count(self) -> int:
        info = self.r.xpending(self.keys.trajectories, TRAJECTORY_GROUP)
        return int(info["pending"]) if isinstance(info, dict) else 0

    def dead_entries(self) -> list[dict[str, str]]:
        out = []
        for entry_id, fields in self.r.xrange(self.keys.dead):
            out.append({"entry_id": fields[b"entry_id"].decode(), "reason": fields[b"reason"].decode(),
                        "id": _id(entry_id)})
        return out

    def memory(self) -> dict[str, int]:
        """Redis memory and stream lengths, for metrics."""
        info: dict[str, Any] = self.r.info("memory")
        pipe = self.r.pipeline(transaction=False)
        for k in (self.keys.prompts, self.keys.trajectories, self.keys.dead):
            pipe.xlen(k)
        lp, lt, ld = pipe.execute()
        return {
            "used_memory_bytes": int(info.get("used_memory", 0)),
            "prompts_len": int(lp),
            "trajectories_len": int(lt),
            "dead_len": int(ld),
        }

    def close(self) -> None:
        self.r.close()
