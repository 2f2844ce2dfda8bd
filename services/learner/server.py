"""gRPC adapter of the learner: serves GetStatus and, with `train: true`, runs the orchestrator.

The orchestrator is blocking (DeepSpeed), so it runs in a thread; GetStatus reads its counters. The
metrics module is imported here, at start, so /metrics lists every learner family before (and
without) a trainer: dashboards and alerts see the names, with no samples yet. When
training finishes and `loop.exit_when_done` is set, the process stops itself the same way SIGTERM
would; a trainer failure makes the process exit 1 after the server drained.

Under torchrun only rank 0 serves (gRPC, /metrics) and orchestrates; every other rank builds its
engine and runs the commands rank 0 sends (torl.learner.ranks.serve_rank): no port, no Redis.
"""

from __future__ import annotations

import os
import signal
import threading

import grpc

from torl.common.grpc_server import RunningServer, ServiceBinding
from torl.common.logging import configure_logging, get_logger
from torl.common.service import run_grpc_service
from torl.learner import metrics  # registers every learner metric at start: an idle learner lists them too
from torl.learner.config import LearnerSettings
from torl.learner.ranks import RankInfo
from torl.v1 import common_pb2, learner_pb2, learner_pb2_grpc

log = get_logger("torl.learner")


class LearnerServicer(learner_pb2_grpc.LearnerServicer):
    def __init__(self, settings: LearnerSettings) -> None:
        from torl.learner.orchestrator import Orchestrator

        self.settings = settings
        self.orchestrator: Orchestrator | None = None

    async def GetStatus(
        self, request: learner_pb2.LearnerStatusRequest, context: grpc.aio.ServicerContext
    ) -> learner_pb2.LearnerStatus:
        t = self.orchestrator
        if t is None:
            return learner_pb2.LearnerStatus(run_id=self.settings.run_id, phase="idle",
                                             total_steps=self.settings.loop.total_steps)
        c = t.counters
        return learner_pb2.LearnerStatus(
            version=common_pb2.WeightVersion(incarnation=t.incarnation, step=t.step),
            run_id=self.settings.run_id, step=t.step, total_steps=self.settings.loop.total_steps,
            groups_applied=c.applied, groups_dropped_stale=c.dropped_stale, groups_dead=c.dead, phase=t.phase,
        )


def serve_other_rank(settings: LearnerSettings, ranks: RankInfo) -> None:
    """A rank other than 0: its share of every step, nothing else."""
    from torl.learner.engine import TrainEngine
    from torl.learner.ranks import serve_rank

    configure_logging(settings.log_level, settings.log_json, service=settings.service_name)
    if not settings.train:
        log.info("rank_idle", rank=ranks.rank, reason="train=false: nothing to do on ranks other than 0")
        return
    serve_rank(TrainEngine(settings.model_dir, settings.engine, settings.grpo), ranks)


async def serve(settings: LearnerSettings) -> None:
    ranks = RankInfo.from_env()
    if not ranks.is_main:
        serve_other_rank(settings, ranks)
        return
    from torl.learner.orchestrator import Orchestrator

    metrics.initialize()
    servicer = LearnerServicer(settings)
    binding = ServiceBinding(
        name="torl.v1.Learner", servicer=servicer, add=learner_pb2_grpc.add_LearnerServicer_to_server
    )
    failure: list[BaseException] = []
    worker: threading.Thread | None = None

    def run_trainer() -> None:
        try:
            servicer.orchestrator = Orchestrator(settings, ranks=ranks)
            servicer.orchestrator.run()
        except BaseException as e:  # reported, then the process exits non-zero
            failure.append(e)
            log.error("training_failed", error=str(e), exc_info=e)
        if failure or settings.loop.exit_when_done:
            os.kill(os.getpid(), signal.SIGTERM)

    async def on_started(_running: RunningServer) -> None:
        nonlocal worker
        if settings.train:
            worker = threading.Thread(target=run_trainer, name="trainer", daemon=True)
            worker.start()

    async def on_shutdown() -> None:
        if worker is not None:
            if servicer.orchestrator is not None:
                servicer.orchestrator.stop_event.set()
            worker.join(timeout=30)

    await run_grpc_service(settings, [binding], on_started=on_started, on_shutdown=on_shutdown)
    if failure:
        raise SystemExit(1)
