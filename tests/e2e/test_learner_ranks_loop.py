"""The learner as 2 data-parallel ranks (torchrun, gloo, ZeRO-2) against every real service: it
trains; rank 1 is killed with SIGKILL mid-run and the whole job exits within the bounded
timeout; the job started again (a pod restart in the chart's model) resumes from the last
checkpoint; the lineage holds every group exactly once, everything in the surviving
checkpoints is acked, and only rank 0 served (one `serving` event per launch).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.e2e.helpers import applied_rows, check_lineage
from tests.e2e.loop import running_loop
from tests.integration.test_learner_loop import CONFIG, wait_for
from torl.cli.local import Child
from torl.common.redis_layout import TRAJECTORY_GROUP

pytestmark = [pytest.mark.timeout(1200), pytest.mark.gvisor, pytest.mark.slow]

STEPS = 4
PROMPTS = 4
RUN = "ranksloop"
EXIT_BOUND_SECONDS = 90  # torchrun's own teardown of the survivors, well under engine.dist_timeout_seconds


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """RANK → pid of the workers a torchrun process started (from their environment)."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != launcher_pid:
                continue
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for kv in env:
            if kv.startswith(b"RANK="):
                out[int(kv[5:])] = int(entry)
    return out


def test_two_rank_learner_trains_survives_a_killed_rank_and_resumes(tmp_path: Path) -> None:
    require_binary("redis-server")
    from torl.rollout.tiny_model import build_tiny

    model = str(build_tiny())
    cfg = json.loads(json.dumps(CONFIG))
    cfg["learner"]["data"]["prompts_per_step"] = PROMPTS
    cfg["learner"]["engine"].update({"zero_stage": 2, "dist_timeout_seconds": 60})
    cfg["learner"]["loop"]["total_steps"] = STEPS
    with running_loop(tmp_path, RUN, cfg, model=model) as loop:
        r, keys, out = loop.redis(), loop.keys, loop.out

        def start_learner(tag: str) -> Child:
            return loop.start_learner(tag, ranks=2)

        first = start_learner("a")
        assert first.proc is not None
        wait_for(lambda: any(row["step"] >= 3 for row in applied_rows(out)), 600, "step 3", first)
        ranks = rank_pids(first.proc.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGKILL)
        t0 = time.monotonic()
        rc = first.proc.wait(EXIT_BOUND_SECONDS)
        assert rc != 0, "the job must fail when a rank dies"
        assert time.monotonic() - t0 < EXIT_BOUND_SECONDS
        assert all(not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
                   for pid in ranks.values())
        log_a = first.log_path.read_text(errors="replace")
        assert log_a.count('"event": "serving"') == 1, "only rank 0 serves gRPC and /metrics"
        assert '"event": "rank_serving"' in log_a  # rank 1 ran the engine commands

        second = start_learner("b")
        wait_for(lambda: second.proc is not None and second.proc.poll() is not None, 700, "resumed run to finish")
        assert second.proc is not None and second.proc.returncode == 0, \
            second.log_path.read_text(errors="replace")[-4000:]
        log_b = second.log_path.read_text(errors="replace")
        assert '"event": "resumed"' in log_b and log_b.count('"event": "serving"') == 1

        rows = applied_rows(out)
        assert {row["world_size"] for row in rows} == {2}
        final = check_lineage(out, RUN, STEPS, PROMPTS, CONFIG["learner"]["data"]["arith_train_size"])
        pending = {p["message_id"].decode() for p in r.xpending_range(keys.trajectories, TRAJECTORY_GROUP, "-", "+",
                                                                       1000)}
        assert not ({e for s in final for e in final[s]["entry_ids"]} & pending), "a trained group left unacked"
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert {m["learner_ranks"] for m in metrics if "reward_mean" in m} == {2}
        assert (out / "hf" / f"step_{STEPS}" / "model.safetensors").is_file()
        ckpt = out / "checkpoints" / json.loads((out / "checkpoints" / "latest.json").read_text())["tag"]
        assert len(list(ckpt.glob("zero_pp_rank_*_optim_states.pt"))) == 2
