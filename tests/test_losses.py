"""Pure losses and estimators against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from metarl import losses


def test_discounted_returns_stop_at_mask() -> None:
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    mask = torch.tensor([[1.0], [1.0], [1.0], [0.0]])
    out = losses.discounted_returns(rewards, mask, gamma=0.5)
    # R2 = 3, R1 = 2 + 0.5*3 = 3.5, R0 = 1 + 0.5*3.5 = 2.75; the padded step contributes nothing
    assert torch.allclose(out[:, 0], torch.tensor([2.75, 3.5, 3.0, 0.0]))


def test_gae_hand_computed() -> None:
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    values = torch.tensor([[0.5], [1.0], [0.25]])
    mask = torch.ones(3, 1)
    gamma, lam = 0.9, 0.8
    d2 = 2.0 - 0.25
    d1 = 0.0 + gamma * 0.25 - 1.0
    d0 = 1.0 + gamma * 1.0 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    out = losses.gae(rewards, values, mask, gamma, lam)
    assert torch.allclose(out[:, 0], torch.tensor([a0, a1, a2]))


def test_gae_lambda_one_is_returns_minus_values() -> None:
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(7, 5, generator=g)
    values = torch.randn(7, 5, generator=g)
    mask = torch.ones(7, 5)
    mask[4:, 2] = 0.0
    out = losses.gae(rewards, values, mask, 0.99, 1.0)
    expected = (losses.discounted_returns(rewards, mask, 0.99) - values) * mask
    assert torch.allclose(out, expected, atol=1e-5)


def test_linear_baseline_recovers_linear_returns() -> None:
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(10, 6, 2, generator=g)
    mask = torch.ones(10, 6)
    feats = losses.baseline_features(obs, mask)
    w = torch.randn(feats.shape[-1], generator=g)
    returns = feats @ w
    fitted = losses.fit_linear_baseline(feats, returns, reg=1e-10)
    assert torch.allclose(fitted, returns, atol=1e-3)
    assert feats.shape == (10, 6, 2 * 2 + 4)


def test_normalize_advantages_ignores_padding() -> None:
    adv = torch.tensor([[1.0, 3.0], [5.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = losses.normalize_advantages(adv, mask)
    valid = out[mask.bool()]
    assert abs(float(valid.mean())) < 1e-6
    assert abs(float(valid.pow(2).mean()) - 1.0) < 1e-4
    assert out[1, 1] == 0.0


def test_gaussian_log_prob_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(2)
    mean, log_std, a = (torch.randn(4, 3, generator=g) for _ in range(3))
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(a).sum(-1)
    assert torch.allclose(losses.gaussian_log_prob(mean, log_std, a), expected, atol=1e-5)


def test_vpg_loss_value_and_gradient() -> None:
    logp = torch.tensor([[0.5, -1.0], [2.0, 0.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss = losses.vpg_loss(logp, adv, mask)
    assert math.isclose(loss.item(), -(0.5 - 2.0 + 6.0) / 3, rel_tol=1e-6)
    loss.backward()
    assert torch.allclose(logp.grad, -adv * mask / 3)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        losses.vpg_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2, 3))
