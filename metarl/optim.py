"""TRPO's two numerical pieces as pure functions: conjugate gradient and a backtracking line search.

Schulman et al. 2015, "Trust Region Policy Optimization", arXiv:1502.05477, App. C: the search direction
``s ≈ F⁻¹ g`` comes from a few conjugate-gradient iterations that only need Fisher-vector products
``v ↦ F v``; the step is scaled to the trust region's boundary ``½ sᵀF s = δ`` and then shrunk geometrically
until the surrogate improves and the KL constraint holds. The defaults are the MAML paper's (Finn et al.
2017, arXiv:1703.03400, §5.3, via rllab): 10 CG iterations, 15 backtracking steps × 0.8.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    iters: int = 10,
    residual_tol: float = 1e-10,
) -> torch.Tensor:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given only ``v ↦ A v``.

    Hestenes & Stiefel (1952); exact after ``dim(b)`` iterations in exact arithmetic. Stops early when the
    squared residual ``‖b − A x‖²`` falls below ``residual_tol``.

    Args:
        matvec: the product ``A v`` for a vector ``v`` shaped like ``b``.
        b: the right-hand side, a 1-D tensor.
        iters: maximum number of iterations (10 in TRPO/MAML).
        residual_tol: tolerance on the squared residual norm.
    """
    if b.dim() != 1:
        raise ValueError(f"b must be a vector, got shape {tuple(b.shape)}")
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    r_dot_r = r @ r
    for _ in range(iters):
        if r_dot_r < residual_tol:
            break
        ap = matvec(p)
        alpha = r_dot_r / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        new_r_dot_r = r @ r
        p = r + (new_r_dot_r / r_dot_r) * p
        r_dot_r = new_r_dot_r
    return x


def trust_region_step(direction: torch.Tensor, fisher_direction: torch.Tensor, max_kl: float) -> torch.Tensor:
    """Scale ``direction`` to the trust region's boundary: ``β s`` with ``β = √(2δ / sᵀF s)``.

    TRPO App. C: with the quadratic model ``KL ≈ ½ (βs)ᵀ F (βs)``, this step has model KL exactly ``δ``.
    ``fisher_direction`` is ``F s``. A zero direction (zero gradient) gives the zero step.
    """
    shs = float(direction @ fisher_direction)
    if shs == 0 and not direction.any():
        return direction
    if not shs > 0:
        raise ValueError(f"sᵀFs must be > 0 (F positive definite), got {shs}")
    return direction * math.sqrt(2.0 * max_kl / shs)


class LineSearchResult(NamedTuple):
    """Outcome of :func:`backtracking_line_search`.

    Attributes:
        fraction: the accepted fraction of the full step (``0.0`` if every candidate was rejected).
        loss: the loss at the accepted point (``loss_before`` if rejected).
        constraint: the constraint value there (``0.0`` if rejected: the old point).
        evaluations: how many candidates were evaluated.
    """

    fraction: float
    loss: float
    constraint: float
    evaluations: int


def backtracking_line_search(
    evaluate: Callable[[float], tuple[float, float]],
    loss_before: float,
    max_constraint: float,
    num_steps: int = 15,
    decay: float = 0.8,
) -> LineSearchResult:
    """Try fractions ``1, decay, decay², …`` of a step; accept the first that lowers the loss within the
    constraint.

    rllab's ``ConjugateGradientOptimizer`` (used by MAML-TRPO): a candidate is accepted when
    ``loss < loss_before`` and ``constraint ≤ max_constraint``; if none of the ``num_steps`` candidates is,
    the step is rejected (fraction 0: stay at the old parameters).

    Args:
        evaluate: fraction ↦ ``(loss, constraint)`` at ``θ_old + fraction · step``.
        loss_before: the loss at ``θ_old``.
        max_constraint: the trust-region radius ``δ`` (max KL).
        num_steps: number of candidates (15).
        decay: shrink factor between candidates (0.8).
    """
    if num_steps < 1 or not 0 < decay < 1:
        raise ValueError(f"need num_steps >= 1 and 0 < decay < 1, got {num_steps}, {decay}")
    for i in range(num_steps):
        fraction = decay**i
        loss, constraint = evaluate(fraction)
        if loss < loss_before and constraint <= max_constraint:
            return LineSearchResult(fraction, loss, constraint, i + 1)
    return LineSearchResult(0.0, loss_before, 0.0, num_steps)
