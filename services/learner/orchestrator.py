"""The learner's orchestrator (rank 0): prompt feed → trajectory groups → GRPO step → weight push → checkpoint.

Read `Orchestrator.run` top to bottom; each step:
1. the train source (torl.learner.source) keeps (max_staleness + 1) x prompts_per_step prompts
   outstanding and collects `prompts_per_step` usable groups, by the ledger's rules
   (torl.learner.ledger: dead letters, duplicates, staleness, re-issue);
2. one optimizer step on every rank (torl.learner.ranks: the batch is sharded and broadcast),
   version (incarnation, step + 1);
3. the weights go to every replica (torl.learner.publisher) and the version is published; while
   step 1 waits, replicas serving older weights get the current ones;
4. every N steps a durable checkpoint (every rank's shard, then the metadata), after which the
   groups it contains are acked; held-out evaluation every N steps (torl.learner.evaluator); one
   row per step to the metrics sink (torl.learner.sink) and the audit trail applied.jsonl.

Resume restores the checkpoint (weights, optimizer, step, feed position, outstanding prompts,
applied group ids), takes a new incarnation, pushes its weights before the first new step, and
re-reads the pending groups; ids make re-application impossible.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torl.common.logging import get_logger
from torl.learner import metrics as m
from torl.learner.buffer import RedisBuffer
from torl.learner.checkpoint import CheckpointManager, export_hf
from torl.learner.config import LearnerSettings
from torl.learner.datasets import FeedOrder, Verifier, load_dataset
from torl.learner.evaluator import HeldOutEval
from torl.learner.grpo import Sample, samples_from_group
from torl.learner.ledger import Counters, Ledger
from torl.learner.publisher import WeightPublisher
from torl.learner.ranks import RankGroup, RankInfo
from torl.learner.sink import MetricsSink, step_row
from torl.learner.source import StepData, TrainingError, TrainSource
from torl.learner.weight_sync import replica_targets
from torl.v1 import common_pb2, trajectory_pb2

__all__ = ["Orchestrator", "TrainingError"]
log = get_logger("torl.learner.orchestrator")


class Orchestrator:
    """Owns the step loop on rank 0. `engine_factory` builds this rank's engine (tests may pass a smaller one)."""

    def __init__(self, settings: LearnerSettings, engine_factory: Callable[[], Any] | None = None,
                 ranks: RankInfo | None = None) -> None:
        self.s = settings
        self.ranks = ranks or RankInfo()
        self.out = Path(settings.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        dataset = load_dataset(settings.data)
        train_set = list(dataset.train())
        self.verifier = dataset if isinstance(dataset, Verifier) else None
        self.ledger = Ledger(settings.run_id, train_set, FeedOrder(len(train_set), settings.data.seed,
                                                                   settings.data.shuffle),
                             prompts_per_step=settings.data.prompts_per_step, group_size=settings.data.group_size,
                             max_staleness=settings.loop.max_staleness,
                             reissue_after_seconds=settings.loop.reissue_after_seconds)
        self.stop_event = threading.Event()
        # Redis commands ride out a Redis restart for as long as a step may wait for data.
        self.buffer = RedisBuffer(settings.redis_url, settings.run_id, settings.buffer,
                                  retry_seconds=settings.loop.step_timeout_seconds, stop=self.stop_event)
        self.source = TrainSource(self.buffer, self.ledger, read_block_ms=settings.loop.read_block_ms,
                                  step_timeout_seconds=settings.loop.step_timeout_seconds, stop=self.stop_event)
        self.ckpt = CheckpointManager(self.out / "checkpoints", settings.checkpoint.keep_last)
        self.evaluator = HeldOutEval(list(dataset.eval())[: settings.data.max_eval_prompts],
                                     settings.loop.eval_temperature, settings.weight_sync.tls,
                                     concurrency=settings.loop.eval_concurrency)
        self._engine_factory = engine_factory
        self.engine: RankGroup | None = None
        self.publisher: WeightPublisher | None = None
        self.sink: MetricsSink | None = None
        self.unacked: list[str] = []  # applied entries waiting for a durable checkpoint
        self.phase = "starting"
        self.last_eval: dict[str, float] = {}

    @property
    def step(self) -> int:
        return self.ledger.step

    @property
    def incarnation(self) -> int:
        return self.ledger.incarnation

    @property
    def counters(self) -> Counters:
        return self.ledger.counters

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.setup()
            if self.s.loop.eval_every and self.step == 0:
                self.record_eval()
            while self.step < self.s.loop.total_steps and not self.stop_event.is_set():
                self.train_one_step()
            if self.step >= self.s.loop.total_steps:
                self.finish()
        except BaseException:
            if self.engine is not None:
                self.engine.failed = True  # the other ranks may be mid-command: the launcher stops them
            raise
        finally:
            self.close()

    def setup(self) -> None:
        self.phase = "starting"
        self.buffer.ensure_streams()
        self.engine = RankGroup(self._engine_factory() if self._engine_factory else self._default_engine(), self.ranks)
        state = self.ckpt.load(self.engine) if self.s.checkpoint.resume else None
        if state:
            self.ledger.restore(state, time.monotonic())
            log.info("resumed", step=self.step, cursor=self.ledger.cursor, outstanding=len(self.ledger.outstanding))
        self.ledger.begin(self.buffer.next_incarnation())
        self.buffer.write_state({"step": self.step, "incarnation": self.incarnation,
                                 "total_steps": self.s.loop.total_steps})
        self.publisher = WeightPublisher(self.s.weight_sync, self.engine, self.buffer, self.s.loop.max_staleness > 0)
        self.sink = MetricsSink(self.out, self.s.tracking, self.s.loop.samples_per_step, self.s.run_id)
        # Rollout serves our weights (and our new incarnation) before the first new step.
        self.publisher.push(self.version, wait=True)

    def _default_engine(self) -> Any:
        from torl.learner.engine import TrainEngine

        return TrainEngine(self.s.model_dir, self.s.engine, self.s.grpo)

    @property
    def version(self) -> common_pb2.WeightVersion:
        return self.ledger.version

    def collect_step_data(self) -> StepData:
        """Block until the step has prompts_per_step usable groups (torl.learner.source)."""
        self.phase = "waiting_for_data"
        return self.source.next_step(self._while_waiting, self._tick_seconds())

    def _tick_seconds(self) -> float:
        check = self.s.weight_sync.check_every_seconds
        if self.ranks.world_size == 1:
            return check
        beat = min(30.0, self.s.engine.dist_timeout_seconds / 4)  # the other ranks wait under that timeout
        return min(check, beat) if check else beat

    def _while_waiting(self) -> None:
        if self.engine is None:  # nothing to push or to keep alive yet
            return
        if self.s.weight_sync.check_every_seconds:
            # A replica that restarted serves its base weights and would hold our prompts forever.
            self.repush_to_lagging_replicas()
        if self.ranks.world_size > 1:
            self.engine.heartbeat()

    def repush_to_lagging_replicas(self) -> list[str]:
        return self.publisher.repush_lagging(self.version) if self.publisher is not None else []

    def train_one_step(self) -> None:
        assert self.engine is not None and self.publisher is not None and self.sink is not None
        t0 = time.perf_counter()
        data = self.collect_step_data()
        t_data = time.perf_counter()

        self.phase = "training"
        for g in data.groups:
            self.rescore(g)
        samples: list[Sample] = []
        total_tokens = 0
        for g in data.groups:
            gs = samples_from_group(g, self.s.grpo)
            samples.extend(gs.samples)
            total_tokens += gs.trained_tokens
        result = self.engine.train_step(samples, max(total_tokens, 1))
        self.ledger.apply([g.group_id for g in data.groups])
        self.unacked.extend(data.entry_ids)
        # Audit trail: which groups each (incarnation, step) applied; resume tests replay it.
        with (self.out / "applied.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"incarnation": self.incarnation, "step": self.step, "world_size": self.ranks.world_size,
                                "group_ids": [g.group_id for g in data.groups], "entry_ids": data.entry_ids}) + "\n")
        t_train = time.perf_counter()

        self.phase = "pushing_weights"
        push_seconds, push_failed = self.publisher.push(self.version, wait=self.s.loop.max_staleness == 0)
        ckpt_seconds = 0.0
        if self.step % self.s.checkpoint.every_steps == 0:
            ckpt_seconds = self.checkpoint()
        if self.s.checkpoint.hf_export_every and self.step % self.s.checkpoint.hf_export_every == 0:
            export_hf(self.engine, self.out / "hf", self.step, self.s.model_dir)
        t_end = time.perf_counter()

        row = step_row(self.step, self.version, data, result, total_tokens, self.counters.as_dict(),
                       {"wait": t_data - t0, "train": t_train - t_data, "weight_push": push_seconds,
                        "checkpoint": ckpt_seconds, "step": t_end - t0},
                       push_failed=push_failed, repushes=self.publisher.repushes, ranks=self.ranks.world_size)
        row.update(self.redis_stats())
        if self.s.loop.eval_every and self.step % self.s.loop.eval_every == 0:
            row.update({f"eval_{k}": v for k, v in self.evaluate().items()})
        self.sink.record(row, data.groups)

    def rescore(self, g: trajectory_pb2.TrajectoryGroup) -> None:
        """Apply the dataset's own verifier, when it has one."""
        if self.verifier is None:
            return
        for t in g.trajectories:
            r = self.verifier.verify(t.text, g.prompt.answer)
            if r is not None:
                t.reward = float(r)
                t.correct = r > 0

    # -- checkpoints, evaluation, the end ------------------------------------------------------------
    def checkpoint(self) -> float:
        """Every rank's shard, then the metadata; only then are the groups it holds acked."""
        assert self.engine is not None
        self.phase = "checkpointing"
        t0 = time.perf_counter()
        self.ckpt.save(self.engine, self.step, {**self.ledger.snapshot(), "world_size": self.ranks.world_size})
        self.buffer.ack(self.unacked)
        self.unacked.clear()
        seconds = time.perf_counter() - t0
        m.CHECKPOINT_SECONDS.observe(seconds)
        return seconds

    def finish(self) -> None:
        assert self.engine is not None
        self.phase = "checkpointing"
        if self.step % self.s.checkpoint.every_steps != 0:
            self.checkpoint()
        if self.s.loop.eval_every and self.step % self.s.loop.eval_every != 0:
            self.record_eval()
        export_hf(self.engine, self.out / "hf", self.step, self.s.model_dir)
        self.phase = "done"
        log.info("training_done", step=self.step, **self.counters.as_dict())

    def evaluate(self) -> dict[str, float]:
        """Held-out accuracy, reward and tool use through the first replica, at this step's weights."""
        targets = replica_targets(self.s.weight_sync)
        if not targets or not self.evaluator.problems:
            return {}
        assert self.publisher is not None
        self.publisher.flush(self.version)  # evaluate this step's weights, not an older in-flight version
        self.phase = "evaluating"
        self.last_eval = self.evaluator.run(targets[0], self.version)
        return self.last_eval

    def record_eval(self) -> None:
        assert self.sink is not None
        result = self.evaluate()
        if result:
            self.sink.record({"step": self.step, "time": time.time(), **{f"eval_{k}": v for k, v in result.items()}},
                             [])

    def redis_stats(self) -> dict[str, int]:
        mem = self.buffer.memory()
        m.REDIS_MEMORY.set(mem["used_memory_bytes"])
        for k in ("prompts", "trajectories", "dead"):
            m.STREAM_LENGTH.labels(stream=k).set(mem[f"{k}_len"])
        pending = self.buffer.pending_count()
        m.PENDING.set(pending)
        return {"redis_used_memory_bytes": mem["used_memory_bytes"], "redis_pending": pending,
                "redis_trajectories_len": mem["trajectories_len"],
                # Outages the learner rode out (retried commands, seconds waited), cumulative.
                "redis_errors_total": self.buffer.errors,
                "redis_unavailable_seconds_total": round(self.buffer.unavailable_seconds, 3)}

    def status(self) -> dict[str, Any]:
        return {"step": self.step, "incarnation": self.incarnation, "phase": self.phase,
                "total_steps": self.s.loop.total_steps, **self.counters.as_dict()}

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        if self.sink is not None:
            self.sink.close()
        if self.engine is not None:
            self.engine.close()
        self.buffer.close()
