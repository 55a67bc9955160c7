"""Losses and estimators as pure functions of tensors.

Shapes are time-major: ``[T, B]`` where ``B`` is any batch of parallel episodes (the rollouts of one task
inside a ``vmap`` over tasks). ``mask[t, b] = 1`` where step ``t`` of episode ``b`` happened (before the
episode ended), ``0`` after. Padding steps never contribute.
"""

from __future__ import annotations

import math

import torch


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shape mismatch: {shapes}")


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go ``R_t = Σ_{k≥t} γ^{k−t} r_k`` over the valid steps of each episode, ``[T, B]``."""
    _check_same_shape(rewards=rewards, mask=mask)
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = (rewards[t] + gamma * running) * mask[t]
        returns[t] = running
    return returns


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Generalized advantage estimation (Schulman et al. 2016, arXiv:1506.02438), ``[T, B]``.

    ``δ_t = r_t + γ V(s_{t+1}) m_{t+1} − V(s_t)``, ``A_t = Σ_k (γλ)^k δ_{t+k}``, accumulated only over
    valid steps. The value after the last valid step is zero: an episode ends at termination or at the
    horizon without bootstrapping, as in rllab/cbfinn/maml_rl and pytorch-maml-rl. With ``lam = 1`` this
    is ``R_t − V(s_t)``.
    """
    _check_same_shape(rewards=rewards, values=values, mask=mask)
    values = values * mask
    next_values = torch.cat([values[1:], torch.zeros_like(values[:1])])
    deltas = (rewards + gamma * next_values - values) * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = (deltas[t] + gamma * lam * running) * mask[t]
        advantages[t] = running
    return advantages


def baseline_features(obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Features of rllab's linear feature baseline: ``[o, o², t, t², t³, 1]`` with ``t = step / 100``.

    ``obs`` is ``[T, B, D]`` (clipped to ``[-10, 10]``), the result ``[T, B, 2D + 4]``, zero on padding.
    """
    if obs.dim() != 3 or obs.shape[:2] != mask.shape:
        raise ValueError(f"obs must be [T, B, D] matching mask [T, B]; got {obs.shape}, {mask.shape}")
    o = obs.clamp(-10.0, 10.0)
    steps = torch.arange(obs.shape[0], dtype=obs.dtype, device=obs.device) / 100.0
    t = steps[:, None, None].expand(*obs.shape[:2], 1)
    feats = torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], dim=-1)
    return feats * mask[..., None]


def fit_linear_baseline(
    features: torch.Tensor, returns: torch.Tensor, reg: float = 1e-5
) -> torch.Tensor:
    """Ridge regression of ``returns [T, B]`` on ``features [T, B, F]``; returns the fitted values ``[T, B]``.

    Solves ``(XᵀX + reg·I) w = Xᵀy`` in float64 over the valid steps (padding rows are zero), as rllab's
    ``LinearFeatureBaseline`` (Duan et al. 2016, arXiv:1604.06778) refit per task.
    """
    x = features.reshape(-1, features.shape[-1]).double()
    y = returns.reshape(-1, 1).double()
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    w = torch.linalg.solve(x.T @ x + reg * eye, x.T @ y)
    return (features.double() @ w).squeeze(-1).to(returns.dtype)


def normalize_advantages(advantages: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Centre and scale advantages over the valid steps (rllab's ``center_adv``); padding stays zero."""
    _check_same_shape(advantages=advantages, mask=mask)
    n = mask.sum().clamp(min=1.0)
    mean = (advantages * mask).sum() / n
    var = (((advantages - mean) * mask) ** 2).sum() / n
    return (advantages - mean) * torch.rsqrt(var + eps) * mask


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``log N(a; μ, diag σ²)`` summed over the last (action) dimension."""
    _check_same_shape(mean=mean, log_std=log_std, actions=actions)
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def vpg_loss(log_probs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE surrogate ``−Σ_t m_t log π(a_t|s_t) A_t / Σ_t m_t`` (Williams 1992); ``A`` is constant."""
    _check_same_shape(log_probs=log_probs, advantages=advantages, mask=mask)
    return -(log_probs * advantages.detach() * mask).sum() / mask.sum().clamp(min=1.0)
