"""Random tabular MDPs (RL² §3.2): gymnasium contract, task distribution, batched == gymnasium."""

from __future__ import annotations

import copy
import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the metarl/ ids)
from envs.navigation import NavigationTask
from envs.tabular_mdp import (
    BatchedTabularMDP,
    TabularMDPEnv,
    TabularMDPNoise,
    TabularMDPTask,
    next_state,
    transition_cdf,
)

ENV_ID = "metarl/TabularMDP-v0"


def deterministic_task(offset: float, num_states: int = 10, num_actions: int = 5) -> TabularMDPTask:
    """``s, a -> (s + a + 1) mod S`` with probability 1; ``μ_{s,a} = offset + s + a / 10``."""
    mean = offset + np.arange(num_states)[:, None] + np.arange(num_actions)[None, :] / 10
    target = (np.arange(num_states)[:, None] + np.arange(num_actions)[None, :] + 1) % num_states
    transitions = np.eye(num_states)[target]
    return TabularMDPTask(mean_rewards=mean.tolist(), transitions=transitions.tolist())


def test_check_env() -> None:
    check_env(gym.make(ENV_ID).unwrapped)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*different from the unwrapped.*")
        check_env(gym.make(ENV_ID))


def test_registration_and_spaces() -> None:
    env = gym.make(ENV_ID)
    assert env.observation_space == gym.spaces.Box(0.0, 1.0, (10,), np.float32)
    assert env.action_space == gym.spaces.Discrete(5)
    assert env.spec is not None and env.spec.max_episode_steps == env.unwrapped.episode_length == 10
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, np.eye(10, dtype=np.float32)[0])  # start state 0
    flags = [env.step(0)[3] for _ in range(10)]
    assert flags == [False] * 9 + [True]


def test_same_seed_same_tasks_and_trajectory() -> None:
    env = TabularMDPEnv()
    assert env.sample_tasks(5, seed=3) == env.sample_tasks(5, seed=3)
    task = env.sample_tasks(1, seed=3)[0]

    def rollout(seed: int) -> list[tuple[int, float]]:
        e = gym.make(ENV_ID)
        e.reset(seed=seed, options={"task": task})
        steps = [e.step(a % 5) for a in range(10)]
        return [(int(obs.argmax()), reward) for obs, reward, *_ in steps]

    assert rollout(7) == rollout(7)
    assert rollout(7) != rollout(8)


def test_train_and_test_splits_differ() -> None:
    env = TabularMDPEnv()
    train = env.sample_tasks(10, split="train", seed=0)
    test = env.sample_tasks(10, split="test", seed=0)
    assert not set(train) & set(test)
    assert env.sample_tasks(10, split="test") == env.sample_tasks(10, split="test", seed=0)


def test_task_distribution() -> None:
    tasks = TabularMDPEnv().sample_tasks(500, seed=1)
    mean = np.array([t.mean_rewards for t in tasks])
    probs = np.array([t.transitions for t in tasks])
    assert mean.shape == (500, 10, 5) and probs.shape == (500, 10, 5, 10)
    # μ ~ N(1, 1) over 25 000 draws: std of the mean 0.0063.
    assert abs(mean.mean() - 1.0) < 0.03 and abs(mean.std() - 1.0) < 0.03
    # Dirichlet(1, ..., 1) rows: on the simplex, each entry Beta(1, S - 1) with variance
    # (S - 1) / (S² (S + 1)) = 9 / 1100.
    assert probs.min() >= 0.0
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-12)
    assert abs(probs.var() - 9 / 1100) < 0.05 * 9 / 1100


def test_task_json_roundtrip_and_validation() -> None:
    task = TabularMDPEnv().sample_tasks(1, seed=0)[0]
    restored = TabularMDPTask.from_dict(json.loads(task.to_json()))
    assert restored == task and hash(restored) == hash(task)
    assert isinstance(restored.transitions[0][0], tuple)
    with pytest.raises(ValueError, match="probability vector"):
        TabularMDPTask(mean_rewards=[[0.0]], transitions=[[[0.5]]])
    with pytest.raises(ValueError, match="shape"):
        TabularMDPTask(mean_rewards=[[0.0, 0.0]], transitions=[[[1.0]]])


def test_task_persists_across_reset() -> None:
    env = TabularMDPEnv(reward_noise_std=0.0)
    task = deterministic_task(100.0)
    env.reset(seed=0, options={"task": task})
    for _ in range(3):
        obs, _ = env.reset()
        assert env.get_task() == task and obs.argmax() == 0
        obs, reward, *_ = env.step(2)
        assert obs.argmax() == 3 and reward == pytest.approx(100.2)


def test_task_persists_across_vector_autoreset() -> None:
    tasks = [deterministic_task(0.0), deterministic_task(100.0)]
    vec = gym.vector.SyncVectorEnv([lambda: gym.make(ENV_ID, reward_noise_std=0.0)] * 2)
    for sub, task in zip(vec.envs, tasks, strict=True):
        sub.unwrapped.set_task(task)
    obs, _ = vec.reset(seed=0)
    autoreset = np.zeros(2, dtype=bool)
    episodes_ended = 0
    for t in range(35):  # three episodes of 10 steps, crossing two autoresets
        actions = np.array([t % 5, (t + 1) % 5])
        state = obs.argmax(1)
        obs, reward, terminated, truncated, _ = vec.step(actions)
        for i in np.flatnonzero(~autoreset):
            assert reward[i] == np.float32(tasks[i].mean_rewards[state[i]][actions[i]])
            assert obs[i].argmax() == (state[i] + actions[i] + 1) % 10
        autoreset = terminated | truncated
        episodes_ended += int(autoreset.all())
    assert episodes_ended == 3
    assert list(vec.call("get_task")) == tasks


def test_errors() -> None:
    env = TabularMDPEnv()
    with pytest.raises(TypeError, match="expects a TabularMDPTask"):
        env.set_task(NavigationTask(goal=(0.0, 0.0)))
    with pytest.raises(TypeError, match="expects a TabularMDPTask"):
        env.reset(options={"task": NavigationTask(goal=(0.0, 0.0))})
    with pytest.raises(ValueError, match="unknown option key"):
        env.reset(options={"goal": 1})
    with pytest.raises(ValueError, match=r"\|S\|=10, \|A\|=5"):
        env.set_task(deterministic_task(0.0, num_states=4, num_actions=2))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be"):
        env.step(5)
    with pytest.raises(ValueError, match="dirichlet_concentration"):
        TabularMDPEnv(dirichlet_concentration=0.0)


def test_inverse_cdf_sampling() -> None:
    cdf = transition_cdf(np.array([[0.2, 0.0, 0.3, 0.5]]))
    np.testing.assert_array_equal(cdf, np.array([[0.2, 0.2, 0.5, 1.0]], dtype=np.float32))
    uniform = np.array([0.0, 0.1999, 0.2, 0.4999, 0.5, 0.9999], dtype=np.float32)
    expected = np.array([0, 0, 2, 2, 3, 3])
    np.testing.assert_array_equal(next_state(np.repeat(cdf, 6, 0), uniform), expected)
    got = next_state(torch.from_numpy(np.repeat(cdf, 6, 0)), torch.from_numpy(uniform))
    assert torch.equal(got, torch.from_numpy(expected))


def test_batched_equals_gymnasium_step_for_step() -> None:
    family = TabularMDPEnv()
    tasks = family.sample_tasks(3, seed=0)
    envs_per_task, horizon = 4, family.episode_length
    singles = [[TabularMDPEnv() for _ in range(envs_per_task)] for _ in tasks]
    streams = []  # each env step draws standard_normal(float32) then random(float32): replay them
    for b, row in enumerate(singles):
        for e, env in enumerate(row):
            env.reset(seed=100 * b + e, options={"task": tasks[b]})
        streams.append([copy.deepcopy(env.np_random) for env in row])
    batched = family.make_batched(tasks, envs_per_task, seed=0)
    assert isinstance(batched, BatchedTabularMDP) and batched.horizon == horizon
    action_rng = np.random.default_rng(0)
    visited: set[int] = set()
    for _episode in range(3):  # a trial of three episodes: the tasks stay across reset
        obs = batched.reset()
        expected = [[env.reset()[0] for env in row] for row in singles]
        assert torch.equal(obs, torch.tensor(np.array(expected)))
        for _ in range(horizon):
            actions = action_rng.integers(0, family.num_actions, size=(3, envs_per_task))
            draws = [
                [(rng.standard_normal(dtype=np.float32), rng.random(dtype=np.float32)) for rng in row]
                for row in streams
            ]
            noise = TabularMDPNoise(
                reward=torch.tensor([[z for z, _ in row] for row in draws]),
                transition=torch.tensor([[u for _, u in row] for row in draws]),
            )
            results = [
                [env.step(actions[b, e]) for e, env in enumerate(row)] for b, row in enumerate(singles)
            ]
            obs, reward, terminated, truncated = batched.step(torch.from_numpy(actions), noise=noise)
            assert torch.equal(obs, torch.tensor(np.array([[r[0] for r in row] for row in results])))
            assert torch.equal(reward, torch.tensor([[r[1] for r in row] for row in results]))
            assert torch.equal(terminated, torch.tensor([[r[2] for r in row] for row in results]))
            assert torch.equal(truncated, torch.tensor([[r[3] for r in row] for row in results]))
            visited.update(obs.argmax(-1).flatten().tolist())
    assert len(visited) >= 8  # the comparison covered most of the state space


def test_batched_randomness() -> None:
    family = TabularMDPEnv()
    task = family.sample_tasks(1, seed=2)[0]
    num_envs, action = 20_000, 3
    batched = family.make_batched([task], num_envs, seed=1)
    batched.reset()
    obs, reward, _, _ = batched.step(torch.full((1, num_envs), action))
    # 4 standard deviations of a mean of 20 000 draws: < 0.0142 (frequencies), < 0.029 (rewards).
    freq = obs[0].mean(0).double()
    torch.testing.assert_close(
        freq, torch.tensor(task.transitions[0][action], dtype=torch.float64), rtol=0, atol=0.0142
    )
    assert abs(reward.mean().item() - task.mean_rewards[0][action]) < 0.029
    assert abs(reward.std().item() - 1.0) < 0.03

    def rollout(**kwargs: object) -> torch.Tensor:
        env = family.make_batched([task], 8, **kwargs)
        env.reset()
        return torch.stack([env.step(torch.ones(1, 8, dtype=torch.long))[1] for _ in range(10)])

    assert torch.equal(rollout(seed=5), rollout(seed=5))
    assert torch.equal(rollout(generator=torch.Generator().manual_seed(5)), rollout(seed=5))


def test_batched_errors() -> None:
    family = TabularMDPEnv()
    tasks = family.sample_tasks(2, seed=0)
    with pytest.raises(TypeError, match="TabularMDPTask"):
        family.make_batched([NavigationTask(goal=(0.0, 0.0))], 2)
    with pytest.raises(ValueError, match="same"):
        BatchedTabularMDP([deterministic_task(0.0, num_states=4), *tasks], 2)
    batched = family.make_batched(tasks, 2, seed=0)
    batched.reset()
    with pytest.raises(ValueError, match="shape"):
        batched.step(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        batched.step(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="actions must be action indices in"):
        batched.step(torch.full((2, 2), -1))
    bad_noise = TabularMDPNoise(reward=torch.zeros(2), transition=torch.zeros(2))
    with pytest.raises(ValueError, match="noise"):
        batched.step(torch.zeros(2, 2, dtype=torch.long), noise=bad_noise)
