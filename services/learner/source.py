"""The train source: the ledger's decisions carried out on Redis, one step's groups at a time.

`next_step` blocks until the step has prompts_per_step usable groups: it keeps the prompts stream
fed, re-issues overdue prompts, reads trajectory entries, dead-letters malformed ones, acks
duplicates, stale and unusable groups at once (their prompts go out again) and keeps the rest,
in arrival order, for this step or the next. Groups read ahead are judged again when taken.
While it waits, `on_wait` runs every `check_every` seconds (the orchestrator re-pushes weights to
replicas found behind) and `heartbeat` keeps the other ranks' collectives from timing out.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from torl.common.logging import get_logger
from torl.learner import metrics as m
from torl.learner.buffer import Entry, RedisBuffer
from torl.learner.ledger import Ledger, Verdict
from torl.v1 import trajectory_pb2

log = get_logger("torl.learner.source")


class TrainingError(RuntimeError):
    """The run cannot continue (no data within the step timeout, no replica took the weights, ...)."""


@dataclass
class StepData:
    """What one step trains on."""

    groups: list[trajectory_pb2.TrajectoryGroup] = field(default_factory=list)
    entry_ids: list[str] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)


class TrainSource:
    def __init__(self, buffer: RedisBuffer, ledger: Ledger, *, read_block_ms: int, step_timeout_seconds: float,
                 stop: threading.Event) -> None:
        self.buffer = buffer
        self.ledger = ledger
        self.read_block_ms = read_block_ms
        self.step_timeout_seconds = step_timeout_seconds
        self.stop = stop
        self.ready: deque[Entry] = deque()  # usable groups read ahead, in arrival order

    def next_step(self, on_wait: Callable[[], object] | None = None, check_every: float = 0.0) -> StepData:
        need = self.ledger.prompts_per_step
        deadline = time.monotonic() + self.step_timeout_seconds
        data = StepData()
        next_check = time.monotonic()
        while len(data.groups) < need:
            if self.stop.is_set():
                raise TrainingError("stopped while waiting for data")
            if on_wait is not None and check_every and time.monotonic() >= next_check:
                on_wait()
                next_check = time.monotonic() + check_every
            if time.monotonic() > deadline:
                raise TrainingError(
                    f"step {self.ledger.step + 1}: only {len(data.groups)} of {need} groups within "
                    f"{self.step_timeout_seconds:.0f}s; is rollout running?"
                )
            if not self.ready:
                now = time.monotonic()
                self.publish(self.ledger.feed(now))
                overdue = self.ledger.overdue(now)
                for p in overdue:
                    log.warning("prompt_reissued", prompt_id=p.prompt_id, attempt=p.attempt)
                self.publish(overdue, reissued=True)
                for entry in self.buffer.read(count=need, block_ms=self.read_block_ms):
                    self.accept(entry)
                continue
            entry = self.ready.popleft()
            assert entry.group is not None
            d = self.ledger.take(entry.group, time.monotonic())
            if d.verdict is Verdict.STALE:
                self.drop(entry, d.verdict, d.reissue)
                continue
            data.groups.append(entry.group)
            data.entry_ids.append(entry.entry_id)
            data.staleness.append(d.staleness)
            m.STALENESS.observe(d.staleness)
        return data

    def accept(self, entry: Entry) -> None:
        """Sort one entry read from Redis by the ledger's verdict."""
        d = self.ledger.judge(entry.group, time.monotonic())
        if d.verdict is Verdict.READY:
            self.ready.append(entry)
            return
        if d.verdict is Verdict.DEAD:
            self.buffer.dead_letter(entry, entry.error)
            m.GROUPS.labels(outcome="dead").inc()
            log.warning("dead_letter", entry_id=entry.entry_id, reason=entry.error)
            return
        self.drop(entry, d.verdict, d.reissue)

    def drop(self, entry: Entry, verdict: Verdict, reissue: trajectory_pb2.Prompt | None) -> None:
        self.buffer.ack([entry.entry_id])
        m.GROUPS.labels(outcome=verdict.value).inc()
        if reissue is not None:
            self.publish([reissue], reissued=True)

    def publish(self, prompts: list[trajectory_pb2.Prompt], reissued: bool = False) -> None:
        if not prompts:
            return
        self.buffer.publish_prompts(prompts)
        if reissued:
            m.GROUPS.labels(outcome="reissued").inc(len(prompts))
