"""GRPO advantages and loss against hand-computed values; masks of multi-call trajectories."""

from __future__ import annotations

import math

import pytest
import torch

from torl.learner.config import GrpoSettings
from torl.learner.grpo import collate, group_advantages, grpo_loss, samples_from_group, token_logprobs
from torl.v1 import trajectory_pb2


def test_advantages_hand_computed() -> None:
    # mean -0.5, unbiased std sqrt((1.5^2 + 3 * 0.5^2) / 3) = 1
    adv = group_advantages([1.0, -1.0, -1.0, -1.0], [True] * 4, normalize_std=True, eps=0.0)
    assert adv == pytest.approx([1.5, -0.5, -0.5, -0.5])
    # Without std normalization: reward - mean.
    assert group_advantages([1.0, -1.0], [True, True], normalize_std=False) == pytest.approx([1.0, -1.0])
    # [1, 1, -1, -1]: mean 0, std sqrt(4/3)
    s = math.sqrt(4 / 3)
    assert group_advantages([1, 1, -1, -1], [True] * 4, eps=0.0) == pytest.approx([1 / s, 1 / s, -1 / s, -1 / s])


def test_all_equal_group_has_zero_advantage() -> None:
    assert group_advantages([1.0, 1.0, 1.0], [True] * 3) == [0.0, 0.0, 0.0]
    assert group_advantages([-1.0] * 8, [True] * 8) == [0.0] * 8


def test_excluded_responses_are_left_out_of_mean_and_get_zero() -> None:
    # The excluded one would otherwise shift the mean; it gets 0 and the other two are normalized alone.
    adv = group_advantages([1.0, -1.0, -1.0], [True, True, False], eps=0.0)
    s = math.sqrt(2.0)  # rewards 1, -1: mean 0, unbiased std sqrt(2)
    assert adv == pytest.approx([1 / s, -1 / s, 0.0])
    # One usable response left: nothing to compare against.
    assert group_advantages([1.0, -1.0], [True, False]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="differ in length"):
        group_advantages([1.0], [True, False])


def test_loss_hand_computed_with_clip_and_mask() -> None:
    cfg = GrpoSettings(old_logprob_source="rollout", clip_low=0.2, clip_high=0.2)
    # Two tokens trained, one masked (observation). ratios: e^0.5 = 1.6487 (clipped to 1.2 for A>0),
    # e^-0.5 = 0.6065 (for A<0 the min picks max(r, 0.8) * A → 0.8 * A).
    new = torch.tensor([[0.0, 0.5, 9.0, -0.5]], requires_grad=True)
    rollout = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    adv = torch.tensor([[0.0, 2.0, 5.0, -1.0]])
    mask = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    loss, stats = grpo_loss(new, rollout, adv, mask, cfg, total_tokens=2.0)
    expected = (-(1.2 * 2.0) + -(0.8 * -1.0)) / 2.0  # token mean of -min(rA, clip(r)A)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats.tokens == 2.0
    assert stats.clipped == 2.0  # both tokens took the clipped branch
    loss.backward()
    assert new.grad is not None
    # Clipped tokens pass no gradient; the masked observation token never does.
    assert new.grad.abs().sum().item() == 0.0


def test_loss_unclipped_gradient_and_tis_weight() -> None:
    cfg = GrpoSettings(old_logprob_source="trainer", tis_cap=2.0)
    new = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    # Trainer vs rollout: exp(-1 - -1.5) = 1.6487 (kept), exp(-2 - -3) = 2.718 (truncated to 2), exp(0) = 1.
    rollout = torch.tensor([[-1.5, -3.0, -3.0]])
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    mask = torch.ones(1, 3)
    loss, stats = grpo_loss(new, rollout, adv, mask, cfg, total_tokens=4.0)
    # ratio is 1 with gradient d/dnew = 1 → loss = -sum(w * A) / 4
    w = [math.exp(0.5), 2.0, 1.0]
    assert loss.item() == pytest.approx(-(w[0] * 1 + w[1] * 1 + w[2] * -2) / 4.0, rel=1e-5)
    loss.backward()
    assert new.grad is not None
    assert new.grad.tolist()[0] == pytest.approx([-w[0] / 4, -w[1] / 4, 2.0 / 4])
    assert stats.is_truncated == 1.0
    assert stats.summary()["importance_ratio_max"] == pytest.approx(math.e, rel=1e-5)
    assert stats.summary()["clip_fraction"] == 0.0


def _traj(ids: list[int], mask: list[int], reward: float, excluded: bool = False) -> trajectory_pb2.Trajectory:
    return trajectory_pb2.Trajectory(
        token_ids=ids, logprobs=[-0.5] * len(ids), loss_mask=mask, reward=reward, excluded=excluded
    )


def test_mask_of_multi_call_trajectory_aligns_with_targets() -> None:
    # prompt (3) + response with two tool calls: model, obs, obs, model, obs, model, model
    mask = [1, 0, 0, 1, 0, 1, 1]
    group = trajectory_pb2.TrajectoryGroup(
        group_id="g",
        prompt_token_ids=[7, 8, 9],
        trajectories=[
            _traj([10, 11, 12, 13, 14, 15, 16], mask, 1.0),
            _traj([20, 21], [1, 1], -1.0),
            _traj([30], [1], 1.0, excluded=True),
        ],
    )
    gs = samples_from_group(group, GrpoSettings())
    assert gs.excluded == 1
    assert gs.trained_tokens == 4 + 2  # mask-1 tokens only; the excluded response not counted
    batch = collate(gs.samples)
    assert batch.input_ids.shape == (2, 10)
    # Position i predicts token i+1: response token j (at p+j) is predicted from p+j-1.
    row = batch.loss_mask[0].tolist()
    assert row == [0, 0, 1, 0, 0, 1, 0, 1, 1]
    trained_targets = [int(t) for t, m in zip(batch.targets[0].tolist(), row, strict=True) if m == 1]
    assert trained_targets == [10, 13, 15, 16]  # never an observation token (11, 12, 14)
    assert batch.loss_mask[1].tolist()[:4] == [0, 0, 1, 1]
    assert batch.attention_mask[1].tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]


def test_observation_tokens_do_not_change_the_loss() -> None:
    cfg = GrpoSettings()
    new = torch.tensor([[-1.0, -2.0, -3.0, -4.0]], requires_grad=True)
    rollout = new.detach().clone()
    adv = torch.full((1, 4), 1.0)
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    base, _ = grpo_loss(new, rollout, adv, mask, cfg, 2.0)
    poked = new.detach().clone()
    poked[0, 1:3] = 5.0  # observation positions get wild logprobs
    poked.requires_grad_(True)
    rl = rollout.clone()
    rl[0, 1:3] = -50.0
    other, _ = grpo_loss(poked, rl, adv, mask, cfg, 2.0)
    assert other.item() == pytest.approx(base.item())
    other.backward()
    assert poked.grad is not None
    assert poked.grad[0, 1:3].abs().sum().item() == 0.0


def _tiny_lm() -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(cfg)


def test_one_step_moves_positively_rewarded_tokens_up() -> None:
    model = _tiny_lm()
    model.train()
    prompt = [1, 2, 3]
    good, bad = [10, 11, 12, 13], [20, 21, 22, 23]
    mask = [1, 0, 1, 1]  # a tool observation in the middle
    group = trajectory_pb2.TrajectoryGroup(
        group_id="g", prompt_token_ids=prompt,
        trajectories=[_traj(good, mask, 1.0), _traj(bad, mask, -1.0), _traj(good, mask, 1.0), _traj(bad, mask, -1.0)],
    )
    cfg = GrpoSettings()
    gs = samples_from_group(group, cfg)
    batch = collate(gs.samples)
    with torch.no_grad():
        before = token_logprobs(model, batch)
    batch.rollout_logprobs = before.clone()  # on-policy samples
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    lp = token_logprobs(model, batch)
    loss, _ = grpo_loss(lp, batch.rollout_logprobs, batch.advantages, batch.loss_mask, cfg, gs.trained_tokens)
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = token_logprobs(model, batch)
    m = batch.loss_mask.bool()
    pos = (batch.advantages > 0) & m
    neg = (batch.advantages < 0) & m
    assert (after[pos] - before[pos]).mean() > 0.01
    assert (after[neg] - before[neg]).mean() < -0.01
