"""The task-family contract, checked on every registered id (envs.FAMILIES)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.base import Task

IDS = [spec.id for spec in envs.FAMILIES]


@pytest.fixture(scope="module", params=IDS)
def family_id(request: pytest.FixtureRequest) -> str:
    return request.param


def rollout(env: gym.Env, task: Task, steps: int) -> tuple[list, list]:
    obs, _ = env.reset(seed=11, options={"task": task})
    env.action_space.seed(5)
    observations, rewards = [np.asarray(obs)], []
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        observations.append(np.asarray(obs))
        rewards.append(reward)
        if terminated or truncated:
            break
    return observations, rewards


def test_check_env(family_id: str) -> None:
    env = gym.make(family_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_same_seed_same_tasks_and_trajectory(family_id: str) -> None:
    a, b = gym.make(family_id), gym.make(family_id)
    tasks_a = a.unwrapped.sample_tasks(20, split="train", seed=3)
    assert tasks_a == b.unwrapped.sample_tasks(20, split="train", seed=3)
    assert tasks_a != a.unwrapped.sample_tasks(20, split="test", seed=3)  # independent split streams
    obs_a, rew_a = rollout(a, tasks_a[0], 20)
    obs_b, rew_b = rollout(b, tasks_a[0], 20)
    assert all(np.array_equal(x, y) for x, y in zip(obs_a, obs_b, strict=True)) and rew_a == rew_b


def test_tasks_round_trip_json(family_id: str) -> None:
    env = gym.make(family_id).unwrapped
    for task in env.sample_tasks(3, split="test", seed=0):
        again = env.task_type.from_dict(json.loads(task.to_json()))
        assert again == task and hash(again) == hash(task)


def test_task_survives_vector_autoreset(family_id: str) -> None:
    family = gym.make(family_id).unwrapped
    task = family.sample_tasks(1, split="test", seed=7)[0]
    vec = gym.vector.SyncVectorEnv([lambda: gym.make(family_id) for _ in range(2)])
    vec.reset(seed=0, options={"task": task})
    vec.action_space.seed(0)
    ended = np.zeros(2, dtype=bool)
    for _ in range(gym.spec(family_id).max_episode_steps + 2):
        _, _, terminated, truncated, _ = vec.step(vec.action_space.sample())
        ended |= terminated | truncated
        if ended.all():
            break
    vec.step(vec.action_space.sample())  # the autoreset step: reset() without options
    assert ended.all()
    assert vec.call("get_task") == (task, task)
    vec.close()


def test_bad_task_and_option_are_rejected(family_id: str) -> None:
    env = gym.make(family_id).unwrapped
    with pytest.raises(ValueError, match="unknown option key"):
        env.reset(options={"tsk": env.get_task()})
    with pytest.raises(TypeError, match=env.task_type.__name__):
        env.set_task(object())
    with pytest.raises(TypeError, match=env.task_type.__name__):
        env.reset(options={"task": {"goal": (0.0, 0.0)}})
