"""Contract, convention and fast-path tests of the MuJoCo locomotion families
(envs/locomotion.py)."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the metarl/ ids)
from envs.locomotion import AntDirTask, AntGoalTask, HalfCheetahDirTask, VelocityTask

IDS = [
    "metarl/HalfCheetahVel-v0",
    "metarl/HalfCheetahDir-v0",
    "metarl/AntVel-v0",
    "metarl/AntDir-v0",
    "metarl/AntGoal-v0",
]


def _actions(env: gym.Env, steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(steps, *env.action_space.shape))


# ----------------------------------------------------------------------------------------- contract


@pytest.mark.filterwarnings("ignore:.*Box observation space:UserWarning")
@pytest.mark.parametrize("env_id", IDS)
def test_check_env_and_registration(env_id: str) -> None:
    env = gym.make(env_id)
    assert env.spec is not None and env.spec.max_episode_steps == 200
    check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_tasks_and_trajectory(env_id: str) -> None:
    trajectories = []
    for _ in range(2):
        env = gym.make(env_id)
        tasks = env.unwrapped.sample_tasks(5, seed=3)
        obs, _ = env.reset(seed=7, options={"task": tasks[1]})
        rows = [(tasks, obs)]
        for action in _actions(env, 15, seed=1):
            obs, reward, terminated, truncated, _ = env.step(action)
            rows.append((obs, reward, terminated))
        trajectories.append(rows)
    (tasks_a, obs_a), (tasks_b, obs_b) = trajectories[0][0], trajectories[1][0]
    assert tasks_a == tasks_b
    np.testing.assert_array_equal(obs_a, obs_b)
    for (oa, ra, ta), (ob, rb, tb) in zip(trajectories[0][1:], trajectories[1][1:], strict=True):
        np.testing.assert_array_equal(oa, ob)
        assert ra == rb and ta == tb


def test_task_survives_vector_autoreset() -> None:
    vec = gym.vector.SyncVectorEnv(
        [lambda: gym.make("metarl/HalfCheetahVel-v0", max_episode_steps=3) for _ in range(2)]
    )
    task = VelocityTask(velocity=1.25)
    vec.reset(seed=0, options={"task": task})
    for _ in range(7):  # crosses two autoresets, which call reset() without options
        _, _, _, truncated, _ = vec.step(np.zeros((2, 6)))
    assert vec.call("get_task") == (task, task)
    vec.close()


def test_wrong_task_type_and_unknown_option_raise() -> None:
    env = gym.make("metarl/HalfCheetahVel-v0")
    with pytest.raises(TypeError, match="VelocityTask"):
        env.unwrapped.set_task(AntGoalTask(goal=(1.0, 1.0)))
    with pytest.raises(TypeError, match="VelocityTask"):
        env.reset(options={"task": HalfCheetahDirTask(direction=1.0)})
    with pytest.raises(ValueError, match="unknown option"):
        env.reset(options={"goal": 1.0})
    with pytest.raises(TypeError, match="VelocityTask"):
        env.unwrapped.make_batched([AntGoalTask(goal=(0.0, 0.0))], 2)
    ant = gym.make("metarl/AntDir-v0")
    with pytest.raises(ValueError, match="unit vector"):
        ant.unwrapped.set_task(AntDirTask(direction=(2.0, 0.0)))
    with pytest.raises(ValueError, match="direction_dim"):
        gym.make("metarl/AntDir-v0", direction_dim=3)
    with pytest.raises(ValueError, match="goal_distribution"):
        gym.make("metarl/AntGoal-v0", goal_distribution="circle")


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("metarl/HalfCheetahVel-v0", {}),
        ("metarl/AntVel-v0", {}),
        ("metarl/AntDir-v0", {"direction_dim": 2}),
        ("metarl/AntGoal-v0", {}),
        ("metarl/AntGoal-v0", {"goal_distribution": "disk"}),
    ],
)
def test_train_and_test_splits_differ(env_id: str, kwargs: dict) -> None:
    env = gym.make(env_id, **kwargs).unwrapped
    train = env.sample_tasks(20, split="train", seed=0)
    test = env.sample_tasks(20, split="test", seed=0)
    assert not set(train) & set(test)
    assert env.sample_tasks(20, split="test", seed=0) == test  # the held-out set is fixed


# ----------------------------------------------------------------------------------------
# conventions


def test_task_distributions_per_convention() -> None:
    cheetah = gym.make("metarl/HalfCheetahVel-v0").unwrapped
    v = np.array([t.velocity for t in cheetah.sample_tasks(500, seed=0)])
    assert v.min() >= 0.0 and v.max() <= 2.0 and v.max() > 1.9
    promp = gym.make("metarl/HalfCheetahVel-v0", velocity_high=3.0).unwrapped
    assert max(t.velocity for t in promp.sample_tasks(500, seed=0)) > 2.9
    ant_vel = gym.make("metarl/AntVel-v0").unwrapped
    assert max(t.velocity for t in ant_vel.sample_tasks(500, seed=0)) > 2.9

    dirs = {t.direction for t in gym.make("metarl/HalfCheetahDir-v0").unwrapped.sample_tasks(50, seed=0)}
    assert dirs == {-1.0, 1.0}
    ant_dirs = {t.direction for t in gym.make("metarl/AntDir-v0").unwrapped.sample_tasks(50, seed=0)}
    assert ant_dirs == {(-1.0, 0.0), (1.0, 0.0)}
    unit = np.array(
        [
            t.direction
            for t in gym.make("metarl/AntDir-v0", direction_dim=2).unwrapped.sample_tasks(200, seed=0)
        ]
    )
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0)
    assert (unit[:, 1] > 0.5).any() and (unit[:, 1] < -0.5).any()

    square = np.array([t.goal for t in gym.make("metarl/AntGoal-v0").unwrapped.sample_tasks(500, seed=0)])
    assert np.abs(square).max() <= 3.0 and (np.linalg.norm(square, axis=1) > 3.0).any()
    disk = np.array(
        [
            t.goal
            for t in gym.make("metarl/AntGoal-v0", goal_distribution="disk").unwrapped.sample_tasks(
                500, seed=0
            )
        ]
    )
    assert np.linalg.norm(disk, axis=1).max() <= 3.0

    assert gym.make("metarl/HalfCheetahVel-v0", max_episode_steps=100).spec.max_episode_steps == 100
    assert gym.make("metarl/AntGoal-v0").observation_space.shape == (107,)
    assert gym.make("metarl/AntVel-v0").observation_space.shape == (105,)


@pytest.mark.parametrize("ctrl_cost_weight", [0.05, 0.1])
def test_half_cheetah_vel_reward(ctrl_cost_weight: float) -> None:
    env = gym.make("metarl/HalfCheetahVel-v0", ctrl_cost_weight=ctrl_cost_weight).unwrapped
    env.reset(seed=0, options={"task": VelocityTask(velocity=1.5)})
    for action in _actions(env, 10, seed=0):
        x_before = env.data.qpos[0]
        _, reward, _, _, info = env.step(action)
        v = (env.data.qpos[0] - x_before) / 0.05
        expected = -abs(v - 1.5) - ctrl_cost_weight * np.sum(action**2)
        assert reward == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert info["x_velocity"] == pytest.approx(v)


def test_half_cheetah_dir_reward() -> None:
    env = gym.make("metarl/HalfCheetahDir-v0").unwrapped
    env.reset(seed=0, options={"task": HalfCheetahDirTask(direction=-1.0)})
    for action in _actions(env, 10, seed=0):
        x_before = env.data.qpos[0]
        _, reward, _, _, _ = env.step(action)
        v = (env.data.qpos[0] - x_before) / 0.05
        assert reward == pytest.approx(-v - 0.05 * np.sum(action**2), rel=1e-12, abs=1e-12)


def _ant_costs(env: gym.Env, action: np.ndarray, ctrl: float = 0.005) -> float:
    contact = np.sum(np.square(np.clip(env.data.cfrc_ext, -1.0, 1.0)))
    return ctrl * np.sum(action**2) + 5e-4 * contact


@pytest.mark.parametrize(
    ("env_id", "kwargs", "task"),
    [
        ("metarl/AntVel-v0", {}, VelocityTask(velocity=2.0)),
        ("metarl/AntDir-v0", {}, AntDirTask(direction=(-1.0, 0.0))),
        ("metarl/AntDir-v0", {"direction_dim": 2}, AntDirTask(direction=(0.6, 0.8))),
        ("metarl/AntGoal-v0", {}, AntGoalTask(goal=(1.0, -2.0))),
        (
            "metarl/AntGoal-v0",
            {
                "goal_distribution": "disk",
                "goal_bonus": 0.0,
                "ctrl_cost_weight": 0.1,
                "survive_reward": 0.0,
            },
            AntGoalTask(goal=(1.0, -2.0)),
        ),
    ],
)
def test_ant_rewards(env_id: str, kwargs: dict, task: object) -> None:
    env = gym.make(env_id, **kwargs).unwrapped
    env.reset(seed=0, options={"task": task})
    pearl = kwargs.get("survive_reward") == 0.0
    for action in _actions(env, 8, seed=0) * 0.3:
        xy_before = env.data.body("torso").xpos[:2].copy()
        _, reward, _, _, _ = env.step(action)
        xy = env.data.body("torso").xpos[:2].copy()
        vel = (xy - xy_before) / 0.05
        if isinstance(task, VelocityTask):
            term = -abs(vel[0] - task.velocity) + 1.0
        elif isinstance(task, AntDirTask):
            term = float(np.dot(task.direction, vel))
        else:
            term = -np.sum(np.abs(xy - np.array(task.goal))) + (0.0 if pearl else 4.0)
        survive = 0.0 if pearl else 0.05
        expected = term - _ant_costs(env, action, 0.1 if pearl else 0.005) + survive
        assert reward == pytest.approx(expected, rel=1e-12, abs=1e-12)


# ---------------------------------------------------------------------------------------- fast path


@pytest.mark.parametrize(
    ("env_id", "steps"),
    [
        ("metarl/HalfCheetahVel-v0", 60),
        ("metarl/HalfCheetahDir-v0", 30),
        ("metarl/AntVel-v0", 60),
        ("metarl/AntGoal-v0", 30),
    ],
)
def test_batched_matches_gymnasium_step_for_step(env_id: str, steps: int) -> None:
    family = gym.make(env_id).unwrapped
    tasks = family.sample_tasks(2, seed=5)
    envs_per_task = 2
    batch = family.make_batched(tasks, envs_per_task, seed=11, num_threads=2, dtype=torch.float64)
    obs_b = batch.reset()
    singles = []
    for i in range(len(tasks) * envs_per_task):
        env = gym.make(env_id).unwrapped
        env.reset(options={"task": tasks[i // envs_per_task]})
        mujoco.mj_resetData(env.model, env.data)  # the same start as a reset with the batch's noise
        env.set_state(batch.qpos[i].copy(), batch.qvel[i].copy())
        singles.append(env)
    obs_g = np.stack([env._get_obs() for env in singles])
    np.testing.assert_allclose(obs_b.reshape(len(singles), -1).numpy(), obs_g, rtol=0, atol=1e-12)

    done = np.zeros(len(singles), dtype=bool)
    actions = np.random.default_rng(2).uniform(-1, 1, (steps, len(tasks), envs_per_task, family.model.nu))
    for t in range(steps):
        obs_b, rew_b, term_b, trunc_b = batch.step(torch.from_numpy(actions[t]))
        obs_b, rew_b = obs_b.reshape(len(singles), -1).numpy(), rew_b.reshape(-1).numpy()
        term_b = term_b.reshape(-1).numpy()
        for i, env in enumerate(singles):
            if done[i]:
                assert rew_b[i] == 0.0 and not term_b[i]
                continue
            obs, reward, terminated, _, _ = env.step(actions[t, i // envs_per_task, i % envs_per_task])
            np.testing.assert_allclose(obs_b[i], obs, rtol=0, atol=1e-12)
            assert rew_b[i] == pytest.approx(reward, rel=0, abs=1e-12)
            assert bool(term_b[i]) == terminated
            done[i] |= terminated
        assert bool(trunc_b.all()) == (t + 1 >= batch.horizon)
    batch.close()


@pytest.mark.parametrize(
    ("env_id", "ctrl"), [("metarl/HalfCheetahVel-v0", 0.05), ("metarl/AntDir-v0", 0.005)]
)
def test_out_of_range_actions_move_and_cost_like_clipped_ones(env_id: str, ctrl: float) -> None:
    """An action of 3.0 moves and costs like 1.0, in the gymnasium env and the fast path alike."""
    family = gym.make(env_id).unwrapped
    tasks = family.sample_tasks(1, seed=0)
    nu = family.model.nu
    wide = np.random.default_rng(3).uniform(-3.0, 3.0, (5, nu))
    wide[0] = 3.0
    runs = []
    for actions in (wide, np.clip(wide, -1.0, 1.0)):
        env = gym.make(env_id).unwrapped
        env.reset(seed=4, options={"task": tasks[0]})
        rows = [env.step(a) for a in actions]
        runs.append(rows)
        assert rows[0][4]["reward_ctrl"] == pytest.approx(-ctrl * nu, rel=1e-12)  # ‖clip(3·1)‖² = nu
        with family.make_batched(tasks, 2, seed=1, num_threads=1, dtype=torch.float64) as batch:
            batch.reset()
            env.reset(seed=4)
            mujoco.mj_resetData(env.model, env.data)
            env.set_state(batch.qpos[0].copy(), batch.qvel[0].copy())
            for a in actions:
                obs_b, rew_b, _, _ = batch.step(torch.from_numpy(np.broadcast_to(a, (1, 2, nu)).copy()))
                obs, reward, *_ = env.step(a)
                np.testing.assert_allclose(obs_b[0, 0].numpy(), obs, rtol=0, atol=1e-12)
                assert float(rew_b[0, 0]) == pytest.approx(reward, rel=0, abs=1e-12)
    for (obs_w, rew_w, *_), (obs_c, rew_c, *_) in zip(*runs, strict=True):
        np.testing.assert_array_equal(obs_w, obs_c)
        assert rew_w == rew_c


@pytest.mark.parametrize("env_id", ["metarl/HalfCheetahVel-v0", "metarl/HalfCheetahDir-v0"])
def test_reference_code_observation_appends_the_centre_of_mass(env_id: str) -> None:
    """``include_torso_com_in_observation``: cbfinn/maml_rl's 20-value observation, single and batched."""
    plain = gym.make(env_id).unwrapped
    env = gym.make(env_id, include_torso_com_in_observation=True).unwrapped
    assert env.observation_space.shape == (20,) and plain.observation_space.shape == (17,)
    task = env.sample_tasks(1, seed=0)[0]
    env.reset(seed=3, options={"task": task})
    plain.reset(seed=3, options={"task": task})
    probe = mujoco.MjData(env.model)
    mass = env.model.body_mass[1:, None]
    with env.make_batched([task], 2, seed=0, num_threads=1, dtype=torch.float64) as batch:
        obs_b = batch.reset()
        assert obs_b.shape == (1, 2, 20)
        for e in (env, plain):
            mujoco.mj_resetData(e.model, e.data)
            e.set_state(batch.qpos[0].copy(), batch.qvel[0].copy())
        np.testing.assert_allclose(obs_b[0, 0].numpy(), env._get_obs(), rtol=0, atol=1e-12)
        for action in _actions(env, 25, seed=4):
            obs, reward, *_ = env.step(action)
            obs_plain, reward_plain, *_ = plain.step(action)
            obs_b, rew_b, _, _ = batch.step(torch.from_numpy(np.broadcast_to(action, (1, 2, 6)).copy()))
            np.testing.assert_array_equal(obs[:17], obs_plain)  # same dynamics and reward
            assert reward == reward_plain
            np.testing.assert_allclose(obs_b[0, 0].numpy(), obs, rtol=0, atol=1e-12)
            probe.qpos[:] = env.data.qpos  # the mass-weighted mean of the bodies' centres of mass
            mujoco.mj_forward(env.model, probe)
            com = (mass * probe.xipos[1:]).sum(0) / mass.sum()
            np.testing.assert_allclose(obs[17:], com, rtol=0, atol=1e-10)
    assert obs[17] != pytest.approx(obs_plain[0])  # x of the centre of mass is new information


def test_batched_api() -> None:
    family = gym.make("metarl/AntDir-v0").unwrapped
    tasks = family.sample_tasks(3, seed=0)
    with family.make_batched(tasks, 4, horizon=3, seed=0) as batch:
        obs = batch.reset()
        assert obs.shape == (3, 4, 105) and obs.dtype == torch.float32
        first = batch.reset(seed=4)
        assert torch.equal(first, batch.reset(seed=4))  # seeded reset noise
        with pytest.raises(ValueError, match="actions must have shape"):
            batch.step(torch.zeros(3, 8))
        for _t in range(3):
            obs, reward, terminated, truncated = batch.step(torch.zeros(3, 4, 8))
            assert reward.shape == terminated.shape == truncated.shape == (3, 4)
        assert bool(truncated.all())
    cheetah = gym.make("metarl/HalfCheetahVel-v0").unwrapped
    with cheetah.make_batched(cheetah.sample_tasks(2, seed=0), 1, num_threads=1) as batch:
        assert batch.reset().shape == (2, 1, 17) and batch.horizon == 200
