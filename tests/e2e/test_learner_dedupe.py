"""A second copy of a trajectory group (a re-issued prompt answered twice, or a prompt fed again
after a restart — what the Redis faults in test_loop_faults.py produce) must never be trained twice,
even when it arrives while the step that already holds the first copy is still being collected.

Real Redis and the learner's real Orchestrator (collect_step_data, no engine needed for collecting).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from tests.e2e.helpers import RedisServer
from tests.integration.test_learner_buffer import group
from torl.common.redis_layout import PAYLOAD_FIELD, RunKeys
from torl.v1 import common_pb2

pytestmark = pytest.mark.timeout(120)
RUN = "dedupe"


def test_copy_arriving_while_the_step_is_collected_is_not_trained_twice(tmp_path: Path) -> None:
    from torl.learner.config import LearnerSettings
    from torl.learner.orchestrator import Orchestrator

    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        settings = LearnerSettings(
            redis_url=server.url, run_id=RUN, output_dir=str(tmp_path / "out"),
            data={"dataset": "arith", "prompts_per_step": 2, "group_size": 2, "arith_train_size": 50},
            loop={"read_block_ms": 200, "step_timeout_seconds": 30},
        )
        trainer = Orchestrator(settings)
        trainer.buffer.ensure_streams()
        trainer.ledger.begin(incarnation=1)

        def copy_of(gid: str) -> bytes:
            g = group(gid)
            for t in g.trajectories:
                t.version_start.CopyFrom(common_pb2.WeightVersion(incarnation=1, step=0))
            return g.SerializeToString()

        r = redis.Redis.from_url(server.url)
        keys = RunKeys(RUN)
        r.xadd(keys.trajectories, {PAYLOAD_FIELD: copy_of(f"{RUN}-e0-0")})

        def later() -> None:  # the second copy, and then another group, while the step is collected
            time.sleep(1.0)
            r.xadd(keys.trajectories, {PAYLOAD_FIELD: copy_of(f"{RUN}-e0-0")})
            time.sleep(0.5)
            r.xadd(keys.trajectories, {PAYLOAD_FIELD: copy_of(f"{RUN}-e0-1")})

        th = threading.Thread(target=later)
        th.start()
        data = trainer.collect_step_data()
        th.join()
        ids = [g.group_id for g in data.groups]
        assert len(ids) == len(set(ids)), f"one step holds the same group twice: {ids}"
        assert sorted(ids) == [f"{RUN}-e0-0", f"{RUN}-e0-1"]
        assert trainer.counters.duplicate == 1, trainer.counters  # the copy was seen and dropped, not lost
        # The copy is acked at once; the original stays pending until a checkpoint holds it.
        assert trainer.buffer.pending_count() == 2
        trainer.buffer.close()
    finally:
        server.close()
