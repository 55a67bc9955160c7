"""Losses and estimators as pure functions of tensors.

Shapes are time-major: ``[T, B]`` where ``B`` is any batch of parallel episodes (the rollouts of one task
inside a ``vmap`` over tasks). ``mask[t, b] = 1`` where step ``t`` of episode ``b`` happened (before the
episode ended), ``0`` after. Padding steps never contribute.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


def check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shape mismatch: {shapes}")


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go ``R_t = Σ_{k≥t} γ^{k−t} r_k`` over the valid steps of each episode, ``[T, B]``."""
    check_same_shape(rewards=rewards, mask=mask)
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
    check_same_shape(rewards=rewards, values=values, mask=mask)
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


def fit_linear_baseline(features: torch.Tensor, returns: torch.Tensor, reg: float = 1e-5) -> torch.Tensor:
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
    check_same_shape(advantages=advantages, mask=mask)
    n = mask.sum().clamp(min=1.0)
    mean = (advantages * mask).sum() / n
    var = (((advantages - mean) * mask) ** 2).sum() / n
    return (advantages - mean) * torch.rsqrt(var + eps) * mask


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``log N(a; μ, diag σ²)`` summed over the last (action) dimension."""
    check_same_shape(mean=mean, log_std=log_std, actions=actions)
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def vpg_loss(log_probs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE surrogate ``−Σ_t m_t log π(a_t|s_t) A_t / Σ_t m_t`` (Williams 1992); ``A`` is constant."""
    check_same_shape(log_probs=log_probs, advantages=advantages, mask=mask)
    return -(log_probs * advantages.detach() * mask).sum() / mask.sum().clamp(min=1.0)


def likelihood_ratio_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """TRPO surrogate ``−Σ_t m_t (π(a_t|s_t) / π_old(a_t|s_t)) A_t / Σ_t m_t``, ``[T, B]`` inputs.

    Schulman et al. 2015, "Trust Region Policy Optimization", arXiv:1502.05477, eq. (14). ``old_log_probs``
    and ``A`` are constants; at ``π = π_old`` its gradient equals that of :func:`vpg_loss`.
    """
    check_same_shape(log_probs=log_probs, old_log_probs=old_log_probs, advantages=advantages, mask=mask)
    ratio = torch.exp(log_probs - old_log_probs.detach())
    return -(ratio * advantages.detach() * mask).sum() / mask.sum().clamp(min=1.0)


def ppo_clip_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
) -> torch.Tensor:
    """PPO's clipped surrogate ``−Σ_t m_t min(ρ_t A_t, clip(ρ_t, 1−ε, 1+ε) A_t) / Σ_t m_t``, ``ρ = π/π_old``.

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv:1707.06347, eq. (7); used as the
    outer objective of MAML by ProMP (Rothfuss et al. 2018, arXiv:1810.06784) and garage's MAML-PPO.
    """
    check_same_shape(log_probs=log_probs, old_log_probs=old_log_probs, advantages=advantages, mask=mask)
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    ratio = torch.exp(log_probs - old_log_probs.detach())
    adv = advantages.detach()
    clipped = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    return -(clipped * mask).sum() / mask.sum().clamp(min=1.0)


def gaussian_kl(
    mean_p: torch.Tensor,
    log_std_p: torch.Tensor,
    mean_q: torch.Tensor,
    log_std_q: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Mean over valid steps of ``KL(N(μ_p, σ_p²) ‖ N(μ_q, σ_q²))`` (diagonal, summed over actions).

    ``KL = Σ_d log σ_q/σ_p + (σ_p² + (μ_p − μ_q)²) / (2σ_q²) − ½``; inputs ``[T, B, A]``, ``mask [T, B]``.
    TRPO's trust region (Schulman et al. 2015, arXiv:1502.05477, eq. (12)) uses ``p = π_old``, ``q = π``.
    """
    check_same_shape(mean_p=mean_p, log_std_p=log_std_p, mean_q=mean_q, log_std_q=log_std_q)
    if mean_p.shape[:-1] != mask.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match the leading dims of {tuple(mean_p.shape)}")
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    kl = (log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1.0)


def trial_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """GAE along a whole RL² trial, ``[L, B]`` (``L`` = steps of the trial, ``B`` = trials).

    Schulman et al. 2016 (arXiv:1506.02438) with the RL² objective (Duan et al. 2016, arXiv:1611.02779,
    §2.2: the return of the *trial*): ``δ_t = r_t + γ V(x_{t'}) − V(x_t)`` and
    ``A_t = δ_t + γλ A_{t'}``, where ``t'`` is the next *valid* step of the same trial — across episode
    ends, since the next episode's reward is part of the objective — and ``V = 0`` after the trial's last
    step. Steps with ``mask = 0`` (after a termination, before the episode's reset) are skipped and get
    ``A = 0``.
    """
    check_same_shape(rewards=rewards, values=values, mask=mask)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[0])
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        m = mask[t]
        adv = rewards[t] + gamma * next_value - values[t] + gamma * lam * running
        running = torch.where(m > 0, adv, running)
        next_value = torch.where(m > 0, values[t], next_value)
        advantages[t] = adv * m
    return advantages


class PPOTerms(NamedTuple):
    """The terms of :func:`ppo_losses`, each a scalar tensor."""

    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clip_fraction: torch.Tensor


def ppo_losses(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
) -> PPOTerms:
    """PPO's terms over valid steps of ``[L, B]`` tensors (Schulman et al. 2017, arXiv:1707.06347, eq. 9).

    ``policy = −E[min(ρA, clip(ρ, 1−ε, 1+ε)A)]`` with ``ρ = π/π_old``, ``value = E[½(V − R)²]``,
    ``entropy = E[H(π)]``; the loss to minimise is ``policy + c_v·value − c_e·entropy``.
    """
    check_same_shape(
        log_probs=log_probs,
        old_log_probs=old_log_probs,
        advantages=advantages,
        values=values,
        returns=returns,
        entropy=entropy,
        mask=mask,
    )
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    n = mask.sum().clamp(min=1.0)
    log_ratio = log_probs - old_log_probs.detach()
    ratio = log_ratio.exp()  # computed once for the surrogate and the diagnostics
    adv = advantages.detach()
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    with torch.no_grad():
        approx_kl = (((ratio - 1) - log_ratio) * mask).sum() / n
        clip_fraction = (((ratio - 1).abs() > clip).float() * mask).sum() / n
    return PPOTerms(
        policy=-(surrogate * mask).sum() / n,
        value=(0.5 * (values - returns) ** 2 * mask).sum() / n,
        entropy=(entropy * mask).sum() / n,
        approx_kl=approx_kl,
        clip_fraction=clip_fraction,
    )


# ---------------------------------------------------------------------------------------------- policy
