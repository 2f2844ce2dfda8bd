"""Weight publishing on rank 0: the current weights to every rollout replica, and the version to Redis.

`push` sends the weights after a step (waiting for acks when max_staleness = 0, in the background
otherwise) and then publishes the version; `repush_lagging` sends them again to just the
replicas found serving older weights (restarted or added mid-run). The weights come from the
rank group's `iter_weights`, which every rank runs (ZeRO-3 gathers one module at a time).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from torl.common.logging import get_logger
from torl.common.redis_layout import version_key
from torl.learner import metrics as m
from torl.learner.buffer import RedisBuffer
from torl.learner.config import WeightSyncSettings
from torl.learner.source import TrainingError
from torl.learner.weight_sync import AsyncPusher, make_weight_sender
from torl.v1 import common_pb2

log = get_logger("torl.learner.publisher")


class WeightPublisher:
    def __init__(self, cfg: WeightSyncSettings, engine: Any, buffer: RedisBuffer, asynchronous: bool) -> None:
        self.engine = engine
        self.buffer = buffer
        self.dtype: torch.dtype = getattr(torch, cfg.dtype)
        self.sender = make_weight_sender(cfg)  # gRPC stream or NCCL broadcast (weight_sync.transport)
        self.pusher: AsyncPusher | None = AsyncPusher(self.sender) if asynchronous else None
        self.repushes = 0  # pushes of the current weights to replicas found behind

    def weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) pairs, gathered as they are consumed: the sender packs them once, in this thread,
        while every other rank gathers in lockstep (ZeRO-3: one module at a time)."""
        pairs = iter(self.engine.iter_weights(self.dtype))
        try:
            yield from pairs
        finally:
            for _ in pairs:  # a sender that stopped early (an error) must not leave the other ranks mid-gather
                pass

    def push(self, version: common_pb2.WeightVersion, wait: bool) -> tuple[float, int]:
        """Push the current weights; (seconds spent here, replicas that failed)."""
        t0 = time.perf_counter()
        tensors = self.weights()
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
        self.buffer.write_state({"step": version.step})
        return time.perf_counter() - t0, failed

    def flush(self, version: common_pb2.WeightVersion) -> None:
        """Make every replica serve `version` now (before an evaluation), even in async mode."""
        if self.pusher is None:
            return
        self.pusher.close()
        self.sender.push(self.weights(), version)
        self.pusher = AsyncPusher(self.sender)

    def repush_lagging(self, current: common_pb2.WeightVersion) -> list[str]:
        """Push the current weights to every replica serving an older version; the replicas that took them.

        In async mode this waits for a quiet pusher: while it is pushing, lagging replicas are expected.
        A replica that does not answer GetStatus is skipped (down or starting); the next check asks again.
        """
        if self.pusher is not None and not self.pusher.idle():
            return []
        try:
            versions = self.sender.replica_versions()
        except Exception as e:  # e.g. the Kubernetes API did not answer: ask again at the next check
            log.warning("replica_check_failed", error=f"{type(e).__name__}: {e}")
            return []
        lagging = {t: f"{v.incarnation}:{v.step}" for t, v in versions.items()
                   if not isinstance(v, str) and version_key(v) < version_key(current)}
        if not lagging:
            return []
        log.warning("replicas_behind", version=f"{current.incarnation}:{current.step}", replicas=lagging)
        res = self.sender.push(self.weights(), current, targets=sorted(lagging))
        for t in res.acked:
            m.WEIGHT_REPUSHES.labels(replica=t).inc()
        self.repushes += len(res.acked)
        if res.failed:
            log.warning("weight_repush_failed", failed=res.failed)
        return res.acked

    def close(self) -> None:
        if self.pusher is not None:
            self.pusher.close()
        self.sender.close()
