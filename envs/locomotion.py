"""MuJoCo locomotion task families of the meta-RL literature on gymnasium's v5 models.

HalfCheetahVel / HalfCheetahDir (Finn, Abbeel & Levine 2017, MAML, arXiv:1703.03400, §5.3), AntVel /
AntDir (MAML §5.3 and its code, cbfinn/maml_rl; the 2-D direction variant of Rothfuss et al. 2019,
ProMP, arXiv:1810.06784) and AntGoal (MAML-era code; the disk variant of Rakelly et al. 2019, PEARL,
arXiv:1903.08254, and ProMP). The physics are gymnasium's ``HalfCheetah-v5`` / ``Ant-v5`` through
the ``mujoco`` package (frame_skip 5, dt 0.05, same observations and reset noise); only the reward
depends on the task. Actions are clipped to the action space ``[−1, 1]`` before the dynamics *and* the
control cost (:meth:`envs.mujoco_batch.MujocoTaskFamily.clip_actions`; cbfinn/maml_rl clips before its
cost; gymnasium charges the raw action), so an action of 3.0 moves and costs like 1.0. Every published
convention is a constructor kwarg; the registered defaults are the MAML paper's (code's).

``make_batched(tasks, envs_per_task, device, horizon)`` returns a
:class:`envs.mujoco_batch.BatchedMujocoEnv` that steps ``num_tasks × envs_per_task`` simulations at
once, closed loop, with the same observations and rewards as these environments.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import utils

from envs.base import Task, missing_extra

try:
    from gymnasium.envs.mujoco.ant_v5 import AntEnv
    from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

    from envs.mujoco_batch import MujocoBatchSpec, MujocoTaskFamily
except (ImportError, gym.error.DependencyNotInstalled) as _err:
    raise ImportError(missing_extra("mujoco")) from _err

# --------------------------------------------------------------------------------------- tasks


@dataclasses.dataclass(frozen=True)
class VelocityTask(Task):
    """A target forward velocity ``v*`` (m/s, along +x)."""

    velocity: float


@dataclasses.dataclass(frozen=True)
class HalfCheetahDirTask(Task):
    """A running direction ``d ∈ {-1, +1}`` along x."""

    direction: float


@dataclasses.dataclass(frozen=True)
class AntDirTask(Task):
    """A unit direction ``(dx, dy)`` in the plane; the MAML variant uses ``(±1, 0)``."""

    direction: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class AntGoalTask(Task):
    """A goal position ``(gx, gy)`` for the ant's torso."""

    goal: tuple[float, float]


# ------------------------------------------------------------------------------------ half-cheetah


class _HalfCheetahFamily(MujocoTaskFamily, HalfCheetahEnv):
    """Shared constructor and observation of the half-cheetah families; ``**kwargs`` go to gymnasium's
    ``HalfCheetahEnv`` (``xml_file``, ``frame_skip``, ``reset_noise_scale``,
    ``exclude_current_positions_from_observation``, ``render_mode``, ...).

    With ``include_torso_com_in_observation`` the observation ends with the torso's subtree centre of
    mass (MuJoCo's ``subtree_com``, world frame ``(x, y, z)``; the torso is the root body, so this is
    the whole cheetah's centre of mass, absolute x included) at the current state: the observation of
    the MAML reference code (cbfinn/maml_rl ``half_cheetah_env_rand.py``: ``qpos[1:], qvel,
    get_body_com("torso")``, 20 values).
    """

    def __init__(
        self, ctrl_cost_weight: float = 0.05, include_torso_com_in_observation: bool = False, **kwargs: Any
    ) -> None:
        self.include_torso_com_in_observation = bool(include_torso_com_in_observation)
        HalfCheetahEnv.__init__(self, ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        self.ctrl_cost_weight = float(ctrl_cost_weight)
        self._torso_id = int(self.model.body("torso").id)
        if self.include_torso_com_in_observation:
            size = self.observation_space.shape[0] + 3
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float64)
            self.observation_structure["torso_com"] = 3

    def _get_obs(self) -> np.ndarray:
        obs = HalfCheetahEnv._get_obs(self)
        if not self.include_torso_com_in_observation:
            return obs
        return np.concatenate([obs, self._subtree_com(self._torso_id)])

    def batch_spec(self) -> MujocoBatchSpec:
        return MujocoBatchSpec(
            qpos_skip=int(self._exclude_current_positions_from_observation),
            contact_forces_in_obs=False,
            needs_contact_forces=False,
            contact_force_range=(-1.0, 1.0),
            position_body=None,
            healthy_z_range=None,
            reset_noise_scale=float(self._reset_noise_scale),
            com_body=self._torso_id if self.include_torso_com_in_observation else None,
        )


class HalfCheetahVelEnv(_HalfCheetahFamily):
    """Half-cheetah that must run at a target forward velocity.

    ## Description
    Gymnasium's ``HalfCheetah-v5`` (same model, frame_skip 5, dt 0.05) with a task-dependent reward
    (Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning", arXiv:1703.03400, §5.3).

    ## Action Space
    ``Box(-1, 1, (6,), float32)``: joint torques.

    ## Observation Space
    ``Box(-inf, inf, (17,), float64)``: ``qpos[1:]`` and ``qvel`` (18 with
    ``exclude_current_positions_from_observation=False``). The target velocity is not observed.
    ``include_torso_com_in_observation=True`` appends the cheetah's centre of mass ``(x, y, z)``
    (20 values): the observation of the MAML reference code (cbfinn/maml_rl).

    ## Rewards
    ``−|v − v*| − ctrl_cost_weight·‖clip(a)‖²`` with ``v = Δqpos_x / dt`` and ``ctrl_cost_weight = 0.05``
    (meta-RL code; gymnasium's own ``HalfCheetah-v5`` uses 0.1: ``ctrl_cost_weight=0.1``).

    ## Starting State
    ``qpos = init + U(−0.1, 0.1)``, ``qvel = init + 0.1·N(0, 1)`` (gymnasium's reset noise).

    ## Episode End
    Never terminates; truncated at 200 steps (MAML paper). garage, pytorch-maml-rl and ProMP use
    100: ``gym.make(..., max_episode_steps=100)``.

    ## Task distribution
    ``v* ~ U[0, 2]`` (MAML, garage, pytorch-maml-rl). ProMP / PEARL / VariBAD use ``U[0, 3]``:
    ``velocity_high=3.0``.

    ## Arguments
    - ``velocity_low``, ``velocity_high``: bounds of the target-velocity distribution (``0.0``,
      ``2.0``).
    - ``ctrl_cost_weight``: control-cost weight (``0.05``).
    - ``include_torso_com_in_observation``: append the torso's subtree centre of mass, as the MAML
      reference code (``False``: gymnasium's observation).
    - ``xml_file``, ``frame_skip``, ``reset_noise_scale``,
      ``exclude_current_positions_from_observation``, ``**kwargs``: passed to gymnasium's
      ``HalfCheetahEnv`` (e.g. ``render_mode``).
    """

    task_type = VelocityTask
    task_distribution = "v* ~ U[0, 2], H=200, ctrl 0.05 (MAML §5.3)"

    def __init__(
        self,
        velocity_low: float = 0.0,
        velocity_high: float = 2.0,
        ctrl_cost_weight: float = 0.05,
        **kwargs: Any,
    ) -> None:
        if not velocity_low < velocity_high:
            raise ValueError(f"velocity_low ({velocity_low}) must be below velocity_high ({velocity_high})")
        super().__init__(ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        self.velocity_low, self.velocity_high = float(velocity_low), float(velocity_high)
        utils.EzPickle.__init__(self, velocity_low, velocity_high, ctrl_cost_weight, **kwargs)
        self._init_task()

    def _draw_task(self, rng: np.random.Generator) -> VelocityTask:
        return VelocityTask(velocity=float(rng.uniform(self.velocity_low, self.velocity_high)))

    def _params_of(self, task: VelocityTask) -> tuple[float, ...]:
        return (task.velocity,)

    def _task_term(self, params: np.ndarray, velocity: np.ndarray, position: np.ndarray) -> np.ndarray:
        return -np.abs(velocity[:, 0] - params[:, 0])


class HalfCheetahDirEnv(_HalfCheetahFamily):
    """Half-cheetah that must run forward or backward.

    ## Description
    Gymnasium's ``HalfCheetah-v5`` with a task-dependent reward (Finn, Abbeel & Levine 2017, MAML,
    arXiv:1703.03400, §5.3).

    ## Action Space
    ``Box(-1, 1, (6,), float32)``.

    ## Observation Space
    ``Box(-inf, inf, (17,), float64)``: ``qpos[1:]``, ``qvel``; the direction is not observed.
    ``include_torso_com_in_observation=True`` appends the centre of mass ``(x, y, z)`` (20 values,
    cbfinn/maml_rl's observation).

    ## Rewards
    ``d·v − ctrl_cost_weight·‖clip(a)‖²`` with ``v = Δqpos_x / dt``, ``ctrl_cost_weight = 0.05``
    (gymnasium: 0.1).

    ## Starting State
    Gymnasium's reset noise (scale 0.1).

    ## Episode End
    Never terminates; truncated at 200 steps (MAML paper; 100 in garage/ProMP via
    ``max_episode_steps``).

    ## Task distribution
    ``d ∈ {−1, +1}`` with probability 1/2 each (MAML §5.3). With two tasks, train and test splits
    share their values; the splits are still independent streams.

    ## Arguments
    - ``ctrl_cost_weight``: control-cost weight (``0.05``).
    - ``include_torso_com_in_observation``: append the torso's subtree centre of mass, as the MAML
      reference code (``False``: gymnasium's observation).
    - ``xml_file``, ``frame_skip``, ``reset_noise_scale``,
      ``exclude_current_positions_from_observation``, ``**kwargs``: passed to gymnasium's
      ``HalfCheetahEnv``.
    """

    task_type = HalfCheetahDirTask
    task_distribution = "d in {-1, +1}, H=200, ctrl 0.05 (MAML §5.3)"

    def __init__(self, ctrl_cost_weight: float = 0.05, **kwargs: Any) -> None:
        super().__init__(ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        utils.EzPickle.__init__(self, ctrl_cost_weight, **kwargs)
        self._init_task()

    def _draw_task(self, rng: np.random.Generator) -> HalfCheetahDirTask:
        return HalfCheetahDirTask(direction=float(rng.choice((-1.0, 1.0))))

    def _params_of(self, task: HalfCheetahDirTask) -> tuple[float, ...]:
        if task.direction not in (-1.0, 1.0):
            raise ValueError(f"HalfCheetahDir direction must be -1 or +1, got {task.direction}")
        return (task.direction,)

    def _task_term(self, params: np.ndarray, velocity: np.ndarray, position: np.ndarray) -> np.ndarray:
        return params[:, 0] * velocity[:, 0]


# --------------------------------------------------------------------------------------------- ant


class _AntFamily(MujocoTaskFamily, AntEnv):
    """Shared constructor and reward terms of the ant families.

    Every ant reward is ``task_term − ctrl_cost_weight·‖clip(a)‖² − contact_cost_weight·‖clip(cfrc_ext)‖²
    + survive_reward`` (cbfinn/maml_rl ``ant_env_rand*.py``: ctrl 0.5·1e-2, contact 0.5·1e-3,
    survive 0.05); the survive reward is paid every step, as in the MAML code. The velocity is the
    torso's ``xpos`` displacement over the step divided by dt, as gymnasium's ``Ant-v5``. The
    episode terminates when the torso height leaves ``healthy_z_range`` (``[0.2, 1.0]``) or the
    state is not finite. ``**kwargs`` go to gymnasium's ``AntEnv`` (``xml_file``, ``frame_skip``,
    ``main_body``, ``terminate_when_unhealthy``, ``healthy_z_range``, ``contact_force_range``,
    ``reset_noise_scale``, ``exclude_current_positions_from_observation``,
    ``include_cfrc_ext_in_observation``, ``render_mode``, ...).
    """

    def __init__(
        self,
        ctrl_cost_weight: float = 0.005,
        contact_cost_weight: float = 5e-4,
        survive_reward: float = 0.05,
        **kwargs: Any,
    ) -> None:
        AntEnv.__init__(
            self,
            ctrl_cost_weight=ctrl_cost_weight,
            contact_cost_weight=contact_cost_weight,
            healthy_reward=survive_reward,
            **kwargs,
        )
        self.ctrl_cost_weight = float(ctrl_cost_weight)
        self.contact_cost_weight = float(contact_cost_weight)
        self.survive_reward = float(survive_reward)
        self._main_body_id = int(self.data.body(self._main_body).id)

    def batch_spec(self) -> MujocoBatchSpec:
        return MujocoBatchSpec(
            qpos_skip=2 * int(self._exclude_current_positions_from_observation),
            contact_forces_in_obs=bool(self._include_cfrc_ext_in_observation),
            needs_contact_forces=True,
            contact_force_range=tuple(self._contact_force_range),
            position_body=self._main_body_id,
            healthy_z_range=tuple(self._healthy_z_range) if self._terminate_when_unhealthy else None,
            reset_noise_scale=float(self._reset_noise_scale),
        )

    def _contact_forces(self) -> np.ndarray:
        return self.contact_forces

    def _terminated(self) -> bool:
        return bool(self._terminate_when_unhealthy and not self.is_healthy)

    def _tracked_position(self) -> np.ndarray:
        return self.data.xpos[self._main_body_id, :2].copy()


class AntVelEnv(_AntFamily):
    """Ant that must walk forward at a target velocity.

    ## Description
    Gymnasium's ``Ant-v5`` (frame_skip 5, dt 0.05) with the reward of the MAML code (Finn, Abbeel &
    Levine 2017, arXiv:1703.03400; cbfinn/maml_rl ``ant_env_rand.py``).

    ## Action Space
    ``Box(-1, 1, (8,), float32)``.

    ## Observation Space
    ``Box(-inf, inf, (105,), float64)``: ``qpos[2:]``, ``qvel``, ``clip(cfrc_ext[1:], -1, 1)``
    (gymnasium's).

    ## Rewards
    ``−|v_x − v*| + forward_bonus − 0.005‖clip(a)‖² − 0.0005‖clip(cfrc_ext)‖² + 0.05`` with
    ``forward_bonus=1.0``.

    ## Starting State
    Gymnasium's reset noise (scale 0.1).

    ## Episode End
    Terminates when the torso z leaves ``[0.2, 1.0]``; truncated at 200 steps
    (``max_episode_steps``).

    ## Task distribution
    ``v* ~ U[0, 3]`` (MAML code).

    ## Arguments
    - ``velocity_low``, ``velocity_high``: target-velocity bounds (``0.0``, ``3.0``).
    - ``forward_bonus``: constant added to the velocity term (``1.0``).
    - ``ctrl_cost_weight`` (``0.005``), ``contact_cost_weight`` (``5e-4``), ``survive_reward``
      (``0.05``).
    - ``xml_file``, ``frame_skip``, ``main_body``, ``terminate_when_unhealthy``,
      ``healthy_z_range``, ``contact_force_range``, ``reset_noise_scale``,
      ``exclude_current_positions_from_observation``, ``include_cfrc_ext_in_observation``,
      ``**kwargs``: as gymnasium's ``AntEnv``.
    """

    task_type = VelocityTask
    task_distribution = "v* ~ U[0, 3], H=200 (MAML code)"

    def __init__(
        self,
        velocity_low: float = 0.0,
        velocity_high: float = 3.0,
        forward_bonus: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if not velocity_low < velocity_high:
            raise ValueError(f"velocity_low ({velocity_low}) must be below velocity_high ({velocity_high})")
        super().__init__(**kwargs)
        self.velocity_low, self.velocity_high = float(velocity_low), float(velocity_high)
        self.forward_bonus = float(forward_bonus)
        utils.EzPickle.__init__(self, velocity_low, velocity_high, forward_bonus, **kwargs)
        self._init_task()

    def _draw_task(self, rng: np.random.Generator) -> VelocityTask:
        return VelocityTask(velocity=float(rng.uniform(self.velocity_low, self.velocity_high)))

    def _params_of(self, task: VelocityTask) -> tuple[float, ...]:
        return (task.velocity,)

    def _task_term(self, params: np.ndarray, velocity: np.ndarray, position: np.ndarray) -> np.ndarray:
        return -np.abs(velocity[:, 0] - params[:, 0]) + self.forward_bonus


class AntDirEnv(_AntFamily):
    """Ant that must walk in a task direction.

    ## Description
    Gymnasium's ``Ant-v5`` with the MAML reward (Finn, Abbeel & Levine 2017, arXiv:1703.03400, §5.3;
    cbfinn/maml_rl ``ant_env_rand_direc.py``); ``direction_dim=2`` gives ProMP's AntRandDirec2D
    (Rothfuss et al. 2019, arXiv:1810.06784).

    ## Action Space
    ``Box(-1, 1, (8,), float32)``.

    ## Observation Space
    ``Box(-inf, inf, (105,), float64)`` (gymnasium's); the direction is not observed.

    ## Rewards
    ``d·(v_x, v_y) − 0.005‖clip(a)‖² − 0.0005‖clip(cfrc_ext)‖² + 0.05``.

    ## Starting State
    Gymnasium's reset noise (scale 0.1).

    ## Episode End
    Terminates when the torso z leaves ``[0.2, 1.0]``; truncated at 200 steps.

    ## Task distribution
    ``direction_dim=1`` (default, MAML): ``d = (±1, 0)`` with probability 1/2 each.
    ``direction_dim=2`` (ProMP): ``d = u/‖u‖`` with ``u ~ N(0, I₂)``.

    ## Arguments
    - ``direction_dim``: 1 for ``±x``, 2 for a uniformly random unit vector.
    - ``ctrl_cost_weight`` (``0.005``), ``contact_cost_weight`` (``5e-4``), ``survive_reward``
      (``0.05``).
    - the remaining arguments of gymnasium's ``AntEnv`` (see :class:`AntVelEnv`).
    """

    task_type = AntDirTask
    task_distribution = "d in {-1, +1} along x (direction_dim=2: unit vector), H=200 (MAML §5.3)"

    def __init__(self, direction_dim: int = 1, **kwargs: Any) -> None:
        if direction_dim not in (1, 2):
            raise ValueError(
                f"direction_dim must be 1 (±x, MAML) or 2 (unit vector, ProMP), got {direction_dim}"
            )
        super().__init__(**kwargs)
        self.direction_dim = int(direction_dim)
        utils.EzPickle.__init__(self, direction_dim, **kwargs)
        self._init_task()

    def _draw_task(self, rng: np.random.Generator) -> AntDirTask:
        if self.direction_dim == 1:
            return AntDirTask(direction=(float(rng.choice((-1.0, 1.0))), 0.0))
        u = rng.standard_normal(2)
        u = u / np.linalg.norm(u)
        return AntDirTask(direction=(float(u[0]), float(u[1])))

    def _params_of(self, task: AntDirTask) -> tuple[float, ...]:
        if len(task.direction) != 2 or abs(float(np.hypot(*task.direction)) - 1.0) > 1e-6:
            raise ValueError(f"AntDir direction must be a 2-D unit vector, got {task.direction}")
        return tuple(float(x) for x in task.direction)

    def _task_term(self, params: np.ndarray, velocity: np.ndarray, position: np.ndarray) -> np.ndarray:
        return params[:, 0] * velocity[:, 0] + params[:, 1] * velocity[:, 1]


class AntGoalEnv(_AntFamily):
    """Ant that must walk to a goal position.

    ## Description
    Gymnasium's ``Ant-v5`` with a goal-reaching reward. Default: the MAML-era convention
    (cbfinn/maml_rl ``ant_env_rand_goal.py``, Finn et al. 2017, arXiv:1703.03400). PEARL (Rakelly et
    al. 2019, arXiv:1903.08254) and ProMP (Rothfuss et al. 2019, arXiv:1810.06784):
    ``goal_distribution="disk", goal_bonus=0.0, ctrl_cost_weight=0.1, survive_reward=0.0``.

    ## Action Space
    ``Box(-1, 1, (8,), float32)``.

    ## Observation Space
    ``Box(-inf, inf, (107,), float64)``: the full ``qpos`` (the torso's x, y are needed to find a
    fixed goal, as PEARL's AntGoal), ``qvel``, ``clip(cfrc_ext[1:], -1, 1)``. The goal is not
    observed.

    ## Rewards
    ``−‖xy − g‖₁ + goal_bonus − 0.005‖clip(a)‖² − 0.0005‖clip(cfrc_ext)‖² + 0.05`` with ``goal_bonus = 4``
    ("make it happy, not suicidal"), ``xy`` the torso's position.

    ## Starting State
    Gymnasium's reset noise (scale 0.1).

    ## Episode End
    Terminates when the torso z leaves ``[0.2, 1.0]``; truncated at 200 steps.

    ## Task distribution
    ``goal_distribution="square"`` (default): ``g ~ U[−3, 3]²``. ``"disk"`` (PEARL/ProMP): uniform
    in the disk of radius 3 (``r = 3·√u``, angle ``U[0, 2π)``).

    ## Arguments
    - ``goal_distribution``: ``"square"`` or ``"disk"``; ``goal_range``: half-width / radius
      (``3.0``).
    - ``goal_bonus``: constant added to the goal term (``4.0``).
    - ``ctrl_cost_weight`` (``0.005``), ``contact_cost_weight`` (``5e-4``), ``survive_reward``
      (``0.05``).
    - ``exclude_current_positions_from_observation`` (``False`` here) and the remaining arguments of
      gymnasium's ``AntEnv`` (see :class:`AntVelEnv`).
    """

    task_type = AntGoalTask
    task_distribution = "goal ~ U[-3, 3]^2 (+4 bonus; disk r=3 for PEARL), H=200 (MAML-era code)"

    def __init__(
        self,
        goal_distribution: Literal["square", "disk"] = "square",
        goal_range: float = 3.0,
        goal_bonus: float = 4.0,
        exclude_current_positions_from_observation: bool = False,
        **kwargs: Any,
    ) -> None:
        if goal_distribution not in ("square", "disk"):
            raise ValueError(f"goal_distribution must be 'square' or 'disk', got {goal_distribution!r}")
        if goal_range <= 0:
            raise ValueError(f"goal_range must be positive, got {goal_range}")
        super().__init__(
            exclude_current_positions_from_observation=exclude_current_positions_from_observation,
            **kwargs,
        )
        self.goal_distribution = goal_distribution
        self.goal_range = float(goal_range)
        self.goal_bonus = float(goal_bonus)
        utils.EzPickle.__init__(
            self,
            goal_distribution,
            goal_range,
            goal_bonus,
            exclude_current_positions_from_observation,
            **kwargs,
        )
        self._init_task()

    def _draw_task(self, rng: np.random.Generator) -> AntGoalTask:
        if self.goal_distribution == "square":
            gx, gy = rng.uniform(-self.goal_range, self.goal_range, size=2)
        else:
            angle = rng.uniform(0.0, 2.0 * np.pi)
            radius = self.goal_range * np.sqrt(rng.uniform())
            gx, gy = radius * np.cos(angle), radius * np.sin(angle)
        return AntGoalTask(goal=(float(gx), float(gy)))

    def _params_of(self, task: AntGoalTask) -> tuple[float, ...]:
        if len(task.goal) != 2:
            raise ValueError(f"AntGoal goal must be 2-D, got {task.goal}")
        return tuple(float(x) for x in task.goal)

    def _task_term(self, params: np.ndarray, velocity: np.ndarray, position: np.ndarray) -> np.ndarray:
        return -np.sum(np.abs(position - params), axis=-1) + self.goal_bonus
