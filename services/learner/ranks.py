"""Data-parallel ranks: rank 0 orchestrates, every rank trains.

Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the environment) the learner is
WORLD_SIZE processes. Rank 0 runs the orchestrator (gRPC, /metrics, Redis, versions, weight
pushes, checkpoint metadata and acks, evaluation, the report) and drives the engine through a
`RankGroup`: each engine call is broadcast as a command, then run on rank 0 too. Every other
rank runs `serve_rank`, which waits for the next command and runs the same call on its own engine:
it serves nothing and never touches Redis.

A step's samples are dealt out by `shard`: sorted by length and dealt round-robin (so ranks get
about the same number of tokens), cut into micro-batches, and every rank's list padded with empty
(zero-weight) micro-batches to the same count; the loss denominator is the step's global token
count, so the update equals the single-rank one. Without torchrun the group has one rank and
every call goes straight to the engine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torl.common.logging import get_logger
from torl.learner.engine import StepResult, TrainEngine
from torl.learner.grpo import LossStats, Sample

log = get_logger("torl.learner.ranks")


@dataclass(frozen=True)
class RankInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> RankInfo:
        """This process's place in a torchrun job (one rank of one when not launched by it)."""
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                   int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def shard(samples: Sequence[Sample], world_size: int, micro_batch_size: int) -> list[list[list[Sample]]]:
    """Per rank, its micro-batches; every rank gets the same number (padded with empty ones)."""
    ordered = sorted(samples, key=lambda s: len(s.prompt_ids) + len(s.response_ids), reverse=True)
    parts: list[list[list[Sample]]] = []
    for r in range(world_size):
        mine = ordered[r::world_size]
        parts.append([mine[i : i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)])
    count = max((len(p) for p in parts), default=0)
    for p in parts:
        p.extend([] for _ in range(count - len(p)))
    return parts


def _reduce_result(result: StepResult, device: torch.device) -> StepResult:
    """Sum the per-rank step figures (max for maxima and times); every rank takes part."""
    import torch.distributed as dist

    st = result.stats
    sums = torch.tensor([result.loss, st.tokens, st.clipped, st.ratio_sum, st.is_sum, st.is_truncated,
                         st.abs_logprob_diff_sum, float(result.sequences)], dtype=torch.float64, device=device)
    maxes = torch.tensor([st.ratio_max, st.is_max, result.forward_backward_seconds], dtype=torch.float64,
                         device=device)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    dist.all_reduce(maxes, op=dist.ReduceOp.MAX)
    s, mx = sums.tolist(), maxes.tolist()
    stats = LossStats(tokens=s[1], clipped=s[2], ratio_sum=s[3], ratio_max=mx[0], is_sum=s[4], is_max=mx[1],
                      is_truncated=s[5], abs_logprob_diff_sum=s[6])
    return StepResult(s[0], stats, result.grad_norm, mx[2], result.optimizer_seconds, result.micro_batches,
                      int(s[7]), {"world_size": float(dist.get_world_size())})


class RankGroup:
    """Rank 0's handle on every rank's engine (with one rank: the engine itself)."""

    def __init__(self, engine: Any, ranks: RankInfo) -> None:
        if not ranks.is_main:
            raise ValueError("only rank 0 drives the rank group; other ranks run serve_rank")
        self.engine = engine
        self.ranks = ranks
        self.failed = False

    def _command(self, *cmd: Any) -> None:
        if self.ranks.world_size > 1:
            import torch.distributed as dist

            dist.broadcast_object_list([cmd], src=0)

    def train_step(self, samples: Sequence[Sample], total_tokens: int) -> StepResult:
        if self.ranks.world_size == 1:
            result: StepResult = self.engine.train_step(samples, total_tokens)
            return result
        import torch.distributed as dist

        parts = shard(samples, self.ranks.world_size, self.engine.cfg.micro_batch_size)
        self._command("train", total_tokens)
        mine: list[Any] = [None]
        dist.scatter_object_list(mine, list(parts), src=0)
        return _reduce_result(self.engine.train_micro_batches(mine[0], total_tokens), self.engine.device)

    def iter_weights(self, dtype: torch.dtype = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
        """The full weights, one module at a time (every rank gathers along; rank 0 yields). Run it to the end."""
        if self.ranks.world_size == 1 and not hasattr(self.engine, "iter_weights"):
            yield from self.engine.named_weights(dtype)
            return
        self._command("weights", dtype)
        yield from self.engine.iter_weights(dtype)

    def named_weights(self, dtype: torch.dtype = torch.float32) -> list[tuple[str, torch.Tensor]]:
        return list(self.iter_weights(dtype))

    def save_checkpoint(self, directory: Path, tag: str, client_state: dict[str, Any]) -> None:
        self._command("save", str(directory), tag, client_state)
        self.engine.save_checkpoint(directory, tag, client_state)

    def load_checkpoint(self, directory: Path, tag: str) -> dict[str, Any]:
        self._command("load", str(directory), tag)
        state: dict[str, Any] = self.engine.load_checkpoint(directory, tag)
        return state

    def export_hf(self, directory: Path, tokenizer_dir: str | Path | None = None) -> None:
        self._command("export", str(directory))
        self.engine.export_hf(directory, tokenizer_dir)

    def heartbeat(self) -> None:
        """Tell the other ranks rank 0 is alive (they wait for commands under the process-group timeout)."""
        self._command("noop")

    def close(self) -> None:
        """Stop the other ranks and tear the process group down. After a failure mid-command the
        ranks may be inside a collective: then nothing is sent and the launcher stops them."""
        if self.failed and self.ranks.world_size > 1:
            return
        self._command("stop")
        if hasattr(self.engine, "close"):
            self.engine.close()


def serve_rank(engine: TrainEngine, ranks: RankInfo) -> None:
    """A rank other than 0: run rank 0's engine commands until it says stop."""
    import torch.distributed as dist

    log.info("rank_serving", rank=ranks.rank, world_size=ranks.world_size)
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0)
        cmd, *args = box[0]
        if cmd == "train":
            mine: list[Any] = [None]
            dist.scatter_object_list(mine, None, src=0)
            _reduce_result(engine.train_micro_batches(mine[0], int(args[0])), engine.device)
        elif cmd == "weights":
            for _ in engine.iter_weights(args[0]):
                pass
        elif cmd == "save":
            engine.save_checkpoint(Path(args[0]), args[1], args[2])
        elif cmd == "load":
            engine.load_checkpoint(Path(args[0]), args[1])
        elif cmd == "export":
            engine.export_hf(Path(args[0]))
        elif cmd == "noop":
            continue
        elif cmd == "stop":
            engine.close()
            log.info("rank_stopped", rank=ranks.rank)
            return
        else:
            raise RuntimeError(f"rank {ranks.rank}: unknown command {cmd!r}")
