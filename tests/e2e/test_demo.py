"""The README's first command, the full local training demo (tiny model kit, pretraining, GRPO), run
exactly as `make demo` runs it, and checked two ways while it runs:

- It converges: mean reward and tool-use rate rise from the first to the last steps, and the last 5
  steps reach sampled accuracy >= 0.8 and mean reward >= +0.6 (issue 16's target, 0.85 / +0.7, is
  reported in docs/demo.md, not asserted: the pretrained model varies from machine to machine).
- It is also the soak of the training loop: every step runs the sandboxes (the pretrained model calls
  the tool from the first step), and the resources of each service's process tree (redis, executor
  with its gVisor sandboxes, reward with its workers, rollout, learner), sampled at every step after
  a warm-up, must not grow with the step count: processes and open files at the end against after
  warm-up, the executor's sandboxes, Redis pending entries bounded by the checkpoint interval, Redis
  memory growing no faster than the stream entries the run keeps by design. The surviving lineage
  trains every step on the feed's prompts, each once. `TORL_SOAK_STEPS=200` makes the run longer.

In CI, `.ci/run` usually has the pretrained model built (at idle CPU priority, during the default
stage) before this runs, so the run here starts from the cache, as a second `make demo` does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import redis

from tests.conftest import REPO, require_binary
from tests.e2e.helpers import TreeUsage, applied_rows, check_lineage, runsc_sandboxes, tree_usage
from torl.common.redis_layout import TRAJECTORY_GROUP, RunKeys
from torl.learner.config import DataSettings

pytestmark = [pytest.mark.slow, pytest.mark.gvisor, pytest.mark.timeout(2500)]

DEMO_STEPS, PROMPTS, CHECKPOINT_EVERY = 60, 8, 20  # configs/demo-cpu.yaml
STEPS = int(os.environ.get("TORL_SOAK_STEPS", str(DEMO_STEPS)))
WARMUP = 3
SERVICES = {"redis": "redis-server", "executor": " executor serve", "reward": " reward serve",
            "rollout": " rollout serve", "learner": " learner serve"}


@dataclass(frozen=True)
class Sample:
    step: int
    usage: dict[str, TreeUsage]
    sandboxes: int
    used_memory: int
    entries: int
    pending: int


def service_pids(train_pid: int) -> dict[str, int]:
    """The services `torl train` started, by name: its children, told apart by command line."""
    pids: dict[str, int] = {}
    for child in psutil.Process(train_pid).children():
        cmd = " ".join(child.cmdline())
        for name, needle in SERVICES.items():
            if needle in cmd:
                pids[name] = child.pid
    return pids


def test_demo_runs_end_to_end_learns_and_holds_its_resources(tmp_path: Path) -> None:
    require_binary("redis-server")
    run_dir = tmp_path / "demo"
    extra = ["--set", f"loop.total_steps={STEPS}"] if STEPS != DEMO_STEPS else []
    out_log, err_log = tmp_path / "demo.stdout", tmp_path / "demo.stderr"
    t0 = time.monotonic()
    samples: list[Sample] = []
    with out_log.open("w") as out, err_log.open("w") as err:
        # The demo exactly as `make demo` runs it, but in a run dir of its own (runs/demo is the user's).
        proc = subprocess.Popen(["bash", "scripts/demo.sh", "--run-dir", str(run_dir), *extra], cwd=REPO,
                                stdout=out, stderr=err, text=True, env={**os.environ})
        try:
            samples = sample_every_step(proc, run_dir)
            proc.wait(timeout=max(60.0, 2300 - (time.monotonic() - t0)))
        finally:
            if proc.poll() is None:  # timed out or the test was interrupted: stop torl train and its services
                proc.send_signal(signal.SIGTERM)  # `torl train` (exec'd by the script) stops every child
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
    seconds = time.monotonic() - t0
    logs = out_log.read_text(errors="replace")[-3000:] + err_log.read_text(errors="replace")[-3000:]
    assert proc.returncode == 0, logs
    # Measured on idle 2-core VMs: 623 s for setup, kit, pretraining and RL on one, ~1,130 s on a slower
    # one (docs/demo.md); the bound is not the 12-minute goal.
    assert seconds < 30 * 60 or STEPS != DEMO_STEPS
    check_learning(run_dir)
    check_lineage(run_dir / "learner", "demo", STEPS, PROMPTS, DataSettings().arith_train_size)
    check_resources(samples)


def sample_every_step(proc: subprocess.Popen[str], run_dir: Path) -> list[Sample]:
    """Per learner step after the warm-up (until the last), the usage of every service's tree."""
    learner_out = run_dir / "learner"
    samples: list[Sample] = []
    pids: dict[str, int] = {}
    client: redis.Redis | None = None
    keys: RunKeys | None = None
    seen = 0
    while proc.poll() is None and seen < STEPS - 1:
        time.sleep(0.5)
        done = max((int(r["step"]) for r in applied_rows(learner_out)), default=0)
        if done <= seen:
            continue
        seen = done
        if client is None:
            endpoints = json.loads((run_dir / "endpoints.json").read_text())
            client = redis.Redis.from_url(endpoints["redis"], socket_timeout=10)
            keys = RunKeys(endpoints["run_id"])
            pids = service_pids(proc.pid)
            assert set(pids) == set(SERVICES), pids
        assert keys is not None
        if seen < WARMUP or seen >= STEPS:
            continue
        mem = client.info("memory")
        samples.append(Sample(
            step=seen,
            usage={name: tree_usage(pid) for name, pid in pids.items()},
            sandboxes=len(runsc_sandboxes(run_dir / "executor-state", f"torl-up-{proc.pid}")),
            used_memory=int(mem["used_memory"]),
            entries=int(client.xlen(keys.prompts)) + int(client.xlen(keys.trajectories)),
            pending=int(client.xpending(keys.trajectories, TRAJECTORY_GROUP)["pending"]),  # type: ignore[index]
        ))
    if client is not None:
        client.close()
    return samples


def check_learning(run_dir: Path) -> None:
    report = run_dir / "learner" / "report"
    for name in ("reward.png", "accuracy.png", "tool_use.png", "response_length.png", "summary.md"):
        assert (report / name).is_file()
    s = json.loads((report / "summary.json").read_text())
    assert s["steps"] >= STEPS
    assert s["reward_mean_last"] > s["reward_mean_first"] + 0.3
    assert s["tool_use_rate_last"] > s["tool_use_rate_first"] + 0.2
    # Converged. Issue 16's target is 0.85 / +0.7; measured 0.98 / +0.96, 0.97 / +0.93 and 0.90 / +0.80
    # on the VMs of docs/demo.md. The pretrained model differs from machine to machine (2-thread float
    # order), and on the slower VM an earlier recipe ended at 0.81 / +0.61, so the bar here is set under
    # the target with room for that spread; the target itself is reported, not asserted.
    assert s["accuracy_last"] >= 0.8, s
    assert s["reward_mean_last"] >= 0.6, s


def check_resources(samples: list[Sample]) -> None:
    assert len(samples) >= 2, [s.step for s in samples]
    warm, last = samples[0], samples[-1]
    assert last.step - warm.step >= 5, [s.step for s in samples]
    report = []
    for name in SERVICES:
        a, b = warm.usage[name], last.usage[name]
        report.append(f"{name}: procs {a.processes}->{b.processes} fds {a.open_fds}->{b.open_fds} "
                      f"rss {a.rss_bytes >> 20}->{b.rss_bytes >> 20} MiB")
        # gVisor's ptrace stubs follow the processes inside a sandbox: a few may come and go.
        slack_procs, slack_fds = (16, 4096) if name == "executor" else (2, 16)
        assert b.processes <= a.processes + slack_procs, report[-1]
        assert b.open_fds <= a.open_fds + slack_fds, report[-1]
    assert last.sandboxes == warm.sandboxes >= 1, (warm.sandboxes, last.sandboxes)
    # Trajectory entries are acked when a checkpoint holds them: pending is bounded by the checkpoint
    # interval plus the step in progress.
    assert max(s.pending for s in samples) <= (CHECKPOINT_EVERY + 2) * PROMPTS, [s.pending for s in samples]
    grown = last.used_memory - warm.used_memory
    kept = last.entries - warm.entries
    # A kept stream entry (a prompt, or a group of 8 trajectories of <= 80 + 400 tokens: ~4 KiB measured)
    # costs well under 32 KiB; beyond that, memory must not grow.
    assert grown <= kept * 32 * 1024 + (1 << 20), (grown, kept)
    # RSS at warm-up and each later quarter: growth that keeps going is a leak, a step up early is warm-up.
    quarters = [samples[(len(samples) - 1) * q // 4] for q in range(5)]
    print("rss MiB by quarter: " + "; ".join(
        f"{name} " + "/".join(str(s.usage[name].rss_bytes >> 20) for s in quarters) for name in SERVICES))
    print(f"soak steps {warm.step}->{last.step}: " + "; ".join(report)
          + f"; sandboxes {warm.sandboxes}->{last.sandboxes}; pending max {max(s.pending for s in samples)}"
          + f"; redis +{grown >> 10} KiB for {kept} kept entries")
