"""Classic strategies for Bernoulli bandits with a Beta(1, 1) prior, batched over instances (RL² Table 1).

Duan et al. 2016 (arXiv:1611.02779), §3.1 compare RL² on ``k``-armed Bernoulli bandits with ``p_i ~ U[0, 1]``
(the Beta(1, 1) prior) over trials of ``n`` pulls against the strategies below. As in the paper, every
strategy's statistics start from one pseudo-success and one pseudo-failure per arm (the Beta(1, 1) prior),
so the estimate of arm ``i`` is the posterior mean ``μ̂_i = (s_i + 1) / (s_i + f_i + 2)``, and the
hyperparameter of a strategy (ε, c, the Gittins discount, the optimistic sample count) is tuned per
``(n, k)`` on separate instances (:func:`tune`).

- ``random``: a uniformly random arm.
- ``greedy``: ``argmax_i μ̂_i`` (ties broken uniformly at random, as everywhere below).
- ``epsilon_greedy(ε)``: a random arm with probability ε, else greedy.
- ``ucb1(c)`` (Auer et al. 2002): ``argmax_i μ̂_i + c·sqrt(2 ln t / T_i)`` with ``T_i = s_i + f_i + 2`` and
  ``t = Σ_i T_i`` (pseudo-counts included).
- ``thompson``: ``argmax_i θ_i`` with ``θ_i ~ Beta(s_i + 1, f_i + 1)`` (Thompson 1933).
- ``optimistic_thompson(m)``: ``argmax_i max(μ̂_i, max of m posterior samples)`` (RL²'s OTS).
- ``gittins(γ)``: ``argmax_i ν_γ(s_i + 1, f_i + 1)``, the Gittins index of the arm's Beta posterior for
  discount γ (Gittins 1979) — Bayes-optimal for the *infinite-horizon discounted* problem; on the paper's
  finite horizon γ is a tuned hyperparameter (:func:`gittins_indices`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: ``(successes [B, k], failures [B, k], rng) -> arms [B]``
Policy = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def _argmax_random_ties(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``argmax`` along the last axis of ``[B, k]``, ties broken uniformly at random."""
    best = scores >= scores.max(-1, keepdims=True) - 1e-12
    return np.argmax(np.where(best, rng.random(scores.shape), -1.0), axis=-1)


def posterior_mean(successes: np.ndarray, failures: np.ndarray) -> np.ndarray:
    """Mean of the Beta(s + 1, f + 1) posterior of each arm."""
    return (successes + 1.0) / (successes + failures + 2.0)


def random_policy() -> Policy:
    return lambda s, f, rng: rng.integers(s.shape[-1], size=s.shape[0])


def greedy() -> Policy:
    return lambda s, f, rng: _argmax_random_ties(posterior_mean(s, f), rng)


def epsilon_greedy(epsilon: float) -> Policy:
    def act(s: np.ndarray, f: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        explore = rng.random(s.shape[0]) < epsilon
        return np.where(
            explore,
            rng.integers(s.shape[-1], size=s.shape[0]),
            _argmax_random_ties(posterior_mean(s, f), rng),
        )

    return act


def ucb1(c: float) -> Policy:
    def act(s: np.ndarray, f: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pulls = s + f + 2.0
        t = pulls.sum(-1, keepdims=True)
        return _argmax_random_ties(posterior_mean(s, f) + c * np.sqrt(2.0 * np.log(t) / pulls), rng)

    return act


def thompson() -> Policy:
    return lambda s, f, rng: _argmax_random_ties(rng.beta(s + 1.0, f + 1.0), rng)


def optimistic_thompson(samples: int) -> Policy:
    def act(s: np.ndarray, f: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        draws = rng.beta(s + 1.0, f + 1.0, size=(samples, *s.shape)).max(0)
        return _argmax_random_ties(np.maximum(draws, posterior_mean(s, f)), rng)

    return act


def gittins_indices(max_pulls: int, gamma: float, grid: int = 1001, tol: float = 1e-3) -> np.ndarray:
    """Gittins indices ``ν[s, f]`` of Beta(s + 1, f + 1) arms for ``s + f ≤ max_pulls``, ``[P+1, P+1]``.

    Calibration by a retirement option (Whittle 1980; Gittins, Glazebrook & Weber 2011, §8): for a reward
    ``λ`` per step on retirement, the value of an arm in state ``(a, b)`` (Beta parameters) solves
    ``V_λ(a, b) = max(λ / (1 − γ), μ + γ[μ V_λ(a + 1, b) + (1 − μ) V_λ(a, b + 1)])`` with ``μ = a / (a + b)``,
    and ``ν(a, b)`` is the ``λ`` at which retiring and continuing are equally good. We solve it by backward
    induction over ``a + b`` for a grid of ``λ`` in [0, 1] at once, truncating at depth
    ``a + b = max_pulls + 2 + ⌈ln(tol) / ln γ⌉`` where ``V_λ ≈ max(λ, μ) / (1 − γ)`` (the value once the arm's
    mean is known; its error is discounted by ``γ^depth ≤ tol``), and interpolate the crossing linearly.
    Entries with ``s + f > max_pulls`` are NaN.
    """
    if not 0 < gamma < 1:
        raise ValueError(f"gamma must be in (0, 1), got {gamma}")
    lam = np.linspace(0.0, 1.0, grid)[:, None]  # [L, 1]
    retire = lam / (1.0 - gamma)
    lookahead = math.ceil(math.log(tol) / math.log(gamma))
    top = max_pulls + 2 + lookahead  # deepest a + b
    a = np.arange(1, top)  # on diagonal a + b = d: a = 1..d-1
    mu = a / top
    value = np.maximum(lam, mu) / (1.0 - gamma)  # [L, top-1]: V on the deepest diagonal
    index = np.full((max_pulls + 1, max_pulls + 1), np.nan)
    for d in range(top - 1, 1, -1):
        a = np.arange(1, d)
        mu = a / d
        cont = mu + gamma * (mu * value[:, 1:] + (1.0 - mu) * value[:, :-1])  # V(a+1, b) and V(a, b+1)
        if d - 2 <= max_pulls:
            diff = cont - retire  # [L, d-1], non-increasing in λ; the index is its root
            first = np.argmax(diff <= 0, axis=0)  # first grid point where retiring wins
            first = np.where((diff <= 0).any(0), first, grid - 1).clip(1)
            cols = np.arange(d - 1)
            lo, hi = diff[first - 1, cols], diff[first, cols]
            frac = np.where(lo > hi, lo / np.maximum(lo - hi, 1e-300), 0.0)
            nu = lam[first - 1, 0] + frac * (lam[1, 0] - lam[0, 0])
            index[a - 1, d - a - 1] = nu  # s = a - 1, f = b - 1
        value = np.maximum(retire, cont)
    return index


def gittins(gamma: float, max_pulls: int) -> Policy:
    table = gittins_indices(max_pulls, gamma)

    def act(s: np.ndarray, f: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _argmax_random_ties(table[s.astype(int), f.astype(int)], rng)

    return act


def run_trials(policy: Policy, probs: np.ndarray, num_pulls: int, rng: np.random.Generator) -> np.ndarray:
    """Total reward of one trial of ``num_pulls`` pulls on each bandit ``probs [B, k]``: a ``[B]`` array."""
    batch, arms = probs.shape
    s, f = np.zeros((batch, arms)), np.zeros((batch, arms))
    total = np.zeros(batch)
    rows = np.arange(batch)
    for _ in range(num_pulls):
        arm = policy(s, f, rng)
        reward = (rng.random(batch) < probs[rows, arm]).astype(np.float64)
        s[rows, arm] += reward
        f[rows, arm] += 1.0 - reward
        total += reward
    return total


@dataclass(frozen=True)
class Strategy:
    """A named strategy and the hyperparameter grid it is tuned over (empty: nothing to tune)."""

    name: str
    make: Callable[..., Policy]
    grid: tuple[float, ...] = ()


def strategies(num_pulls: int) -> list[Strategy]:
    """The strategies of RL² Table 1, with their tuning grids."""
    return [
        Strategy("Random", random_policy),
        Strategy("Gittins", lambda g: gittins(g, num_pulls), (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)),
        Strategy("TS", thompson),
        Strategy("OTS", optimistic_thompson, (1, 2, 5, 10, 20, 50)),
        Strategy("UCB1", ucb1, (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)),
        Strategy("ε-greedy", epsilon_greedy, (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)),
        Strategy("Greedy", greedy),
    ]


def tune(strategy: Strategy, probs: np.ndarray, num_pulls: int, seed: int) -> float | None:
    """The grid value with the highest mean trial reward on ``probs`` (tuning instances), or ``None``."""
    if not strategy.grid:
        return None
    scores = [
        run_trials(strategy.make(v), probs, num_pulls, np.random.default_rng(seed)).mean()
        for v in strategy.grid
    ]
    return strategy.grid[int(np.argmax(scores))]


def evaluate(
    strategy: Strategy, param: float | None, probs: np.ndarray, num_pulls: int, seed: int
) -> np.ndarray:
    """``[B]`` trial rewards of ``strategy`` (with its tuned ``param``) on ``probs``."""
    policy = strategy.make() if param is None else strategy.make(param)
    return run_trials(policy, probs, num_pulls, np.random.default_rng(seed))
