"""The learner's orchestrator: prompt feed → trajectory groups → GRPO step → weight push → checkpoint.

Read `Trainer.run` top to bottom; each step:
1. keep (max_staleness + 1) x prompts_per_step prompts outstanding on the prompts stream, in
   dataset order (epochs, seeded shuffle), tagged with the weight version rollout must serve;
2. read trajectory groups until the step has `prompts_per_step` usable ones: malformed entries go
   to the dead-letter stream, groups already applied, read ahead or taken into this step (by id)
   are duplicates, groups more than max_staleness versions old are dropped and counted, groups
   with no usable response are dropped;
   the prompt of a dropped group, or of a group that has not arrived within the deadline, is
   re-issued;
3. one optimizer step (torl.learner.engine), version (incarnation, step + 1);
4. push the weights to every replica (wait for acks when max_staleness = 0, in the background
   otherwise) and publish the version; while step 2 waits, every few seconds each replica's
   GetStatus is asked and a replica serving older weights (restarted, added) gets the current ones;
5. every N steps a durable checkpoint, after which the groups it contains are acked; held-out
   evaluation every N steps; one metrics row per step in metrics.jsonl, sample responses in
   samples.jsonl.

Resume restores the checkpoint (weights, optimizer, step, feed position, outstanding prompts,
applied group ids), takes a new incarnation, pushes its weights before the first new step, and
re-reads the pending groups; ids make re-application impossible.
"""

from __future__ import annotations

import base64
import json
import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torl.common.logging import get_logger
from torl.common.redis_layout import version_key
from torl.common.tool_status import code_error_rate
from torl.learner import metrics as m
from torl.learner.buffer import Entry, RedisBuffer
from torl.learner.checkpoint import CheckpointManager, export_hf
from torl.learner.config import LearnerSettings
from torl.learner.datasets import Dataset, FeedOrder, Problem, Verifier, load_dataset
from torl.learner.grpo import Sample, samples_from_group
from torl.v1 import common_pb2, rollout_pb2, rollout_pb2_grpc, trajectory_pb2

log = get_logger("torl.learner.trainer")

TOOL_OK = common_pb2.TOOL_STATUS_OK


class TrainingError(RuntimeError):
    """The run cannot continue (no data within the step timeout, no replica took the weights, ...)."""


@dataclass
class Outstanding:
    """A prompt on the stream whose group has not been applied yet."""

    prompt: trajectory_pb2.Prompt
    issued_at: float


@dataclass
class Counters:
    applied: int = 0
    dropped_stale: int = 0
    dropped_unusable: int = 0
    dead: int = 0
    duplicate: int = 0
    reissued: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class StepData:
    """What one step trains on."""

    groups: list[trajectory_pb2.TrajectoryGroup] = field(default_factory=list)
    entry_ids: list[str] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)


def trajectory_stats(groups: list[trajectory_pb2.TrajectoryGroup]) -> dict[str, Any]:
    """Reward, accuracy, tool use and length figures over the usable responses of `groups`."""
    trajs = [t for g in groups for t in g.trajectories if not t.excluded]
    excluded = sum(1 for g in groups for t in g.trajectories if t.excluded)
    calls = [c for t in trajs for c in t.tool_calls]
    n = max(len(trajs), 1)
    reasons = Counter(common_pb2.RewardReason.Name(t.reward_reason).removeprefix("REWARD_REASON_").lower()
                      for t in trajs)
    return {
        "responses": len(trajs),
        "excluded": excluded,
        "reward_mean": sum(t.reward for t in trajs) / n,
        "accuracy": sum(1 for t in trajs if t.correct) / n,
        "tool_use_rate": sum(1 for t in trajs if len(t.tool_calls) > 0) / n,
        "tool_calls_per_response": len(calls) / n,
        "code_error_rate": code_error_rate(c.status for c in calls),
        "response_tokens": sum(len(t.token_ids) for t in trajs) / n,
        "reward_by_reason": dict(reasons),
    }


class Trainer:
    """Owns the step loop. `engine_factory` builds the TrainEngine (tests may pass a smaller one)."""

    def __init__(self, settings: LearnerSettings, engine_factory: Callable[[], Any] | None = None) -> None:
        self.s = settings
        self.out = Path(settings.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.dataset: Dataset = load_dataset(settings.data)
        self.train_set: list[Problem] = list(self.dataset.train())
        self.eval_set: list[Problem] = list(self.dataset.eval())[: settings.data.max_eval_prompts]
        self.verifier = self.dataset if isinstance(self.dataset, Verifier) else None
        self.order = FeedOrder(len(self.train_set), settings.data.seed, settings.data.shuffle)
        self.stop_event = threading.Event()
        # Redis commands ride out a Redis restart for as long as a step may wait for data.
        self.buffer = RedisBuffer(settings.redis_url, settings.run_id, settings.buffer,
                                  retry_seconds=settings.loop.step_timeout_seconds, stop=self.stop_event)
        self.ckpt = CheckpointManager(self.out / "checkpoints", settings.checkpoint.keep_last)
        self._engine_factory = engine_factory
        self.engine: Any = None
        self.sender: Any = None
        self.pusher: Any = None
        # State saved in every checkpoint.
        self.step = 0
        self.cursor = 0  # next feed position
        self.applied_ids: set[str] = set()
        self.outstanding: dict[str, Outstanding] = {}
        self.counters = Counters()
        # Process-local state.
        self.incarnation = 0
        self.resumed_from_step = 0
        self.ready: deque[tuple[Entry, int]] = deque()  # usable groups read ahead, with staleness
        self.collecting: set[str] = set()  # group ids already taken into the step being collected
        self.unacked: list[str] = []  # applied entries waiting for a durable checkpoint
        self.phase = "starting"
        self.repushes = 0  # pushes of the current weights to replicas found behind (restarted, added)
        self.last_eval: dict[str, float] = {}
        self._tb: Any = None
        self._wandb: Any = None

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> None:
        self.setup()
        try:
            if self.s.loop.eval_every and self.step == 0:
                self.evaluate()
            while self.step < self.s.loop.total_steps and not self.stop_event.is_set():
                self.train_one_step()
            if self.step >= self.s.loop.total_steps:
                self.finish()
        finally:
            self.close()

    def setup(self) -> None:
        from torl.learner.weight_sync import AsyncPusher, WeightSender

        self.phase = "starting"
        self.buffer.ensure_streams()
        self.engine = self._engine_factory() if self._engine_factory else self._default_engine()
        state = self.ckpt.load(self.engine) if self.s.checkpoint.resume else None
        if state:
            self.restore_state(state)
            log.info("resumed", step=self.step, cursor=self.cursor, outstanding=len(self.outstanding))
        self.resumed_from_step = self.step
        self.incarnation = self.buffer.next_incarnation()
        self.buffer.write_state({"step": self.step, "incarnation": self.incarnation,
                                 "total_steps": self.s.loop.total_steps})
        self.sender = WeightSender(self.s.weight_sync)
        if self.s.loop.max_staleness > 0:
            self.pusher = AsyncPusher(self.sender)
        self._open_trackers()
        # Rollout serves our weights (and our new incarnation) before the first new step.
        self.push_weights(wait=True)

    def _default_engine(self) -> Any:
        from torl.learner.engine import TrainEngine

        return TrainEngine(self.s.model_dir, self.s.engine, self.s.grpo)

    @property
    def version(self) -> common_pb2.WeightVersion:
        return common_pb2.WeightVersion(incarnation=self.incarnation, step=self.step)

    def train_one_step(self) -> None:
        t0 = time.perf_counter()
        self.phase = "waiting_for_data"
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
        self.step += 1
        for g in data.groups:
            self.applied_ids.add(g.group_id)
            self.outstanding.pop(g.group_id, None)
        self.collecting.clear()
        self.unacked.extend(data.entry_ids)
        self.counters.applied += len(data.groups)
        # Audit trail: which groups each (incarnation, step) applied; resume tests replay it.
        with (self.out / "applied.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"incarnation": self.incarnation, "step": self.step,
                                "group_ids": [g.group_id for g in data.groups], "entry_ids": data.entry_ids}) + "\n")
        t_train = time.perf_counter()

        self.phase = "pushing_weights"
        push_seconds, push_failed = self.push_weights(wait=self.s.loop.max_staleness == 0)

        ckpt_seconds = 0.0
        if self.step % self.s.checkpoint.every_steps == 0:
            ckpt_seconds = self.checkpoint()
        if self.s.checkpoint.hf_export_every and self.step % self.s.checkpoint.hf_export_every == 0:
            export_hf(self.engine, self.out / "hf", self.step, self.s.model_dir)
        t_end = time.perf_counter()

        row: dict[str, Any] = {
            "step": self.step,
            "version": f"{self.incarnation}:{self.step}",
            "time": time.time(),
            **trajectory_stats(data.groups),
            "groups": len(data.groups),
            "sequences_trained": result.sequences,
            "trained_tokens": total_tokens,
            "loss": result.loss,
            "grad_norm": result.grad_norm,
            **result.stats.summary(),
            "staleness_mean": statistics.fmean(data.staleness) if data.staleness else 0.0,
            "staleness_max": max(data.staleness, default=0),
            **{f"groups_{k}_total": v for k, v in self.counters.as_dict().items()},
            "wait_seconds": t_data - t0,
            "forward_backward_seconds": result.forward_backward_seconds,
            "optimizer_seconds": result.optimizer_seconds,
            "train_seconds": t_train - t_data,
            "weight_push_seconds": push_seconds,
            "weight_push_failed_replicas": push_failed,
            "weight_repushes_total": self.repushes,
            "checkpoint_seconds": ckpt_seconds,
            "step_seconds": t_end - t0,
            "generation_seconds_mean": statistics.fmean([g.generation_seconds for g in data.groups]),
        }
        row.update(self.redis_stats())
        if self.s.loop.eval_every and self.step % self.s.loop.eval_every == 0:
            row.update({f"eval_{k}": v for k, v in self.evaluate().items()})
        self.record(row, data.groups)

    # -- data --------------------------------------------------------------------------------------
    def collect_step_data(self) -> StepData:
        """Block until the step has prompts_per_step usable groups (see module docstring)."""
        need = self.s.data.prompts_per_step
        deadline = time.monotonic() + self.s.loop.step_timeout_seconds
        data = StepData()
        self.collecting.clear()
        check_every = self.s.weight_sync.check_every_seconds
        next_check = time.monotonic()
        while len(data.groups) < need:
            if self.stop_event.is_set():
                raise TrainingError("stopped while waiting for data")
            if check_every and time.monotonic() >= next_check:
                # A replica that restarted serves its base weights and would hold our prompts forever.
                self.repush_to_lagging_replicas()
                next_check = time.monotonic() + check_every
            if time.monotonic() > deadline:
                raise TrainingError(
                    f"step {self.step + 1}: only {len(data.groups)} of {need} groups within "
                    f"{self.s.loop.step_timeout_seconds:.0f}s; is rollout running?"
                )
            if not self.ready:
                self.feed_prompts()
                self.reissue_overdue()
                for entry in self.buffer.read(count=need, block_ms=self.s.loop.read_block_ms):
                    self.accept(entry)
                continue
            entry, _ = self.ready.popleft()
            assert entry.group is not None
            # A group read ahead during an earlier step is judged again at the version it trains at.
            stale = self.staleness_of(entry.group)
            if stale is None or stale > self.s.loop.max_staleness:
                self._drop_stale(entry)
                continue
            data.groups.append(entry.group)
            data.entry_ids.append(entry.entry_id)
            self.collecting.add(entry.group.group_id)
            data.staleness.append(stale)
            m.STALENESS.observe(stale)
        return data

    def accept(self, entry: Entry) -> None:
        """Sort one entry into dead / duplicate / stale / unusable / ready."""
        if entry.group is None:
            self.buffer.dead_letter(entry, entry.error)
            self.counters.dead += 1
            m.GROUPS.labels(outcome="dead").inc()
            log.warning("dead_letter", entry_id=entry.entry_id, reason=entry.error)
            return
        g = entry.group
        if g.group_id in self.applied_ids or g.group_id in self.collecting or g.group_id in self._queued_ids():
            # The original is applied, in the step being collected, or read ahead: this copy adds nothing.
            self.buffer.ack([entry.entry_id])
            self.counters.duplicate += 1
            m.GROUPS.labels(outcome="duplicate").inc()
            return
        stale = self.staleness_of(g)
        if stale is None or stale > self.s.loop.max_staleness:
            self._drop_stale(entry)
            return
        if all(t.excluded for t in g.trajectories):
            self.buffer.ack([entry.entry_id])
            self.counters.dropped_unusable += 1
            m.GROUPS.labels(outcome="unusable").inc()
            self.reissue(g.group_id, g.prompt)
            return
        self.ready.append((entry, stale))

    def _queued_ids(self) -> set[str]:
        return {e.group.group_id for e, _ in self.ready if e.group is not None}

    def _drop_stale(self, entry: Entry) -> None:
        assert entry.group is not None
        self.buffer.ack([entry.entry_id])
        self.counters.dropped_stale += 1
        m.GROUPS.labels(outcome="dropped_stale").inc()
        self.reissue(entry.group.group_id, entry.group.prompt)

    def staleness_of(self, g: trajectory_pb2.TrajectoryGroup) -> int | None:
        """Versions between the group's oldest start version and now; None if its weights are lost.

        Weights of an earlier incarnation are ours only up to the step this learner resumed from;
        later steps of a dead learner never reached a checkpoint.
        """
        worst = 0
        for t in g.trajectories:
            if t.excluded:
                continue
            v = t.version_start
            if v.incarnation > self.incarnation:
                return None
            if v.incarnation < self.incarnation and v.step > self.resumed_from_step:
                return None
            if v.step > self.step:
                return None
            worst = max(worst, int(self.step - v.step))
        return worst

    def feed_prompts(self) -> None:
        """Top the prompts stream up to (max_staleness + 1) steps' worth of outstanding prompts."""
        per_step = self.s.data.prompts_per_step
        target = (self.s.loop.max_staleness + 1) * per_step
        new: list[trajectory_pb2.Prompt] = []
        while len(self.outstanding) + len(new) < target:
            epoch, idx = self.order.index(self.cursor)
            pid = f"{self.s.run_id}-e{epoch}-{self.cursor}"
            self.cursor += 1
            if pid in self.applied_ids or pid in self.outstanding:
                continue
            p = self.train_set[idx]
            ahead = (len(self.outstanding) + len(new)) // per_step
            new.append(trajectory_pb2.Prompt(
                prompt_id=pid, problem=p.problem, answer=p.answer, dataset=p.dataset,
                step=self.step + 1 + ahead, min_version=self.min_version(ahead), group_size=self.s.data.group_size,
            ))
        if new:
            self.buffer.publish_prompts(new)
            now = time.monotonic()
            for p in new:
                self.outstanding[p.prompt_id] = Outstanding(p, now)

    def min_version(self, ahead: int = 0) -> common_pb2.WeightVersion:
        """Oldest weights a prompt may be sampled with: it is trained `ahead` steps from now, when
        the learner is at version step + ahead, and must then be at most max_staleness old."""
        step = max(self.resumed_from_step, min(self.step, self.step + ahead - self.s.loop.max_staleness))
        return common_pb2.WeightVersion(incarnation=self.incarnation, step=step)

    def reissue(self, prompt_id: str, prompt: trajectory_pb2.Prompt | None = None) -> None:
        """Put a prompt on the stream again (next attempt, current min version)."""
        rec = self.outstanding.get(prompt_id)
        base = rec.prompt if rec is not None else prompt
        if base is None or not base.prompt_id or prompt_id in self.applied_ids or prompt_id in self.collecting:
            return
        p = trajectory_pb2.Prompt()
        p.CopyFrom(base)
        p.attempt = base.attempt + 1
        p.min_version.CopyFrom(self.min_version())
        self.buffer.publish_prompts([p])
        self.outstanding[prompt_id] = Outstanding(p, time.monotonic())
        self.counters.reissued += 1
        m.GROUPS.labels(outcome="reissued").inc()

    def reissue_overdue(self) -> None:
        limit = time.monotonic() - self.s.loop.reissue_after_seconds
        arrived = self._queued_ids() | self.collecting
        for pid, rec in list(self.outstanding.items()):
            if rec.issued_at < limit and pid not in arrived:
                log.warning("prompt_reissued", prompt_id=pid, attempt=rec.prompt.attempt + 1)
                self.reissue(pid)

    def rescore(self, g: trajectory_pb2.TrajectoryGroup) -> None:
        """Apply the dataset's own verifier, when it has one."""
        if self.verifier is None:
            return
        for t in g.trajectories:
            r = self.verifier.verify(t.text, g.prompt.answer)
            if r is not None:
                t.reward = float(r)
                t.correct = r > 0

    # -- weights, checkpoints ---------------------------------------------------------------------
    def push_weights(self, wait: bool) -> tuple[float, int]:
        """Push the current weights; returns (seconds spent here, replicas that failed)."""
        import torch

        t0 = time.perf_counter()
        dtype = getattr(torch, self.s.weight_sync.dtype)
        tensors = dict(self.engine.named_weights(dtype))
        version = self.version
        failed = 0
        if wait or self.pusher is None:
            res = self.sender.push(tensors, version)
            failed = len(res.failed)
            if res.failed and not res.acked:
                raise TrainingError(f"no rollout replica took version {version.incarnation}:{version.step}: "
                                    f"{res.failed}")
        else:
            self.pusher.submit(tensors, version)
        self.buffer.set_version(version)
        self.buffer.write_state({"step": self.step})
        return time.perf_counter() - t0, failed

    def repush_to_lagging_replicas(self) -> list[str]:
        """Push the current weights to every replica that serves an older version; the replicas that took them.

        In async mode this waits for a quiet pusher: while it is pushing, lagging replicas are expected.
        A replica that does not answer GetStatus is skipped (it is down or starting); the next check asks again.
        """
        if self.engine is None or self.sender is None or (self.pusher is not None and not self.pusher.idle()):
            return []
        current = self.version
        try:
            versions = self.sender.replica_versions()
        except Exception as e:  # e.g. the Kubernetes API did not answer: ask again at the next check
            log.warning("replica_check_failed", error=f"{type(e).__name__}: {e}")
            return []
        lagging = {t: f"{v.incarnation}:{v.step}" for t, v in versions.items()
                   if not isinstance(v, str) and version_key(v) < version_key(current)}
        if not lagging:
            return []
        import torch

        log.warning("replicas_behind", version=f"{current.incarnation}:{current.step}", replicas=lagging)
        tensors = dict(self.engine.named_weights(getattr(torch, self.s.weight_sync.dtype)))
        res = self.sender.push(tensors, current, targets=sorted(lagging))
        for t in res.acked:
            m.WEIGHT_REPUSHES.labels(replica=t).inc()
        self.repushes += len(res.acked)
        if res.failed:
            log.warning("weight_repush_failed", failed=res.failed)
        return res.acked

    def checkpoint(self) -> float:
        self.phase = "checkpointing"
        t0 = time.perf_counter()
        self.ckpt.save(self.engine, self.step, self.snapshot_state())
        # Durable now: the groups this checkpoint contains may leave the pending list.
        self.buffer.ack(self.unacked)
        self.unacked.clear()
        seconds = time.perf_counter() - t0
        m.CHECKPOINT_SECONDS.observe(seconds)
        return seconds

    def snapshot_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "cursor": self.cursor,
            "incarnation": self.incarnation,
            "applied_ids": sorted(self.applied_ids),
            "outstanding": [base64.b64encode(o.prompt.SerializeToString()).decode()
                            for o in self.outstanding.values()],
            "counters": self.counters.as_dict(),
            "run_id": self.s.run_id,
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        if state.get("run_id", self.s.run_id) != self.s.run_id:
            raise TrainingError(f"checkpoint belongs to run {state.get('run_id')!r}, not {self.s.run_id!r}")
        self.step = int(state["step"])
        self.cursor = int(state["cursor"])
        self.applied_ids = set(state.get("applied_ids", []))
        now = time.monotonic()
        self.outstanding = {}
        for raw in state.get("outstanding", []):
            p = trajectory_pb2.Prompt.FromString(base64.b64decode(raw))
            self.outstanding[p.prompt_id] = Outstanding(p, now)
        self.counters = Counters(**state.get("counters", {}))

    def finish(self) -> None:
        self.phase = "checkpointing"
        if self.step % self.s.checkpoint.every_steps != 0:
            self.checkpoint()
        if self.s.loop.eval_every and self.step % self.s.loop.eval_every != 0:
            self.record({"step": self.step, "time": time.time(),
                         **{f"eval_{k}": v for k, v in self.evaluate().items()}}, [])
        export_hf(self.engine, self.out / "hf", self.step, self.s.model_dir)
        self.phase = "done"
        log.info("training_done", step=self.step, **self.counters.as_dict())

    # -- evaluation, logging -------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Held-out accuracy, reward and tool use through the first replica's Generate."""
        if not self.eval_set:
            return {}
        from torl.common.grpc_client import sync_channel
        from torl.learner.weight_sync import replica_targets

        targets = replica_targets(self.s.weight_sync)
        if not targets:
            return {}
        if self.pusher is not None:
            # Evaluate the weights of this step, not an older in-flight version.
            self.pusher.close()
            self.sender.push(dict(self.engine.named_weights()), self.version)
            from torl.learner.weight_sync import AsyncPusher

            self.pusher = AsyncPusher(self.sender)
        self.phase = "evaluating"
        t0 = time.perf_counter()
        sampling = rollout_pb2.SamplingOverrides(n=1, temperature=self.s.loop.eval_temperature)
        with sync_channel(targets[0], tls=self.s.weight_sync.tls) as ch:
            stub = rollout_pb2_grpc.RolloutStub(ch)

            def one(p: Problem) -> trajectory_pb2.TrajectoryGroup:
                req = rollout_pb2.GenerateRequest(
                    prompt=trajectory_pb2.Prompt(prompt_id=f"eval-{self.step}-{p.id}", problem=p.problem,
                                                 answer=p.answer, dataset=p.dataset, min_version=self.version),
                    sampling=sampling,
                )
                return stub.Generate(req, timeout=300).group

            with ThreadPoolExecutor(max_workers=8) as pool:
                groups = list(pool.map(one, self.eval_set))
        st = trajectory_stats(groups)
        result = {"accuracy": st["accuracy"], "reward_mean": st["reward_mean"], "tool_use_rate": st["tool_use_rate"],
                  "response_tokens": st["response_tokens"], "seconds": time.perf_counter() - t0,
                  "problems": float(len(groups))}
        m.EVAL_ACCURACY.set(result["accuracy"])
        self.last_eval = result
        log.info("evaluated", step=self.step, **result)
        if self.step == 0:
            self.record({"step": 0, "time": time.time(), **{f"eval_{k}": v for k, v in result.items()}}, [])
        return result

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

    def record(self, row: dict[str, Any], groups: list[trajectory_pb2.TrajectoryGroup]) -> None:
        with (self.out / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if "reward_mean" in row:
            m.STEP.set(self.step)
            m.REWARD_MEAN.set(row["reward_mean"])
            m.ACCURACY.set(row["accuracy"])
            m.TOOL_USE.set(row["tool_use_rate"])
            m.TOOL_CALLS_PER_RESPONSE.set(row["tool_calls_per_response"])
            m.CODE_ERROR.set(row["code_error_rate"])
            m.RESPONSE_TOKENS.set(row["response_tokens"])
            m.CLIP_FRACTION.set(row["clip_fraction"])
            m.IMPORTANCE_RATIO.labels(stat="mean").set(row["importance_ratio_mean"])
            m.IMPORTANCE_RATIO.labels(stat="max").set(row["importance_ratio_max"])
            for reason, n in row["reward_by_reason"].items():
                m.REWARDS_BY_REASON.labels(reason=reason).inc(n)
            m.GROUPS.labels(outcome="applied").inc(row["groups"])
            for phase in ("wait", "forward_backward", "optimizer", "weight_push", "checkpoint", "step"):
                m.STEP_SECONDS.labels(phase=phase).observe(row[f"{phase}_seconds"])
            log.info("step", step=self.step, reward=round(row["reward_mean"], 3),
                     tool_use=round(row["tool_use_rate"], 3), seconds=round(row["step_seconds"], 2))
        if groups and self.s.loop.samples_per_step:
            with (self.out / "samples.jsonl").open("a", encoding="utf-8") as f:
                for g in groups[: self.s.loop.samples_per_step]:
                    t = g.trajectories[0]
                    f.write(json.dumps({"step": self.step, "group_id": g.group_id, "problem": g.prompt.problem,
                                        "answer": g.prompt.answer, "reward": t.reward, "text": t.text,
                                        "tool_calls": len(t.tool_calls)}) + "\n")
        scalars = {k: v for k, v in row.items() if isinstance(v, int | float) and k not in ("step", "time")}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, row["step"])
        if self._wandb is not None:
            self._wandb.log(scalars, step=row["step"])

    def _open_trackers(self) -> None:
        if self.s.tracking.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out / "tb"))
        if self.s.tracking.wandb_project:
            import wandb  # optional; not a dependency of the learner extra

            self._wandb = wandb.init(project=self.s.tracking.wandb_project, name=self.s.run_id)

    def status(self) -> dict[str, Any]:
        return {"step": self.step, "incarnation": self.incarnation, "phase": self.phase,
                "total_steps": self.s.loop.total_steps, **self.counters.as_dict()}

    def close(self) -> None:
        if self.pusher is not None:
            self.pusher.close()
        if self.sender is not None:
            self.sender.close()
        if self._tb is not None:
            self._tb.close()
        if self.engine is not None and hasattr(self.engine, "close"):
            self.engine.close()
        self.buffer.close()

