"""The pool of pre-started sandboxes and the fair dispatch of runs onto them.

Each sandbox belongs to at most one *tenant* at a time: a caller's strict runs
(`strict:<caller>`) or a caller's session runs (`session:<caller>`; inside the sandbox every
run is a fresh process), so runs of different callers never share a sandbox or a process. A
fresh sandbox is claimed by the first tenant that needs one; a tenant with no sandbox left takes
one over from the tenant holding the most, which is drained and restarted clean first (handover).
Sandboxes are also replaced after `recycle_after_runs` runs and after any fault; replacements
start in the background, off the request path.

Dispatch is FIFO: waiters are served in arrival order, skipping only those whose tenant has no
free slot right now (so one busy tenant cannot block the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
import uuid
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from torl.common.logging import get_logger
from torl.executor import metrics
from torl.executor.config import PoolSettings, SandboxSettings
from torl.executor.sandbox import Backend, Job, JobResult, Layout, Sandbox, SandboxError

log = get_logger("torl.executor.pool")


class QueueFull(Exception):
    """The pool's queue is at its limit."""


class QueueTimeout(Exception):
    """A run waited longer than `queue_timeout_seconds` for a slot."""


@dataclass
class Slot:
    """A pool entry: one sandbox (or one being started) and its bookkeeping."""

    index: int
    sandbox: Sandbox | None = None
    owner: str | None = None
    active: int = 0
    runs: int = 0
    draining: str | None = None  # why it will be recycled once idle
    drain_for: str | None = None  # the tenant it is being handed over to
    starting: bool = True


@dataclass
class Waiter:
    tenant: str
    future: asyncio.Future[Slot]
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class PoolRunResult:
    result: JobResult | None
    sandbox_error: str | None
    queue_seconds: float


class Pool:
    """Owns the sandboxes; `run()` is the only entry point for executing a job."""

    def __init__(self, backend: Backend, layout: Layout, sandbox: SandboxSettings, settings: PoolSettings) -> None:
        self.backend = backend
        self.layout = layout
        self.sandbox_settings = sandbox
        self.settings = settings
        self.slots = [Slot(i) for i in range(settings.size)]
        self.queue: deque[Waiter] = deque()
        self._names = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self._instance = uuid.uuid4().hex[:6]
        self.closed = False
        self.start_failures = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, wait: bool = True) -> None:
        """Prepare the backend (cleans leftovers) and start every sandbox in the background."""
        await asyncio.to_thread(self.backend.prepare)
        for slot in self.slots:
            self._spawn(self._start_sandbox(slot))
        if wait:
            await self.wait_ready(self.sandbox_settings.start_timeout_seconds * 2)

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(s.starting for s in self.slots):
            if time.monotonic() > deadline:
                raise SandboxError("sandbox pool did not warm up in time")
            await asyncio.sleep(0.05)
        if not any(s.sandbox is not None for s in self.slots):
            raise SandboxError("no sandbox could be started; see the log")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_sandbox(self, slot: Slot) -> None:
        slot.starting = True
        self._update_gauges()
        name = f"{self.sandbox_settings.name_prefix}-{os.getpid()}-{self._instance}-{next(self._names)}"
        args = self.layout.agent_args(
            self.sandbox_settings.preload, self.settings.slots_per_sandbox, self.settings.spares_per_sandbox
        )
        sandbox = Sandbox(self.backend, name, self.backend.launch_command(name, args))
        delay = 0.5
        while not self.closed:
            try:
                await sandbox.start(self.sandbox_settings.start_timeout_seconds)
                break
            except SandboxError as e:
                self.start_failures += 1
                metrics.RECYCLED.labels("start_failed").inc()
                log.error("sandbox_start_failed", sandbox=name, error=str(e))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                name = f"{self.sandbox_settings.name_prefix}-{os.getpid()}-{self._instance}-{next(self._names)}"
                sandbox = Sandbox(self.backend, name, self.backend.launch_command(name, args))
        if self.closed:
            await sandbox.close()
            return
        metrics.SANDBOX_START.labels(self.backend.name).observe(sandbox.start_seconds)
        log.info("sandbox_ready", sandbox=name, start_seconds=round(sandbox.start_seconds, 3))
        slot.sandbox = sandbox
        slot.owner = slot.drain_for
        slot.drain_for = None
        slot.draining = None
        slot.active = 0
        slot.runs = 0
        slot.starting = False
        self._dispatch()

    async def _recycle(self, slot: Slot, reason: str) -> None:
        old = slot.sandbox
        slot.sandbox = None
        slot.starting = True
        slot.owner = None
        metrics.RECYCLED.labels(reason).inc()
        log.info("sandbox_recycle", sandbox=old.name if old else None, reason=reason)
        if old is not None:
            await old.close()
        if not self.closed:
            await self._start_sandbox(slot)

    def _maybe_recycle(self, slot: Slot) -> None:
        if slot.draining is not None and slot.active == 0 and slot.sandbox is not None and not slot.starting:
            reason = slot.draining
            slot.starting = True  # no more runs are placed on it
            self._spawn(self._recycle(slot, reason))

    async def close(self) -> None:
        self.closed = True
        for w in self.queue:
            if not w.future.done():
                w.future.set_exception(SandboxError("executor is shutting down"))
        self.queue.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(s.sandbox.close() for s in self.slots if s.sandbox is not None), return_exceptions=True)

    # -- state ----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return any(s.sandbox is not None and not s.starting for s in self.slots)

    def stats(self) -> dict[str, int]:
        ready = [s for s in self.slots if s.sandbox is not None and not s.starting]
        return {
            "size": len(self.slots),
            "ready": len(ready),
            "starting": sum(1 for s in self.slots if s.starting),
            "busy_slots": sum(s.active for s in ready),
            "idle_slots": sum(self.settings.slots_per_sandbox - s.active for s in ready if s.draining is None),
            "queued": len(self.queue),
        }

    def _update_gauges(self) -> None:
        st = self.stats()
        metrics.POOL_SANDBOXES.labels("ready").set(st["ready"])
        metrics.POOL_SANDBOXES.labels("starting").set(st["starting"])
        metrics.POOL_SANDBOXES.labels("draining").set(sum(1 for s in self.slots if s.draining is not None))
        metrics.POOL_IDLE_SLOTS.set(st["idle_slots"])
        metrics.QUEUE_DEPTH.set(st["queued"])

    # -- dispatch -------------------------------------------------------------------------------

    def _usable(self, slot: Slot) -> bool:
        return slot.sandbox is not None and not slot.starting and slot.draining is None

    def _pick(self, tenant: str) -> Slot | None:
        cap = self.settings.slots_per_sandbox
        owned = [s for s in self.slots if self._usable(s) and s.owner == tenant and s.active < cap]
        if owned:
            return min(owned, key=lambda s: s.active)
        free = [s for s in self.slots if self._usable(s) and s.owner is None]
        if free:
            free[0].owner = tenant
            return free[0]
        return None

    def _handover(self, tenant: str) -> None:
        """Give a tenant that holds no sandbox one taken from the tenant holding the most."""
        if any(s.owner == tenant or s.drain_for == tenant for s in self.slots):
            return
        if any(s.owner is None and (s.starting or s.sandbox is not None) and s.drain_for is None for s in self.slots):
            return  # a fresh sandbox is on its way or free
        candidates = [s for s in self.slots if self._usable(s) and s.owner is not None and s.owner != tenant]
        if not candidates:
            return
        counts: dict[str, int] = {}
        for s in self.slots:
            if s.owner is not None:
                counts[s.owner] = counts.get(s.owner, 0) + 1
        victim = min(candidates, key=lambda s: (-counts.get(s.owner or "", 0), s.active))
        victim.draining = "handover"
        victim.drain_for = tenant
        self._maybe_recycle(victim)

    def _dispatch(self) -> None:
        if not self.queue:
            self._update_gauges()
            return
        remaining: deque[Waiter] = deque()
        while self.queue:
            w = self.queue.popleft()
            if w.future.done():
                continue
            slot = self._pick(w.tenant)
            if slot is None:
                remaining.append(w)
                continue
            slot.active += 1
            slot.runs += 1
            w.future.set_result(slot)
        self.queue = remaining
        for w in self.queue:
            self._handover(w.tenant)
        self._update_gauges()

    async def _acquire(self, tenant: str) -> tuple[Slot, float]:
        if self.closed:
            raise SandboxError("executor is shutting down")
        if len(self.queue) >= self.settings.max_queue:
            raise QueueFull(f"queue is full ({self.settings.max_queue} runs waiting)")
        t0 = time.monotonic()
        fut: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self.queue.append(Waiter(tenant, fut))
        self._dispatch()
        try:
            slot = await asyncio.wait_for(asyncio.shield(fut), self.settings.queue_timeout_seconds)
        except TimeoutError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(fut.result(), fault=None)
            fut.cancel()
            raise QueueTimeout(
                f"no sandbox slot within {self.settings.queue_timeout_seconds:g} s (queue {len(self.queue)})"
            ) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(fut.result(), fault=None)
            fut.cancel()
            raise
        waited = time.monotonic() - t0
        metrics.QUEUE_WAIT.observe(waited)
        return slot, waited

    def _release(self, slot: Slot, fault: str | None) -> None:
        slot.active -= 1
        if fault is not None and slot.draining is None:
            slot.draining = "fault"
        elif slot.runs >= self.settings.recycle_after_runs and slot.draining is None:
            slot.draining = "uses"
        self._maybe_recycle(slot)
        self._dispatch()

    async def run(self, job: Job, tenant: str) -> PoolRunResult:
        """Run `job` for `tenant`. Sandbox failures come back as `sandbox_error`, never raised."""
        slot, waited = await self._acquire(tenant)
        fault: str | None = None
        result: JobResult | None = None
        sandbox = slot.sandbox
        try:
            assert sandbox is not None
            hard = job.timeout_seconds + self.settings.hard_timeout_grace_seconds
            result = await sandbox.run(job, hard)
            if sandbox.faulted:
                fault = sandbox.faulted
        except TimeoutError:
            fault = f"sandbox did not answer within {hard:g} s; it was destroyed"
            result = JobResult(-9, b"", b"", False, False, True, hard, error=None)
        except SandboxError as e:
            fault = str(e)
        finally:
            # Reached on a cancel too, but only once the run has stopped (Sandbox.run waits for that).
            if fault is None and sandbox is not None and sandbox.faulted:
                fault = sandbox.faulted
            with contextlib.suppress(Exception):
                self._release(slot, fault)
        if result is None:
            return PoolRunResult(None, fault or "sandbox failed", waited)
        if result.error:
            return PoolRunResult(None, result.error, waited)
        return PoolRunResult(result, None, waited)
