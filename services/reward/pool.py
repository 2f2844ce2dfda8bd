"""Verifier worker processes with a hard per-item timeout.

math-verify times itself out with SIGALRM, which works only in a process's main thread, and
sympy can also get stuck in C code (huge integer powers) where no signal is delivered. So each
item is verified in the main thread of a worker process (`python -m torl.reward.worker`); the
parent waits at most `item_timeout_seconds` for the answer and otherwise kills the worker
(SIGKILL) and starts a replacement. A worker is ready (imports done, caches warm) before its
first item is timed, so a cold start never counts against an item.

Workers are plain subprocesses, not multiprocessing children: nothing depends on the caller's
`__main__` (spawn/forkserver re-import it) and no threaded parent is ever forked.

One dispatcher thread per worker pulls tasks from a shared queue, so a batch spreads over all
workers and each result comes back through its own future; callers keep request order.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection

from torl.common.logging import get_logger
from torl.reward.equivalence import Outcome, Verdict
from torl.reward.metrics import WORKER_RESTARTS

log = get_logger("torl.reward.pool")

READY_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class VerifyTask:
    prediction: str
    reference: str
    rel_tol: float


class _Worker:
    """One `torl.reward.worker` subprocess and the two pipe ends that talk to it."""

    def __init__(self, memory_mb: int, inner_timeout_s: int) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torl.reward.worker",
                "--memory-mb",
                str(memory_mb),
                "--inner-timeout",
                str(inner_timeout_s),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.requests = Connection(os.dup(self.proc.stdin.fileno()), readable=False)
        self.replies = Connection(os.dup(self.proc.stdout.fileno()), writable=False)
        self.proc.stdin.close()
        self.proc.stdout.close()

    def wait_ready(self, timeout: float) -> bool:
        try:
            return bool(self.replies.poll(timeout)) and self.replies.recv() == ("ready",)
        except (EOFError, OSError):
            return False

    def stop(self, graceful: bool) -> None:
        if graceful:
            with contextlib.suppress(OSError, ValueError):
                self.requests.send(None)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.requests.close()
        self.replies.close()


class VerifyPool:
    """`submit(task)` → Future[Verdict]; never raises for an item, whatever the input does."""

    def __init__(
        self, workers: int, item_timeout_seconds: float, memory_mb: int, inner_timeout_seconds: int | None = None
    ) -> None:
        self._item_timeout = item_timeout_seconds
        self._memory_mb = memory_mb
        # math-verify's own signal timeouts (whole seconds, per parse/verify step) fire first for
        # slow-but-interruptible sympy work, leaving the hard kill for C-level hangs.
        self._inner_timeout = inner_timeout_seconds or max(1, int(item_timeout_seconds / 3))
        self._tasks: queue.SimpleQueue[tuple[VerifyTask, Future[Verdict]] | None] = queue.SimpleQueue()
        self._closed = False
        self._restarts = 0
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._dispatch, name=f"reward-verifier-{i}", daemon=True) for i in range(workers)
        ]
        self._ready = threading.Barrier(workers + 1)
        self._started = 0
        for t in self._threads:
            t.start()
        self._ready.wait()
        if self._started == 0:
            self.close()
            raise RuntimeError("no verifier worker could start (python -m torl.reward.worker); see the log")

    @property
    def restarts(self) -> int:
        return self._restarts

    def submit(self, task: VerifyTask) -> Future[Verdict]:
        fut: Future[Verdict] = Future()
        if self._closed:
            fut.set_exception(RuntimeError("verifier pool is closed"))
            return fut
        self._tasks.put((task, fut))
        return fut

    def _start_worker(self) -> _Worker | None:
        try:
            worker = _Worker(self._memory_mb, self._inner_timeout)
        except OSError as e:
            log.error("verifier_worker_failed_to_start", error=str(e))
            return None
        if worker.wait_ready(READY_TIMEOUT_SECONDS):
            return worker
        log.error("verifier_worker_failed_to_start", exitcode=worker.proc.poll())
        worker.stop(graceful=False)
        return None

    def _count_restart(self, cause: str, worker: _Worker) -> None:
        WORKER_RESTARTS.labels(cause=cause).inc()
        with self._lock:
            self._restarts += 1
        log.warning("verifier_worker_replaced", cause=cause, pid=worker.proc.pid)

    def _dispatch(self) -> None:
        worker = self._start_worker()
        if worker is not None:
            with self._lock:
                self._started += 1
        self._ready.wait()
        while True:
            item = self._tasks.get()
            if item is None:
                break
            task, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            if worker is None:  # could not start one earlier: try again for this item
                worker = self._start_worker()
                if worker is None:
                    fut.set_result(Verdict(Outcome.UNPARSABLE, "no_worker"))
                    continue
            try:
                verdict, cause = self._run_one(worker, task)
            except Exception as e:
                log.error("verifier_dispatch_failed", error=repr(e))
                verdict, cause = Verdict(Outcome.UNPARSABLE, "dispatch_error"), "crashed"
            if cause is not None:
                self._count_restart(cause, worker)
            fut.set_result(verdict)
            if cause is not None:
                worker.stop(graceful=False)
                worker = self._start_worker()
        if worker is not None:
            worker.stop(graceful=True)

    def _run_one(self, worker: _Worker, task: VerifyTask) -> tuple[Verdict, str | None]:
        """(verdict, restart cause or None)."""
        try:
            worker.requests.send((task.prediction, task.reference, task.rel_tol))
            if worker.replies.poll(self._item_timeout):
                outcome, method = worker.replies.recv()
                return Verdict(Outcome(outcome), str(method)), None
            return Verdict(Outcome.TIMEOUT, "hard_timeout"), "timeout"
        except (EOFError, OSError, ValueError, TypeError):
            return Verdict(Outcome.UNPARSABLE, "worker_died"), "crashed"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._tasks.put(None)
        for t in self._threads:
            t.join(10)
        # Anything still queued (submitted during close) gets a definite answer.
        while True:
            try:
                item = self._tasks.get_nowait()
            except queue.Empty:
                break
            if item is not None and item[1].set_running_or_notify_cancel():
                item[1].set_result(Verdict(Outcome.UNPARSABLE, "pool_closed"))
