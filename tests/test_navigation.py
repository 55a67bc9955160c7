"""Navigation2D as MAML §5.3 defines it: dynamics, reward, termination, conventions by kwargs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401
from envs.navigation import Navigation2DEnv, NavigationTask


def test_reward_is_minus_distance_after_the_clipped_move() -> None:
    env = Navigation2DEnv()
    env.reset(options={"task": NavigationTask(goal=(0.3, -0.2))})
    obs, reward, terminated, truncated, info = env.step(np.array([0.5, -0.05], dtype=np.float32))
    assert np.allclose(obs, [0.1, -0.05])  # x clipped to the 0.1 bound
    assert reward == pytest.approx(-np.hypot(0.2, 0.15), rel=1e-6)
    assert not terminated and not truncated and info["distance"] == pytest.approx(-reward)


def test_terminates_within_tolerance_of_the_goal() -> None:
    env = Navigation2DEnv()
    env.reset(options={"task": NavigationTask(goal=(0.095, 0.0))})
    _, reward, terminated, _, _ = env.step(np.array([0.1, 0.0], dtype=np.float32))
    assert terminated and reward == pytest.approx(-0.005, abs=1e-6)


def test_squared_distance_convention_and_goal_range() -> None:
    env = Navigation2DEnv(squared_distance=True, goal_low=-2.0, goal_high=2.0)
    env.reset(options={"task": NavigationTask(goal=(1.0, 1.0))})
    _, reward, *_ = env.step(np.zeros(2, dtype=np.float32))
    assert reward == pytest.approx(-2.0)
    goals = np.array([t.goal for t in env.sample_tasks(500, seed=0)])
    assert goals.min() >= -2.0 and goals.max() <= 2.0 and goals.max() > 1.5


def test_default_goal_distribution_is_uniform_on_the_square() -> None:
    goals = np.array([t.goal for t in Navigation2DEnv().sample_tasks(4000, seed=0)])
    assert goals.min() >= -0.5 and goals.max() <= 0.5
    assert np.allclose(goals.mean(0), 0.0, atol=0.02) and np.allclose(goals.var(0), 1 / 12, atol=0.01)


def test_registered_horizon_is_100() -> None:
    env = gym.make("metarl/Navigation2D-v0")
    env.reset(options={"task": NavigationTask(goal=(0.5, 0.5))})
    steps = 0
    truncated = terminated = False
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
        steps += 1
    assert steps == 100 and truncated and not terminated


def test_normalized_actions_are_rllabs_normalize_convention() -> None:
    env = Navigation2DEnv(normalized_actions=True)
    assert env.action_space.low.tolist() == [-1.0, -1.0] and env.action_space.high.tolist() == [1.0, 1.0]
    env.reset(options={"task": NavigationTask(goal=(0.3, -0.2))})
    obs, _, _, _, _ = env.step(np.array([5.0, -0.5], dtype=np.float32))
    assert np.allclose(obs, [0.1, -0.05])  # 0.1 · clip(a, -1, 1)
    task = NavigationTask(goal=(0.3, -0.2))  # the oracle is the same optimal path in either convention
    assert env.oracle_return(task, 100) == pytest.approx(Navigation2DEnv().oracle_return(task, 100))


@pytest.mark.parametrize("normalized", [False, True])
def test_batched_matches_gymnasium_including_termination(normalized: bool) -> None:
    goals = [(0.05, 0.0), (-0.3, 0.4)]
    tasks = [NavigationTask(goal=g) for g in goals]
    batched = Navigation2DEnv(normalized_actions=normalized).make_batched(tasks, 3, horizon=10)
    batched.reset()
    singles = [Navigation2DEnv(normalized_actions=normalized) for _ in range(6)]
    for i, env in enumerate(singles):
        env.reset(options={"task": tasks[i // 3]})
    rng = np.random.default_rng(1)
    alive = np.ones(6, dtype=bool)
    scale = 10.0 if normalized else 1.0
    for t in range(10):
        noise = rng.normal(0, 0.1, (6, 2)) * scale
        actions = np.where(np.arange(6)[:, None] < 3, [0.05 * scale, 0.0], noise).astype(np.float32)
        obs, reward, terminated, truncated = batched.step(torch.from_numpy(actions.reshape(2, 3, 2)))
        for i in np.flatnonzero(alive):
            o, r, term, _, _ = singles[i].step(actions[i])
            assert np.array_equal(o, obs.reshape(6, 2)[i].numpy()) and r == float(reward.reshape(6)[i])
            assert term == bool(terminated.reshape(6)[i])
            alive[i] = not term
        assert bool(truncated.all()) == (t == 9)
    assert not alive[:3].any()  # the first task's envs reached the goal and stopped
    assert float(reward.reshape(6)[0]) == 0.0  # terminated envs return zero reward afterwards
