"""Contract tests of the Meta-World families (ML1 / ML10 / ML45; Yu et al. 2019, arXiv:1910.10897).

Meta-World environments take ~0.3 s each to build, so the environments are module-scoped fixtures
and the tests only sample as many goal configurations as they need.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the metarl/ ids)
from envs import metaworld_family
from envs.metaworld_family import MetaWorldEnv, MetaWorldTask
from envs.navigation import NavigationTask

ML10_TRAIN = {
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-close-v3",
    "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "sweep-v3", "basketball-v3",
}  # fmt: skip
ML10_TEST = {"drawer-open-v3", "door-close-v3", "shelf-place-v3", "sweep-into-v3", "lever-pull-v3"}
ML45_TEST = {"bin-picking-v3", "box-close-v3", "hand-insert-v3", "door-lock-v3", "door-unlock-v3"}


def _make(env_id: str, **kwargs: object) -> gym.Env:
    with warnings.catch_warnings():
        # The hidden goal dims of Meta-World's observation space are bounded by [0, 0].
        warnings.filterwarnings("ignore", message=".*maximum and minimum values are equal")
        return gym.make(env_id, **kwargs)


@pytest.fixture(scope="module")
def ml1() -> Iterator[gym.Env]:
    env = _make("metarl/MetaWorldML1-v0")
    yield env
    env.close()


@pytest.fixture(scope="module")
def ml10() -> Iterator[gym.Env]:
    env = _make("metarl/MetaWorldML10-v0")
    yield env
    env.close()


def _check_env(env: gym.Env) -> None:
    with warnings.catch_warnings():
        # Meta-World's observation space: unbounded object dims, [0, 0] hidden goal dims.
        warnings.simplefilter("ignore", UserWarning)
        check_env(env, skip_render_check=True)


def test_spaces_and_horizon(ml1: gym.Env) -> None:
    assert ml1.observation_space.shape == (39,)
    assert ml1.action_space.shape == (4,)
    np.testing.assert_array_equal(ml1.action_space.low, -1.0)
    np.testing.assert_array_equal(ml1.action_space.high, 1.0)
    assert ml1.spec is not None and ml1.spec.max_episode_steps == 500


def test_check_env_ml1(ml1: gym.Env) -> None:
    _check_env(ml1.unwrapped)


def test_check_env_ml10(ml10: gym.Env) -> None:
    _check_env(ml10.unwrapped)


def test_ml1_train_and_test_goals_differ(ml1: gym.Env) -> None:
    # Upstream metaworld 3.1.1 gives the ML1 train env the test goals (PR #573): ours are disjoint.
    family = ml1.unwrapped
    train = family.sample_tasks(50, split="train", seed=0)
    test = family.sample_tasks(50, split="test", seed=0)
    assert {t.split for t in train} == {"train"} and {t.split for t in test} == {"test"}
    assert {t.env_name for t in train + test} == {"reach-v3"}
    train_goals = {t.rand_vec for t in train}
    test_goals = {t.rand_vec for t in test}
    assert len(train_goals) == 50 and len(test_goals) == 50  # all 50 configurations of each split
    assert not train_goals & test_goals
    a, b = np.array(sorted(train_goals)), np.array(sorted(test_goals))
    assert np.min(np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)) > 1e-6


def test_ml10_splits_use_the_benchmark_envs(ml10: gym.Env) -> None:
    family = ml10.unwrapped
    assert set(family.env_names["train"]) == ML10_TRAIN
    assert set(family.env_names["test"]) == ML10_TEST
    train = family.sample_tasks(40, split="train", seed=3)
    test = family.sample_tasks(15, split="test", seed=3)
    assert {t.env_name for t in train} <= ML10_TRAIN
    assert len({t.env_name for t in train}) >= 8
    assert {t.env_name for t in test} <= ML10_TEST
    assert len({t.env_name for t in test}) >= 4
    assert all(0 <= t.index < 50 for t in train + test)


def test_ml45_splits() -> None:
    family = MetaWorldEnv(benchmark="ML45")
    try:
        assert len(family.env_names["train"]) == 45
        assert set(family.env_names["test"]) == ML45_TEST
        assert not set(family.env_names["train"]) & ML45_TEST
        test = family.sample_tasks(3, split="test", seed=0)
        assert {t.env_name for t in test} <= ML45_TEST
    finally:
        family.close()


def test_same_seed_same_tasks(ml1: gym.Env) -> None:
    family = ml1.unwrapped
    assert family.sample_tasks(10, seed=7) == family.sample_tasks(10, seed=7)
    assert family.sample_tasks(10, seed=7) != family.sample_tasks(10, seed=8)
    # The held-out set is fixed: seed=None is the canonical seed 0.
    assert family.sample_tasks(5, split="test") == family.sample_tasks(5, split="test", seed=0)
    # More tasks than configurations: every configuration once before any repeats.
    many = family.sample_tasks(60, split="test", seed=1)
    assert len({t.index for t in many[:50]}) == 50


def test_goal_configurations_are_reproducible(ml10: gym.Env) -> None:
    family = ml10.unwrapped
    before = family.sample_tasks(4, split="test", seed=11)
    metaworld_family._GOAL_CACHE.clear()  # force the goals to be drawn again
    assert family.sample_tasks(4, split="test", seed=11) == before


def test_tasks_round_trip_json(ml1: gym.Env, ml10: gym.Env) -> None:
    for family in (ml1.unwrapped, ml10.unwrapped):
        for task in family.sample_tasks(3, split="train", seed=0) + family.sample_tasks(
            3, split="test", seed=0
        ):
            again = MetaWorldTask.from_dict(json.loads(task.to_json()))
            assert again == task
            assert family.task_from_dict(json.loads(json.dumps(task.to_dict()))) == task
            family.set_task(again)  # reconstructed tasks are accepted
    ml1.reset()
    ml10.reset()


def test_task_persists_across_plain_reset(ml1: gym.Env) -> None:
    task_a, task_b = ml1.unwrapped.sample_tasks(2, split="test", seed=5)
    obs_a, _ = ml1.reset(seed=0, options={"task": task_a})
    for _ in range(5):
        ml1.step(ml1.action_space.sample())
    obs_again, _ = ml1.reset()
    assert ml1.unwrapped.get_task() == task_a
    np.testing.assert_array_equal(obs_again, obs_a)
    obs_b, _ = ml1.reset(options={"task": task_b})
    assert ml1.unwrapped.get_task() == task_b
    assert not np.array_equal(obs_a, obs_b)  # the object starts where the task puts it


def test_switching_task_switches_environment(ml10: gym.Env) -> None:
    family = ml10.unwrapped
    tasks = family.sample_tasks(15, split="test", seed=2)
    first = tasks[0]
    other = next(t for t in tasks if t.env_name != first.env_name)
    ml10.reset(options={"task": first})
    ml10.step(np.zeros(4, dtype=np.float32))
    obs, _ = ml10.reset(options={"task": other})
    assert family.get_task() == other
    assert other.env_name in family.active_env_names and first.env_name in family.active_env_names
    obs, reward, terminated, truncated, info = ml10.step(np.zeros(4, dtype=np.float32))
    assert obs.shape == (39,) and "success" in info and 0.0 <= reward <= 10.0


def test_task_survives_vector_autoreset() -> None:
    vec = gym.vector.SyncVectorEnv(
        [lambda: _make("metarl/MetaWorldML1-v0", max_episode_steps=3) for _ in range(2)]
    )
    try:
        tasks = vec.envs[0].unwrapped.sample_tasks(2, split="test", seed=4)
        first_obs = []
        for sub, task in zip(vec.envs, tasks, strict=True):
            first_obs.append(sub.reset(options={"task": task})[0])
        obs, _ = vec.reset(seed=0)  # plain reset of every sub-env: the tasks stay
        np.testing.assert_array_equal(obs, np.stack(first_obs))
        actions = np.zeros((2, 4), dtype=np.float32)
        for t in range(1, 9):  # truncated at t = 3 and 7; next-step autoreset at t = 4 and 8
            obs, *_ = vec.step(actions)
            if t in (4, 8):
                np.testing.assert_array_equal(obs, np.stack(first_obs))
        assert list(vec.call("get_task")) == tasks
    finally:
        vec.close()


def test_success_with_a_scripted_reach_policy() -> None:
    # Steer the hand to the task's goal (rand_vec[3:] in reach-v3): success must be reported, which
    # also shows that the task's goal really is the one the environment uses.
    family = MetaWorldEnv(benchmark="ML1", env_name="reach-v3", terminate_on_success=True)
    try:
        task = family.sample_tasks(1, split="test", seed=0)[0]
        goal = np.asarray(task.rand_vec[3:])
        obs, _ = family.reset(options={"task": task})
        terminated = False
        for _ in range(200):
            action = np.append(np.clip((goal - obs[:3]) * 10.0, -1.0, 1.0), 0.0).astype(np.float32)
            obs, _, terminated, _, info = family.step(action)
            if terminated:
                break
        assert terminated and info["success"] == 1.0
    finally:
        family.close()


def test_invalid_tasks_and_options_raise(ml1: gym.Env, ml10: gym.Env) -> None:
    family = ml1.unwrapped
    before = family.get_task()
    with pytest.raises(TypeError, match="MetaWorldTask"):
        family.set_task(NavigationTask(goal=(0.1, 0.2)))
    with pytest.raises(TypeError, match="MetaWorldTask"):
        ml1.reset(options={"task": NavigationTask(goal=(0.1, 0.2))})
    with pytest.raises(ValueError, match="unknown option key"):
        ml1.reset(options={"goal": (0.0, 0.0)})
    task = family.sample_tasks(1, split="train", seed=0)[0]
    with pytest.raises(ValueError, match="is not train configuration"):
        family.set_task(MetaWorldTask(task.env_name, "train", task.index, tuple(np.zeros(6))))
    with pytest.raises(ValueError, match="out of range"):
        family.set_task(MetaWorldTask(task.env_name, "train", 50, task.rand_vec))
    with pytest.raises(ValueError, match="not a train environment"):
        family.set_task(MetaWorldTask("push-v3", "train", 0, task.rand_vec))
    with pytest.raises(ValueError, match="split"):
        MetaWorldTask("reach-v3", "validation", 0, task.rand_vec)
    with pytest.raises(ValueError, match="unknown split"):
        family.sample_tasks(1, split="validation")
    ml10_test = ml10.unwrapped.sample_tasks(1, split="test", seed=0)[0]
    with pytest.raises(ValueError, match="not a train environment"):
        ml10.unwrapped.set_task(MetaWorldTask(ml10_test.env_name, "train", 0, ml10_test.rand_vec))
    assert family.get_task() == before  # rejected tasks leave the current one in place
    with pytest.raises(ValueError, match="env_name is only for ML1"):
        MetaWorldEnv(benchmark="ML10", env_name="reach-v3")
    with pytest.raises(ValueError, match="unknown Meta-World environment"):
        MetaWorldEnv(benchmark="ML1", env_name="reach-v2")
    with pytest.raises(ValueError, match="unknown Meta-World benchmark"):
        MetaWorldEnv(benchmark="ML5")
    family.set_task(task)
    with pytest.raises(RuntimeError, match="reset"):
        family.step(np.zeros(4, dtype=np.float32))
    ml1.reset()


def test_missing_metaworld_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "metaworld", None)  # makes `import metaworld` fail
    with pytest.raises(ImportError, match=r'pip install "metarl\[metaworld\]"'):
        MetaWorldEnv()


def test_import_envs_does_not_need_metaworld() -> None:
    code = (
        "import sys; sys.modules['metaworld'] = None\n"
        "import gymnasium as gym, envs, envs.metaworld_family\n"
        "assert 'metarl/MetaWorldML1-v0' in gym.registry\n"
        "assert not any(m == 'metarl' or m.startswith('metarl.') for m in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
