"""Bernoulli bandits (RL² §3.1): gymnasium contract, task distribution, batched == gymnasium."""

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
from envs.bandit import BanditTask, BatchedBernoulliBandit, BernoulliBanditEnv, bernoulli_reward
from envs.navigation import NavigationTask

IDS = {"metarl/Bandit-K5-v0": 5, "metarl/Bandit-K10-v0": 10, "metarl/Bandit-K50-v0": 50}


@pytest.mark.parametrize("env_id", list(IDS))
def test_check_env(env_id: str) -> None:
    check_env(gym.make(env_id).unwrapped)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*different from the unwrapped.*")
        check_env(gym.make(env_id))


@pytest.mark.parametrize("env_id", list(IDS))
def test_registration(env_id: str) -> None:
    env = gym.make(env_id)
    assert env.unwrapped.num_arms == IDS[env_id]
    assert env.action_space == gym.spaces.Discrete(IDS[env_id])
    assert env.spec is not None and env.spec.max_episode_steps == env.unwrapped.num_pulls == 10


def test_trial_of_num_pulls() -> None:
    env = gym.make("metarl/Bandit-K5-v0", num_pulls=100, max_episode_steps=100)
    env.reset(seed=0)
    flags = [env.step(0)[3] for _ in range(100)]
    assert flags == [False] * 99 + [True]


def test_same_seed_same_tasks_and_trajectory() -> None:
    env = BernoulliBanditEnv(num_arms=10)
    assert env.sample_tasks(5, seed=3) == env.sample_tasks(5, seed=3)
    task = env.sample_tasks(1, seed=3)[0]

    def rollout(seed: int) -> list[float]:
        e = gym.make("metarl/Bandit-K10-v0", num_pulls=50, max_episode_steps=50)
        e.reset(seed=seed, options={"task": task})
        return [e.step(a % 10)[1] for a in range(50)]

    assert rollout(7) == rollout(7)
    assert rollout(7) != rollout(8)


def test_train_and_test_splits_differ() -> None:
    env = BernoulliBanditEnv()
    train = env.sample_tasks(20, split="train", seed=0)
    test = env.sample_tasks(20, split="test", seed=0)
    assert not set(train) & set(test)
    assert env.sample_tasks(20, split="test") == env.sample_tasks(20, split="test", seed=0)


def test_task_distribution() -> None:
    tasks = BernoulliBanditEnv(num_arms=5).sample_tasks(2000, seed=1)
    probs = np.array([t.probs for t in tasks])
    assert probs.shape == (2000, 5)
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    assert abs(probs.mean() - 0.5) < 0.015  # U[0, 1]: mean 1/2, std of the mean 0.003
    assert abs(probs.var() - 1 / 12) < 0.005


def test_task_json_roundtrip() -> None:
    task = BernoulliBanditEnv().sample_tasks(1, seed=0)[0]
    assert BanditTask.from_dict(json.loads(task.to_json())) == task


def test_task_persists_across_reset() -> None:
    env = BernoulliBanditEnv(num_arms=3)
    task = BanditTask(probs=(0.0, 1.0, 0.0))
    env.reset(seed=0, options={"task": task})
    for _ in range(3):
        env.reset()
        assert env.get_task() == task
        assert env.step(1)[1] == 1.0 and env.step(0)[1] == 0.0


def test_task_persists_across_vector_autoreset() -> None:
    tasks = [BanditTask(probs=(0.0,) * 5), BanditTask(probs=(1.0,) * 5)]
    vec = gym.vector.SyncVectorEnv([lambda: gym.make("metarl/Bandit-K5-v0")] * 2)
    for sub, task in zip(vec.envs, tasks, strict=True):
        sub.unwrapped.set_task(task)
    vec.reset(seed=0)
    autoreset = np.zeros(2, dtype=bool)
    episodes_ended = 0
    for _ in range(35):  # three trials of 10 pulls, crossing two autoresets
        _, reward, terminated, truncated, _ = vec.step(np.array([2, 4]))
        np.testing.assert_array_equal(reward[~autoreset], np.array([0.0, 1.0])[~autoreset])
        autoreset = terminated | truncated
        episodes_ended += int(autoreset.all())
    assert episodes_ended == 3
    assert list(vec.call("get_task")) == tasks


def test_errors() -> None:
    env = BernoulliBanditEnv(num_arms=5)
    with pytest.raises(TypeError, match="expects a BanditTask"):
        env.set_task(NavigationTask(goal=(0.0, 0.0)))
    with pytest.raises(TypeError, match="expects a BanditTask"):
        env.reset(options={"task": NavigationTask(goal=(0.0, 0.0))})
    with pytest.raises(ValueError, match="unknown option key"):
        env.reset(options={"goal": 1})
    with pytest.raises(ValueError, match="5 arms"):
        env.set_task(BanditTask(probs=(0.5, 0.5)))
    with pytest.raises(ValueError, match="must lie in"):
        BanditTask(probs=(0.5, 1.5))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="arm index"):
        env.step(5)
    with pytest.raises(ValueError, match="num_arms"):
        BernoulliBanditEnv(num_arms=0)


def test_bernoulli_reward_transform() -> None:
    probs = np.array([0.0, 0.5, 0.5, 1.0], dtype=np.float32)
    uniform = np.array([0.0, 0.4999, 0.5, 0.9999], dtype=np.float32)
    expected = np.array([0.0, 1.0, 0.0, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(bernoulli_reward(probs, uniform), expected)
    torch.testing.assert_close(
        bernoulli_reward(torch.from_numpy(probs), torch.from_numpy(uniform)),
        torch.from_numpy(expected),
    )


def test_batched_equals_gymnasium_step_for_step() -> None:
    num_arms, num_pulls, envs_per_task = 10, 25, 4
    family = BernoulliBanditEnv(num_arms=num_arms, num_pulls=num_pulls)
    tasks = family.sample_tasks(3, seed=0)
    singles = [
        [BernoulliBanditEnv(num_arms=num_arms, num_pulls=num_pulls) for _ in range(envs_per_task)]
        for _ in tasks
    ]
    streams = []  # each env draws exactly one np_random.random(float32) per step: replay it
    for b, row in enumerate(singles):
        for e, env in enumerate(row):
            env.reset(seed=100 * b + e, options={"task": tasks[b]})
        streams.append([copy.deepcopy(env.np_random) for env in row])
    batched = family.make_batched(tasks, envs_per_task, seed=0)
    assert isinstance(batched, BatchedBernoulliBandit) and batched.horizon == num_pulls
    torch.testing.assert_close(batched.reset(), torch.zeros(3, envs_per_task, 1), rtol=0, atol=0)
    action_rng = np.random.default_rng(0)
    for _ in range(num_pulls):
        actions = action_rng.integers(0, num_arms, size=(3, envs_per_task))
        noise = torch.tensor([[rng.random(dtype=np.float32) for rng in row] for row in streams])
        results = [[env.step(actions[b, e]) for e, env in enumerate(row)] for b, row in enumerate(singles)]
        obs, reward, terminated, truncated = batched.step(torch.from_numpy(actions), noise=noise)
        assert torch.equal(obs, torch.tensor(np.array([[r[0] for r in row] for row in results])))
        assert torch.equal(reward, torch.tensor([[r[1] for r in row] for row in results]))
        assert torch.equal(terminated, torch.tensor([[r[2] for r in row] for row in results]))
        assert torch.equal(truncated, torch.tensor([[r[3] for r in row] for row in results]))


def test_batched_randomness() -> None:
    family = BernoulliBanditEnv(num_arms=3)
    tasks = [BanditTask(probs=(0.1, 0.5, 0.9)), BanditTask(probs=(0.9, 0.2, 0.3))]
    batched = family.make_batched(tasks, 20_000, seed=1)
    batched.reset()
    _, reward, _, _ = batched.step(torch.full((2, 20_000), 2))
    # 4 standard deviations of a mean of 20 000 Bernoulli draws is below 0.013.
    torch.testing.assert_close(reward.mean(1), torch.tensor([0.9, 0.3]), rtol=0, atol=0.013)

    def rewards(**kwargs: object) -> torch.Tensor:
        env = family.make_batched(tasks, 8, **kwargs)
        env.reset()
        return torch.stack([env.step(torch.ones(2, 8, dtype=torch.long))[1] for _ in range(10)])

    assert torch.equal(rewards(seed=5), rewards(seed=5))
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(rewards(generator=gen), rewards(seed=5))


def test_batched_errors() -> None:
    family = BernoulliBanditEnv(num_arms=3)
    tasks = family.sample_tasks(2, seed=0)
    with pytest.raises(TypeError, match="BanditTask"):
        family.make_batched([NavigationTask(goal=(0.0, 0.0))], 2)
    with pytest.raises(ValueError, match="same number of arms"):
        BatchedBernoulliBandit([BanditTask(probs=(0.5,)), *tasks], 2)
    with pytest.raises(ValueError, match="either seed or generator"):
        family.make_batched(tasks, 2, seed=0, generator=torch.Generator())
    batched = family.make_batched(tasks, 2, seed=0)
    batched.reset()
    with pytest.raises(ValueError, match="shape"):
        batched.step(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        batched.step(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="arm indices"):
        batched.step(torch.full((2, 2), 3))
