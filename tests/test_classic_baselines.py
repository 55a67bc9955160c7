"""Classic bandit and MDP baselines: Gittins indices against published values, small exact cases."""

from __future__ import annotations

import numpy as np
import pytest

from metarl.baselines import bandits, mdps

# ------------------------------------------------------------------------------------------ Gittins


@pytest.mark.parametrize(
    ("gamma", "expected"),
    # ν(1, 1): the Gittins index of a fresh Beta(1, 1) Bernoulli arm, as tabulated by Gittins (1979) and
    # Gittins, Glazebrook & Weber (2011): 0.5590 (γ = 0.5), 0.7029 (0.9), 0.7614 (0.95), 0.8699 (0.99).
    [(0.5, 0.5590), (0.9, 0.7029), (0.95, 0.7614), (0.99, 0.8699)],
)
def test_gittins_index_of_a_fresh_arm_matches_published_values(gamma: float, expected: float) -> None:
    assert bandits.gittins_indices(0, gamma)[0, 0] == pytest.approx(expected, abs=6e-4)


def test_gittins_index_properties() -> None:
    nu = bandits.gittins_indices(8, 0.9)
    s, f = np.meshgrid(np.arange(9), np.arange(9), indexing="ij")
    valid = s + f <= 8
    mean = bandits.posterior_mean(s, f)
    assert np.all(nu[valid] >= mean[valid] - 1e-9)  # exploration has a non-negative value
    assert np.all(nu[valid] <= 1.0)
    assert np.all(np.isnan(nu[~valid]))
    assert np.all(np.diff(nu[:4, 0]) > 0) and np.all(np.diff(nu[0, :4]) < 0)  # up with s, down with f
    # Fixed mean, more evidence: less to learn, a smaller bonus.
    assert nu[0, 0] - 0.5 > nu[1, 1] - 0.5 > nu[3, 3] - 0.5 > 0
    # Myopic limit: the index tends to the posterior mean as γ → 0.
    np.testing.assert_allclose(bandits.gittins_indices(4, 0.01)[:3, :2], mean[:3, :2], atol=2e-3)


# ------------------------------------------------------------------------------------------ bandits


def test_greedy_on_a_deterministic_bandit_loses_at_most_one_pull() -> None:
    probs = np.tile([[1.0, 0.0]], (2000, 1))
    total = bandits.run_trials(bandits.greedy(), probs, 10, np.random.default_rng(0))
    assert set(np.unique(total)) == {9.0, 10.0}  # a wrong first pick (1/3 < 1/2) is abandoned at once
    assert total.mean() == pytest.approx(9.5, abs=0.05)
    ucb0 = bandits.run_trials(bandits.ucb1(0.0), probs, 10, np.random.default_rng(0))
    np.testing.assert_array_equal(ucb0, total)  # UCB1 with c = 0 is greedy (same random numbers)


def test_bandit_strategies_on_fixed_bandits() -> None:
    probs = np.tile([[0.9, 0.1]], (2000, 1))
    rng = np.random.default_rng(1)
    random = bandits.run_trials(bandits.random_policy(), probs, 100, rng).mean()
    assert random == pytest.approx(50.0, abs=1.0)
    uniform = bandits.run_trials(bandits.epsilon_greedy(1.0), probs, 100, rng).mean()
    assert uniform == pytest.approx(50.0, abs=1.0)  # ε = 1 is random play
    for policy in (
        bandits.ucb1(0.2),
        bandits.thompson(),
        bandits.gittins(0.9, 100),
        bandits.optimistic_thompson(5),
    ):
        assert bandits.run_trials(policy, probs, 100, rng).mean() > 85.0
    # Larger UCB1 exploration bonus → more pulls of the bad arm.
    assert (
        bandits.run_trials(bandits.ucb1(1.0), probs, 100, rng).mean()
        < bandits.run_trials(bandits.ucb1(0.2), probs, 100, rng).mean()
    )


def test_tuning_picks_the_best_grid_value() -> None:
    probs = np.random.default_rng(0).uniform(size=(300, 5))
    strategy = bandits.Strategy("ε-greedy", bandits.epsilon_greedy, (0.0, 1.0))
    assert bandits.tune(strategy, probs, 20, seed=0) == 0.0
    assert bandits.tune(bandits.Strategy("Greedy", bandits.greedy), probs, 20, seed=0) is None


# ------------------------------------------------------------------------------------------ MDPs


def test_value_iteration_by_hand() -> None:
    # Two states, two actions; action 1 in state 0 pays 0 but moves to state 1, where action 0 pays 2.
    rewards = np.array([[[1.0, 0.0], [2.0, 0.0]]])
    transitions = np.zeros((1, 2, 2, 2))
    transitions[0, 0, 0, 0] = transitions[0, 0, 1, 1] = transitions[0, 1, 0, 1] = transitions[0, 1, 1, 0] = (
        1.0
    )
    q = mdps.plan(rewards, transitions, horizon=3)
    np.testing.assert_allclose(q[2, 0], [[1.0, 0.0], [2.0, 0.0]])
    np.testing.assert_allclose(q[1, 0], [[2.0, 2.0], [4.0, 1.0]])
    np.testing.assert_allclose(q[0, 0], [[3.0, 4.0], [6.0, 2.0]])


def test_posterior_of_rewards_and_transitions() -> None:
    post = mdps.Posterior.empty(1, 2, 1)
    post.counts[0, 0, 0], post.reward_sums[0, 0, 0] = 3.0, 6.0
    post.transitions[0, 0, 0] = [3.0, 0.0]
    mean, var = post.reward_mean_var()
    assert mean[0, 0, 0] == pytest.approx((1.0 + 6.0) / 4.0) and var[0, 0, 0] == pytest.approx(0.25)
    assert mean[0, 1, 0] == 1.0  # untried: the prior mean
    np.testing.assert_allclose(post.transition_mean()[0, 0, 0], [4 / 5, 1 / 5])
    ml_rewards, ml_transitions = mdps.maximum_likelihood_model(post, np.random.default_rng(0))
    assert ml_rewards[0, 0, 0] == 2.0 and ml_rewards[0, 1, 0] == 0.0
    np.testing.assert_allclose(ml_transitions[0, 0, 0], [1.0, 0.0])
    np.testing.assert_allclose(ml_transitions[0, 1, 0], [0.5, 0.5])


def test_mdp_strategies_on_a_one_state_mdp() -> None:
    # One state, a good (μ = 1) and a bad (μ = −1) action; the optimum over 10 episodes of 10 steps is 100.
    # Planners commit to a model per episode, so they may spend the first episode on the bad action.
    batch = 500
    rewards = np.tile([[[1.0, -1.0]]], (batch, 1, 1))
    transitions = np.ones((batch, 1, 2, 1))
    rng = np.random.default_rng(0)
    random = mdps.run_trials(None, 0.0, rewards, transitions, 10, 10, rng).mean()
    assert random == pytest.approx(0.0, abs=1.5)
    for model in (mdps.posterior_sample_model, mdps.posterior_mean_model, mdps.maximum_likelihood_model):
        assert mdps.run_trials(model, 0.0, rewards, transitions, 10, 10, rng).mean() > 75.0
