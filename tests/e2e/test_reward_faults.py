"""Reward workers hung from outside (SIGSTOP: a verifier stuck where no signal reaches it).

Every item handed to a frozen worker comes back with an explicit TIMEOUT reason (reward
-1, not correct) within about the item limit, never a hung call or a silent "wrong"; the pool
kills the frozen workers, starts fresh ones, and the next items are scored correctly.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import grpc
import psutil
import pytest

from tests.conftest import ServiceProcess
from torl.v1 import common_pb2, reward_pb2, reward_pb2_grpc

pytestmark = pytest.mark.timeout(300)
ITEM_TIMEOUT = 2.0


def workers(server_pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(server_pid).children(recursive=True)
            if "torl.reward.worker" in " ".join(p.cmdline())]


def batch(n: int, tag: str) -> reward_pb2.ScoreBatchRequest:
    """Correct answers that need the symbolic verifier (a worker), not the in-process quick judge."""
    ks = (2, 3, 5, 6, 7, 10, 11, 13)[:n]
    return reward_pb2.ScoreBatchRequest(requests=[
        reward_pb2.ScoreRequest(id=f"{tag}-{i}", response=f"so \\boxed{{\\sqrt{{{4 * k}}}}}",
                                reference=f"2\\sqrt{{{k}}}")
        for i, k in enumerate(ks)])


def test_hung_reward_workers_give_timeout_status_and_are_replaced(
        start_service: Callable[..., ServiceProcess]) -> None:
    svc = start_service("reward", "--set", "grader.workers=2", "--set", f"grader.item_timeout_seconds={ITEM_TIMEOUT}",
                        timeout=180)
    stub = reward_pb2_grpc.RewardStub(grpc.insecure_channel(svc.target))
    warm = stub.ScoreBatch(batch(4, "warm"), timeout=60).responses
    assert all(r.correct and r.reason == common_pb2.REWARD_REASON_CORRECT for r in warm)
    frozen = workers(svc.proc.pid)
    assert len(frozen) == 2, frozen
    for w in frozen:
        os.kill(w.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    hung = stub.ScoreBatch(batch(4, "hung"), timeout=120).responses
    elapsed = time.monotonic() - t0
    assert [r.id for r in hung] == [f"hung-{i}" for i in range(4)]
    timed_out = [r for r in hung if r.reason == common_pb2.REWARD_REASON_TIMEOUT]
    # The items the two frozen workers took time out explicitly (-1, not correct); the pool replaced
    # those workers at once, so the rest of the batch was scored correctly by the fresh ones.
    assert len(timed_out) >= 2 and all(r.reward == -1.0 and not r.correct for r in timed_out), hung
    assert all(r.correct for r in hung if r.reason != common_pb2.REWARD_REASON_TIMEOUT), hung
    assert elapsed < 60, f"a frozen pool held the call {elapsed:.1f}s"
    # The frozen workers are gone (killed by the pool), fresh ones score correctly again.
    for w in frozen:
        assert not w.is_running() or w.status() == psutil.STATUS_ZOMBIE
    deadline = time.monotonic() + 120
    while True:
        again = stub.ScoreBatch(batch(4, "after"), timeout=120).responses
        if all(r.correct for r in again) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert all(r.correct and r.reason == common_pb2.REWARD_REASON_CORRECT for r in again), again
    fresh = workers(svc.proc.pid)
    assert len(fresh) == 2 and not {w.pid for w in fresh} & {w.pid for w in frozen}
    print(f"reward hung: {len(timed_out)}/4 items TIMEOUT, batch answered in {elapsed:.1f}s, fresh workers")
