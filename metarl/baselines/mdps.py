"""Classic strategies for random tabular MDPs, batched over instances (RL² Table 2).

Duan et al. 2016 (arXiv:1611.02779), §3.2: MDPs with ``|S| = 10``, ``|A| = 5``, ``μ_{s,a} ~ N(1, 1)``,
``r ~ N(μ_{s,a}, 1)``, ``P(·|s, a) ~ Dirichlet(1)``, episodes of ``T = 10`` steps from state 0, trials of
``n`` episodes. Every strategy except ``random`` keeps the conjugate posterior of the unknown MDP — for
rewards ``N((m₀ + Σr) / (1 + N), 1 / (1 + N))`` (prior ``N(1, 1)``, unit noise), for transitions
``Dirichlet(1 + counts)`` — and at the start of every episode plans by finite-horizon value iteration
(:func:`plan`) on one model of the MDP:

- ``Random``: uniformly random actions.
- ``Greedy``: the *estimated* (maximum-likelihood) model — empirical mean rewards and transition
  frequencies, reward 0 and uniform transitions for pairs never tried — acted on greedily through its
  time-dependent ``Q_t``. This is the convention that reproduces the paper's Greedy/ε-greedy numbers.
- ``ε-greedy``: the same, with a uniformly random action with probability ε (tuned per cell).
- ``Greedy-PM``: greedy on the posterior-*mean* model (untried pairs keep the prior mean reward 1 — an
  optimistic-enough start that it explores by itself); not in the paper, and much stronger (see
  ``experiments/rl2_report.md``).
- ``PSRL``: posterior sampling for RL (Osband, Russo & Van Roy 2013, arXiv:1306.0940): one MDP drawn from
  the posterior per episode, acted on greedily.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: ``(posterior, rng) -> (mean rewards [B, S, A], transitions [B, S, A, S])`` — the model to plan on.
ModelFn = Callable[["Posterior", np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass
class Posterior:
    """Sufficient statistics of the conjugate posterior over ``B`` MDPs."""

    counts: np.ndarray  # [B, S, A] visits
    reward_sums: np.ndarray  # [B, S, A]
    transitions: np.ndarray  # [B, S, A, S] observed transitions
    prior_mean: float = 1.0  # μ ~ N(prior_mean, prior_var); r ~ N(μ, noise_var)
    prior_var: float = 1.0
    noise_var: float = 1.0
    concentration: float = 1.0  # Dirichlet prior

    @classmethod
    def empty(cls, batch: int, states: int, actions: int) -> Posterior:
        return cls(
            np.zeros((batch, states, actions)),
            np.zeros((batch, states, actions)),
            np.zeros((batch, states, actions, states)),
        )

    def reward_mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        precision = 1.0 / self.prior_var + self.counts / self.noise_var
        mean = (self.prior_mean / self.prior_var + self.reward_sums / self.noise_var) / precision
        return mean, 1.0 / precision

    def transition_mean(self) -> np.ndarray:
        alpha = self.transitions + self.concentration
        return alpha / alpha.sum(-1, keepdims=True)


def plan(mean_rewards: np.ndarray, transitions: np.ndarray, horizon: int) -> np.ndarray:
    """Finite-horizon value iteration: ``Q_t(s, a) = r(s, a) + Σ_{s'} P(s'|s, a) max_a' Q_{t+1}(s', a')``.

    ``mean_rewards [B, S, A]``, ``transitions [B, S, A, S]`` → ``Q [horizon, B, S, A]`` (``Q_T = 0``).
    """
    q = np.zeros((horizon, *mean_rewards.shape))
    next_value = np.zeros(mean_rewards.shape[:2])
    for t in range(horizon - 1, -1, -1):
        q[t] = mean_rewards + np.einsum("bsaj,bj->bsa", transitions, next_value)
        next_value = q[t].max(-1)
    return q


def posterior_mean_model(post: Posterior, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return post.reward_mean_var()[0], post.transition_mean()


def maximum_likelihood_model(post: Posterior, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    visited = post.counts > 0
    rewards = np.where(visited, post.reward_sums / np.maximum(post.counts, 1.0), 0.0)
    uniform = np.full_like(post.transitions, 1.0 / post.transitions.shape[-1])
    transitions = np.where(
        visited[..., None], post.transitions / np.maximum(post.counts, 1.0)[..., None], uniform
    )
    return rewards, transitions


def posterior_sample_model(post: Posterior, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mean, var = post.reward_mean_var()
    gammas = rng.standard_gamma(post.transitions + post.concentration)
    return mean + np.sqrt(var) * rng.standard_normal(mean.shape), gammas / gammas.sum(-1, keepdims=True)


def run_trials(
    model: ModelFn | None,
    epsilon: float,
    mean_rewards: np.ndarray,
    transitions: np.ndarray,
    episodes: int,
    horizon: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Total reward over ``episodes`` episodes of ``horizon`` steps on each MDP: a ``[B]`` array.

    ``model = None`` acts uniformly at random; otherwise it plans on ``model(posterior)`` at every episode
    start and takes a random action with probability ``epsilon``.
    """
    batch, states, actions = mean_rewards.shape
    post = Posterior.empty(batch, states, actions)
    cdf = np.cumsum(transitions, -1)
    cdf[..., -1] = 1.0
    rows = np.arange(batch)
    total = np.zeros(batch)
    for _ in range(episodes):
        q = None if model is None else plan(*model(post, rng), horizon)
        state = np.zeros(batch, dtype=int)
        for t in range(horizon):
            random_action = rng.integers(actions, size=batch)
            if q is None:
                action = random_action
            else:
                qs = q[t, rows, state]
                best = qs >= qs.max(-1, keepdims=True) - 1e-12
                greedy = np.argmax(np.where(best, rng.random(qs.shape), -1.0), -1)
                action = np.where(rng.random(batch) < epsilon, random_action, greedy)
            reward = mean_rewards[rows, state, action] + rng.standard_normal(batch)
            nxt = (cdf[rows, state, action] <= rng.random(batch)[:, None]).sum(-1)
            post.counts[rows, state, action] += 1.0
            post.reward_sums[rows, state, action] += reward
            post.transitions[rows, state, action, nxt] += 1.0
            total += reward
            state = nxt
    return total


@dataclass(frozen=True)
class Strategy:
    """A named strategy: its model (``None``: random actions) and ε grid (``(0,)``: no exploration)."""

    name: str
    model: ModelFn | None
    grid: tuple[float, ...] = (0.0,)


STRATEGIES = (
    Strategy("Random", None),
    Strategy("PSRL", posterior_sample_model),
    Strategy("ε-greedy", maximum_likelihood_model, (0.0, 0.05, 0.1, 0.2, 0.3)),
    Strategy("Greedy", maximum_likelihood_model),
    Strategy("Greedy-PM", posterior_mean_model),
)


def tune(
    strategy: Strategy,
    mean_rewards: np.ndarray,
    transitions: np.ndarray,
    episodes: int,
    horizon: int,
    seed: int,
) -> float:
    """The ε of ``strategy.grid`` with the highest mean trial reward on the tuning MDPs."""
    if len(strategy.grid) == 1:
        return strategy.grid[0]
    scores = [
        run_trials(
            strategy.model, e, mean_rewards, transitions, episodes, horizon, np.random.default_rng(seed)
        ).mean()
        for e in strategy.grid
    ]
    return strategy.grid[int(np.argmax(scores))]
