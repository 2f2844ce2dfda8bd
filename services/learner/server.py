"""gRPC adapter of the learner: serves GetStatus and, with `train: true`, runs the trainer.

The trainer is blocking (DeepSpeed), so it runs in a thread; GetStatus reads its counters. The
metrics module is imported here, at start, so /metrics lists every learner family before (and
without) a trainer: dashboards and alerts see the names, with no samples yet. When
training finishes and `loop.exit_when_done` is set, the process stops itself the same way SIGTERM
would; a trainer failure makes the process exit 1 after the server drained.
"""

from __future__ import annotations

import os
import signal
import threading

import grpc

from torl.common.grpc_server import RunningServer, ServiceBinding
from torl.common.logging import get_logger
from torl.common.service import run_grpc_service
from torl.learner import metrics  # registers every learner metric at start: an idle learner lists them too
from torl.learner.config import LearnerSettings
from torl.v1 import common_pb2, learner_pb2, learner_pb2_grpc

log = get_logger("torl.learner")


class LearnerServicer(learner_pb2_grpc.LearnerServicer):
    def __init__(self, settings: LearnerSettings) -> None:
        self.settings = settings
        self.trainer: object | None = None

    async def GetStatus(
        self, request: learner_pb2.LearnerStatusRequest, context: grpc.aio.ServicerContext
    ) -> learner_pb2.LearnerStatus:
        from torl.learner.trainer import Trainer

        t = self.trainer
        if not isinstance(t, Trainer):
            return learner_pb2.LearnerStatus(run_id=self.settings.run_id, phase="idle",
                                             total_steps=self.settings.loop.total_steps)
        c = t.counters
        return learner_pb2.LearnerStatus(
            version=common_pb2.WeightVersion(incarnation=t.incarnation, step=t.step),
            run_id=self.settings.run_id, step=t.step, total_steps=self.settings.loop.total_steps,
            groups_applied=c.applied, groups_dropped_stale=c.dropped_stale, groups_dead=c.dead, phase=t.phase,
        )


async def serve(settings: LearnerSettings) -> None:
    metrics.initialize()
    servicer = LearnerServicer(settings)
    binding = ServiceBinding(
        name="torl.v1.Learner", servicer=servicer, add=learner_pb2_grpc.add_LearnerServicer_to_server
    )
    failure: list[BaseException] = []
    worker: threading.Thread | None = None
    trainer_ref: list[object] = []

    def run_trainer() -> None:
        from torl.learner.trainer import Trainer

        try:
            trainer = Trainer(settings)
            trainer_ref.append(trainer)
            servicer.trainer = trainer
            trainer.run()
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
            for t in trainer_ref:
                t.stop_event.set()  # type: ignore[attr-defined]
            worker.join(timeout=30)

    await run_grpc_service(settings, [binding], on_started=on_started, on_shutdown=on_shutdown)
    if failure:
        raise SystemExit(1)
