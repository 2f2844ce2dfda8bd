"""A bounded soak of the local training loop (every service a real process; tests/e2e/loop.py):
after a warm-up, resources are sampled at every step and must not grow with the step count.

Checked per service process tree (executor with its sandboxes, reward with its workers, rollout,
learner, redis-server): processes and open files at the end against after warm-up; gVisor
sandboxes of the executor; Redis: pending entries stay bounded (at most what the last checkpoints
hold), nothing pending on the prompts side at the end, no dead letters, and used memory grows
no faster than the stream entries the run keeps by design (MAXLEN history).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.helpers import TreeUsage, runsc_sandboxes, tree_usage, wait_for
from tests.e2e.loop import check_lineage, loop_config, pretrained_tiny_model, running_loop
from torl.common.redis_layout import PROMPT_GROUP, TRAJECTORY_GROUP

pytestmark = [pytest.mark.slow, pytest.mark.gvisor, pytest.mark.timeout(1800)]
# TORL_SOAK_STEPS lengthens the soak (CI runs the default: about two minutes of steady state).
STEPS, PROMPTS, WARMUP = int(os.environ.get("TORL_SOAK_STEPS", "40")), 4, 3
SERVICES = ("redis", "executor", "reward", "rollout")


@dataclass(frozen=True)
class Sample:
    step: int
    usage: dict[str, TreeUsage]
    sandboxes: int
    used_memory: int
    entries: int
    pending: int


def alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def next_step_or_exit(steps_done: Callable[[], int], seen: int, proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: steps_done() > seen or not alive(proc)


def test_soak_of_the_training_loop_has_no_resource_growth(tmp_path: Path) -> None:
    # The pretrained demo model calls the tool from the first step, so sandboxes run all along.
    config = loop_config(STEPS, PROMPTS)
    config["rollout"]["loop"]["max_response_tokens"] = 80
    with running_loop(tmp_path, "soak", config, model=pretrained_tiny_model()) as loop:
        learner = loop.start_learner("0")
        lproc = learner.proc
        assert lproc is not None
        pids = {name: proc.pid for name in SERVICES if (proc := loop.stack.children[name].proc) is not None}
        pids["learner"] = lproc.pid
        prefix = next(s.split("=", 1)[1] for s in loop.sets["executor"] if s.startswith("sandbox.name_prefix="))
        state = Path(next(s.split("=", 1)[1] for s in loop.sets["executor"] if s.startswith("sandbox.state_dir=")))
        r = loop.redis()
        samples: list[Sample] = []
        seen = 0
        t0 = time.monotonic()
        while seen < STEPS:
            wait_for(next_step_or_exit(loop.steps_done, seen, lproc), 900, f"step {seen + 1}")
            if not alive(lproc) and loop.steps_done() < STEPS:
                raise AssertionError(learner.log_path.read_text(errors="replace")[-4000:])
            seen = loop.steps_done()
            if seen >= STEPS:
                break
            mem = r.info("memory")
            samples.append(Sample(
                step=seen,
                usage={name: tree_usage(pid) for name, pid in pids.items()},
                sandboxes=len(runsc_sandboxes(state, prefix)),
                used_memory=int(mem["used_memory"]),
                entries=int(r.xlen(loop.keys.prompts)) + int(r.xlen(loop.keys.trajectories)),
                pending=int(r.xpending(loop.keys.trajectories, TRAJECTORY_GROUP)["pending"]),
            ))
        wait_for(lambda: not alive(lproc), 600, "the learner to exit")
        assert lproc.returncode == 0, learner.log_path.read_text(errors="replace")[-4000:]
        check_lineage(loop, STEPS, PROMPTS)
        assert r.xpending(loop.keys.prompts, PROMPT_GROUP)["pending"] == 0
        assert r.xlen(loop.keys.dead) == 0
        minutes = (time.monotonic() - t0) / 60
        steps = [row for row in loop.metrics_rows() if "tool_use_rate" in row]
        tool_use = [row["tool_use_rate"] for row in steps]
        # Sandboxes worked all along: the model called the tool in the first and in the last third.
        third = max(1, len(tool_use) // 3)
        assert len(steps) == STEPS and min(sum(tool_use[:third]), sum(tool_use[-third:])) > 0, tool_use

    warm = next(s for s in samples if s.step >= WARMUP)
    last = samples[-1]
    assert last.step - warm.step >= 5, [s.step for s in samples]
    report = []
    for name in (*SERVICES, "learner"):
        a, b = warm.usage[name], last.usage[name]
        report.append(f"{name}: procs {a.processes}->{b.processes} fds {a.open_fds}->{b.open_fds} "
                      f"rss {a.rss_bytes >> 20}->{b.rss_bytes >> 20} MiB")
        # gVisor's ptrace stubs follow the processes inside a sandbox: a few may come and go.
        slack_procs, slack_fds = (16, 4096) if name == "executor" else (2, 16)
        assert b.processes <= a.processes + slack_procs, report[-1]
        assert b.open_fds <= a.open_fds + slack_fds, report[-1]
    assert last.sandboxes == warm.sandboxes >= 1, (warm.sandboxes, last.sandboxes)
    # Pending trajectory entries are bounded by the checkpoint interval (2 steps) plus the step in progress.
    assert max(s.pending for s in samples) <= 3 * PROMPTS + 8
    grown = last.used_memory - warm.used_memory
    kept = last.entries - warm.entries
    # Each kept stream entry (a prompt, or a group of 4 trajectories of <= 80 + 400 tokens) costs well
    # under 32 KiB; beyond that, memory must not grow.
    assert grown <= kept * 32 * 1024 + (1 << 20), (grown, kept)
    # RSS at warm-up and each later quarter: growth that keeps going is a leak, a step up early is warm-up.
    quarters = [samples[samples.index(warm) + (len(samples) - 1 - samples.index(warm)) * q // 4] for q in range(5)]
    print("rss MiB by quarter: " + "; ".join(
        f"{name} " + "/".join(str(s.usage[name].rss_bytes >> 20) for s in quarters) for name in (*SERVICES, "learner")))
    print(f"soak {STEPS} steps in {minutes:.1f} min, tool use {tool_use[0]:.2f}->{tool_use[-1]:.2f}; "
          + "; ".join(report)
          + f"; sandboxes {warm.sandboxes}->{last.sandboxes}; redis +{grown >> 10} KiB for {kept} kept entries")
