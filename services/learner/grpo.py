"""GRPO as ToRL trains it: group-normalized advantages and the clipped, token-mean policy loss.

Pure torch, no transport and no DeepSpeed, so every number here is checked against hand-computed
values in tests/unit/test_grpo.py.

- Advantage of a response = (reward - group mean) / (group std + eps) over the group's usable
  responses (unbiased std, as verl computes it); a group whose rewards are all equal carries zero
  advantage; responses excluded for infrastructure failures are masked out whole.
- Loss per model token: -min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A), averaged over all
  loss-mask-1 tokens of the step (token mean). Observation tokens (mask 0) never contribute, for
  any number of tool calls. No KL term, no entropy bonus.
- Truncated importance sampling (Yao et al., 2025): with `old_logprob_source="trainer"` the ratio r
  is taken against the trainer's own logprob before the step, and each token's loss is weighted by
  min(exp(trainer_logprob - rollout_logprob), tis_cap), which corrects for vLLM's numerics and for
  stale (k > 0) samples without letting one token dominate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from torl.learner.config import GrpoSettings
from torl.v1 import trajectory_pb2


def group_advantages(
    rewards: Sequence[float], usable: Sequence[bool], normalize_std: bool = True, eps: float = 1e-6
) -> list[float]:
    """Per-response advantages of one group; excluded (not usable) responses get 0."""
    if len(rewards) != len(usable):
        raise ValueError(f"rewards ({len(rewards)}) and usable ({len(usable)}) differ in length")
    kept = [float(r) for r, ok in zip(rewards, usable, strict=True) if ok]
    if len(kept) < 2 or max(kept) == min(kept):
        return [0.0] * len(rewards)
    mean = sum(kept) / len(kept)
    std = math.sqrt(sum((r - mean) ** 2 for r in kept) / (len(kept) - 1))
    scale = (std + eps) if normalize_std else 1.0
    return [((float(r) - mean) / scale) if ok else 0.0 for r, ok in zip(rewards, usable, strict=True)]


@dataclass
class Sample:
    """One response ready for the loss: prompt + response ids, rollout logprobs, mask, advantage."""

    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float]
    loss_mask: list[int]
    advantage: float
    group_id: str = ""

    @property
    def trained_tokens(self) -> int:
        return int(sum(self.loss_mask))


@dataclass
class GroupSamples:
    """What one group contributes to a step."""

    samples: list[Sample] = field(default_factory=list)
    trained_tokens: int = 0  # mask-1 tokens of usable responses (the token-mean denominator)
    excluded: int = 0
    zero_advantage: bool = False


def samples_from_group(group: trajectory_pb2.TrajectoryGroup, cfg: GrpoSettings) -> GroupSamples:
    """Advantages for a validated group; excluded trajectories are dropped from the loss whole.

    Responses with zero advantage add nothing to the gradient but their tokens still count in the
    token-mean denominator (as in verl/ToRL), so they are counted and not forwarded.
    """
    trajs = list(group.trajectories)
    usable = [not t.excluded for t in trajs]
    adv = group_advantages([t.reward for t in trajs], usable, cfg.normalize_std, cfg.std_eps)
    out = GroupSamples(excluded=sum(1 for u in usable if not u))
    out.zero_advantage = all(a == 0.0 for a in adv)
    prompt = list(group.prompt_token_ids)
    for t, a, ok in zip(trajs, adv, usable, strict=True):
        if not ok:
            continue
        out.trained_tokens += int(sum(t.loss_mask))
        if a == 0.0:
            continue
        out.samples.append(
            Sample(prompt, list(t.token_ids), list(t.logprobs), list(t.loss_mask), a, group_id=group.group_id)
        )
    return out


@dataclass
class MicroBatch:
    """Padded tensors of a few samples; per-position arrays are aligned with next-token targets."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B, L-1]: the token at position i+1
    loss_mask: torch.Tensor  # [B, L-1] float: 1 where targets[i] is a trained response token
    advantages: torch.Tensor  # [B, L-1]
    rollout_logprobs: torch.Tensor  # [B, L-1]


def collate(samples: Sequence[Sample], pad_id: int = 0) -> MicroBatch:
    """Right-padded batch of prompt+response sequences."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    length = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    b = len(samples)
    ids = torch.full((b, length), pad_id, dtype=torch.long)
    attn = torch.zeros((b, length), dtype=torch.long)
    mask = torch.zeros((b, length - 1), dtype=torch.float32)
    adv = torch.zeros((b, length - 1), dtype=torch.float32)
    rlp = torch.zeros((b, length - 1), dtype=torch.float32)
    for i, s in enumerate(samples):
        p, r = len(s.prompt_ids), len(s.response_ids)
        if p == 0:
            raise ValueError(f"group {s.group_id}: empty prompt_token_ids")
        ids[i, : p + r] = torch.tensor(s.prompt_ids + s.response_ids, dtype=torch.long)
        attn[i, : p + r] = 1
        # Response token j sits at position p + j and is predicted from position p + j - 1.
        mask[i, p - 1 : p - 1 + r] = torch.tensor(s.loss_mask, dtype=torch.float32)
        adv[i, p - 1 : p - 1 + r] = s.advantage
        rlp[i, p - 1 : p - 1 + r] = torch.tensor(s.rollout_logprobs, dtype=torch.float32)
    return MicroBatch(ids, attn, ids[:, 1:].clone(), mask, adv, rlp)


def token_logprobs(model: Any, batch: MicroBatch) -> torch.Tensor:
    """log p(target | prefix) for every position, [B, L-1], from a causal LM's logits."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    logits = logits[:, :-1, :].float()
    picked = logits.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


@dataclass
class LossStats:
    """Sums over mask-1 tokens of one micro-batch (divide by `tokens` for means)."""

    tokens: float = 0.0
    clipped: float = 0.0
    ratio_sum: float = 0.0
    ratio_max: float = 0.0
    is_sum: float = 0.0  # importance weight exp(trainer - rollout), before truncation
    is_max: float = 0.0
    is_truncated: float = 0.0
    abs_logprob_diff_sum: float = 0.0  # |trainer - rollout| logprob

    def add(self, other: LossStats) -> None:
        self.tokens += other.tokens
        self.clipped += other.clipped
        self.ratio_sum += other.ratio_sum
        self.ratio_max = max(self.ratio_max, other.ratio_max)
        self.is_sum += other.is_sum
        self.is_max = max(self.is_max, other.is_max)
        self.is_truncated += other.is_truncated
        self.abs_logprob_diff_sum += other.abs_logprob_diff_sum

    def summary(self) -> dict[str, float]:
        n = max(self.tokens, 1.0)
        return {
            "clip_fraction": self.clipped / n,
            "ratio_mean": self.ratio_sum / n,
            "ratio_max": self.ratio_max,
            "importance_ratio_mean": self.is_sum / n,
            "importance_ratio_max": self.is_max,
            "importance_truncated_fraction": self.is_truncated / n,
            "logprob_abs_diff_mean": self.abs_logprob_diff_sum / n,
        }


def grpo_loss(
    new_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    cfg: GrpoSettings,
    total_tokens: float,
) -> tuple[torch.Tensor, LossStats]:
    """This micro-batch's share of the step's token-mean loss (sum of token losses / total_tokens).

    `total_tokens` is the number of mask-1 tokens of the whole step, so summing the losses of all
    micro-batches gives the exact token mean regardless of how the step is split.
    """
    if total_tokens <= 0:
        raise ValueError("total_tokens must be positive")
    old = new_logprobs.detach() if cfg.old_logprob_source == "trainer" else rollout_logprobs
    ratio = torch.exp(new_logprobs - old)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    diff = (new_logprobs.detach() - rollout_logprobs) * loss_mask
    is_weight = torch.exp(diff) * loss_mask
    truncated = torch.zeros_like(is_weight)
    if cfg.old_logprob_source == "trainer" and cfg.tis_cap > 0:
        truncated = (is_weight > cfg.tis_cap).float() * loss_mask
        per_token = per_token * torch.clamp(is_weight, max=cfg.tis_cap)
    loss = (per_token * loss_mask).sum() / total_tokens
    with torch.no_grad():
        masked_ratio = ratio.detach() * loss_mask
        stats = LossStats(
            tokens=float(loss_mask.sum()),
            clipped=float(((clipped < unclipped).float() * loss_mask).sum()),
            ratio_sum=float(masked_ratio.sum()),
            ratio_max=float(masked_ratio.max()) if masked_ratio.numel() else 0.0,
            is_sum=float(is_weight.sum()),
            is_max=float(is_weight.max()) if is_weight.numel() else 0.0,
            is_truncated=float(truncated.sum()),
            abs_logprob_diff_sum=float(diff.abs().sum()),
        )
    return loss, stats
