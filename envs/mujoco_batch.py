"""MuJoCo task families: the family mixin and the closed-loop batched fast path.

:class:`MujocoTaskFamily` turns a gymnasium MuJoCo env into a task family whose reward is one
vectorised function of the task (:meth:`MujocoTaskFamily.reward_terms`), shared by ``step`` and the
batched path, so the two cannot disagree.

:class:`BatchedMujocoEnv` keeps every environment's full integration state
(``mjSTATE_INTEGRATION``: time, qpos, qvel, act, ``qacc_warmstart``, ctrl, applied forces) as one
row of a preallocated ``[N, nstate]`` array. A persistent thread pool splits the live rows among the
cores; each worker owns one ``MjData`` and, per environment, loads the row (``mj_setState``),
advances ``mj_step(model, data, nstep=frame_skip)`` (MuJoCo releases the GIL there, so the workers
run the physics in parallel) and stores the row back (``mj_getState``). One hot ``MjData`` per core
instead of one per environment keeps the working set in cache. Controls are written into, and
``qpos``/``qvel`` read out of, the state array for the whole batch at once; observations, rewards
and terminations are computed vectorised in numpy and handed out as torch tensors
``[num_tasks, envs_per_task, ...]`` (the :class:`envs.base.BatchedTaskEnv` protocol).

Why not ``mujoco.rollout``: in mujoco 3.3.0 a rollout starts from and returns only the
``mjSTATE_FULLPHYSICS`` state. Without ``qacc_warmstart`` every closed-loop env step would restart
the constraint solver cold (a different warmstart alone moves half-cheetah observations by ~5e-4
within 100 steps), and the ant families need ``cfrc_ext`` (contact forces, for the observation and
the contact cost), which no 3.3.0 sensor provides. With the integration state the batched path
reproduces the gymnasium environments bit for bit, and the per-env Python work is four C calls
around ``mj_step``.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import mujoco
import numpy as np
import torch

from envs.base import Task, TaskFamily, tasks_of_type


@dataclasses.dataclass(frozen=True)
class MujocoBatchSpec:
    """What the batched engine needs to know about a family's observation, reset and termination.

    Attributes:
        qpos_skip: leading ``qpos`` entries left out of the observation (the root x, y, ...).
        contact_forces_in_obs: append ``clip(cfrc_ext[1:])`` (flattened) to the observation.
        needs_contact_forces: call ``mj_rnePostConstraint`` after each step (obs or contact cost).
        contact_force_range: the clip range of ``cfrc_ext``.
        position_body: ``None`` to track ``qpos[:1]`` (half-cheetah's root x); otherwise the id of
            the body whose ``xpos[:2]`` is the tracked position (ant's torso, as ``Ant-v5``).
        healthy_z_range: terminate when ``qpos[2]`` leaves this range or the state is not finite;
            ``None`` never terminates.
        reset_noise_scale: ``qpos = init_qpos + U(-s, s)``, ``qvel = init_qvel + s·N(0, 1)``.
        com_body: ``None``, or the id of the body whose subtree centre of mass (MuJoCo's
            ``subtree_com``, world frame, 3 values, at the current ``qpos``) is appended to the
            observation (cbfinn/maml_rl's half-cheetah observation,
            :class:`envs.locomotion.HalfCheetahVelEnv`).
    """

    qpos_skip: int
    contact_forces_in_obs: bool
    needs_contact_forces: bool
    contact_force_range: tuple[float, float]
    position_body: int | None
    healthy_z_range: tuple[float, float] | None
    reset_noise_scale: float
    com_body: int | None = None


def _state_offsets(model: mujoco.MjModel, spec: int) -> dict[str, slice]:
    """Column slice of each element (``qpos``, ``qvel``, ``ctrl``, ...) of a state vector."""
    names = {int(v): k for k, v in mujoco.mjtState.__members__.items()}
    offsets, start = {}, 0
    for k in range(int(mujoco.mjtState.mjNSTATE)):  # single-bit elements, in state-vector order
        bit = 1 << k
        if spec & bit:
            size = mujoco.mj_stateSize(model, bit)
            offsets[names[bit].removeprefix("mjSTATE_").lower()] = slice(start, start + size)
            start += size
    return offsets


def default_num_threads() -> int:
    """The number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------- family mixin


class MujocoTaskFamily(TaskFamily):
    """Task-family mixin for gymnasium MuJoCo envs whose reward depends on the task.

    Put it before the gymnasium env class (``class MyEnv(MujocoTaskFamily, AntEnv)``). The reward of
    :meth:`step` and of the batched fast path (:meth:`make_batched`) come from the same vectorised
    :meth:`reward_terms`, so the two cannot disagree. Subclasses implement ``_draw_task``,
    ``_params_of`` (task → vector), ``_task_term`` (vectorised over a leading batch axis) and
    ``batch_spec``, and call ``self._init_task()`` at the end of ``__init__``.
    """

    default_horizon: ClassVar[int] = 200
    ctrl_cost_weight: float
    contact_cost_weight: float = 0.0
    survive_reward: float = 0.0

    model: mujoco.MjModel
    data: mujoco.MjData
    frame_skip: int
    init_qpos: np.ndarray
    init_qvel: np.ndarray
    _task_vector: np.ndarray

    # -- per-family pieces
    def task_params(self, tasks: Sequence[Task]) -> np.ndarray:
        """The ``[len(tasks), k]`` float array the vectorised reward reads the tasks from."""
        tasks_of_type(tasks, self.task_type)
        return np.array([self._params_of(t) for t in tasks], dtype=np.float64).reshape(len(tasks), -1)

    @abc.abstractmethod
    def _params_of(self, task: Any) -> tuple[float, ...]:
        """The parameters of one task, validated."""

    @abc.abstractmethod
    def _task_term(self, params: np.ndarray, velocity: np.ndarray, position: np.ndarray) -> np.ndarray:
        """The task-dependent reward term ``[N]`` (see :meth:`reward_terms`)."""

    def reward_terms(
        self,
        params: np.ndarray,
        velocity: np.ndarray,
        position: np.ndarray,
        action: np.ndarray,
        contact_forces: np.ndarray | None,
    ) -> dict[str, np.ndarray]:
        """Reward terms ``[N]`` each (the reward is their sum) for a batch of ``N`` transitions.

        ``reward_task`` (the family's), ``reward_ctrl = −ctrl_cost_weight·‖clip(a)‖²`` and, for the ant,
        ``reward_contact = −contact_cost_weight·‖clip(cfrc_ext)‖²`` and ``reward_survive``.

        Args:
            params: ``[N, k]`` task parameters (:meth:`task_params`).
            velocity: ``[N, p]`` velocity of the tracked position over the step (``p`` = 1 or 2).
            position: ``[N, p]`` tracked position after the step.
            action: ``[N, nu]`` the actions applied, i.e. already clipped to the action space
                (:meth:`clip_actions`).
            contact_forces: ``[N, nbody, 6]`` clipped ``cfrc_ext`` (ant) or ``None``.
        """
        n = action.shape[0]
        terms = {
            "reward_task": self._task_term(params, velocity, position),
            "reward_ctrl": -self.ctrl_cost_weight * np.sum(np.square(action), axis=-1),
        }
        if contact_forces is not None:
            squared = np.square(contact_forces).reshape(n, -1)
            terms["reward_contact"] = -self.contact_cost_weight * np.sum(squared, axis=-1)
            terms["reward_survive"] = np.full(n, self.survive_reward)
        return terms

    def clip_actions(self, action: np.ndarray) -> np.ndarray:
        """``action [..., nu]`` clipped to the action space (float64): what the actuators apply.

        MuJoCo clamps the control of a ``ctrllimited`` actuator to its ``ctrlrange`` itself, so an action
        of 3.0 moves the body like 1.0; the control cost is charged on the same clipped action, so that
        it costs like 1.0 too (cbfinn/maml_rl clips before its control cost; pytorch-maml-rl clips in its
        normalised-action wrapper). Gymnasium's own ``HalfCheetah-v5`` / ``Ant-v5`` charge the raw
        action. Every learner therefore sees the same reward for the same sampled action, and a
        policy's log-probabilities stay those of its unclipped samples.
        """
        space = self.action_space  # type: ignore[attr-defined]
        return np.clip(action, space.low.astype(np.float64), space.high.astype(np.float64))

    @abc.abstractmethod
    def batch_spec(self) -> MujocoBatchSpec:
        """Observation / reset / termination layout for :class:`BatchedMujocoEnv`."""

    # -- TaskFamily hooks
    def _on_task_changed(self) -> None:
        self._task_vector = self.task_params([self._task])

    # -- gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self._reset_task(options)
        obs, info = super().reset(seed=seed)  # type: ignore[misc]
        return obs, info

    def _tracked_position(self) -> np.ndarray:
        """The position whose displacement over a step is the velocity (half-cheetah: root x)."""
        return self.data.qpos[:1].copy()

    def _contact_forces(self) -> np.ndarray | None:
        return None

    def _subtree_com(self, body: int) -> np.ndarray:
        """Centre of mass of ``body``'s subtree at the current ``qpos`` (MuJoCo's ``subtree_com``).

        Recomputed (``mj_kinematics`` + ``mj_comPos``): after ``mj_step`` the position-stage
        quantities still describe the state before the last integration. Neither call touches the
        integration state, so the dynamics are unchanged.
        """
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        return self.data.subtree_com[body].copy()

    def _terminated(self) -> bool:
        return False

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = self.clip_actions(np.asarray(action, dtype=np.float64))
        before = self._tracked_position()
        self.do_simulation(action, self.frame_skip)  # type: ignore[attr-defined]
        after = self._tracked_position()
        velocity = (after - before) / self.dt  # type: ignore[attr-defined]
        observation = self._get_obs()  # type: ignore[attr-defined]
        contact = self._contact_forces()
        terms = self.reward_terms(
            self._task_vector,
            velocity[None],
            after[None],
            action[None],
            None if contact is None else contact[None],
        )
        reward = float(np.sum(np.stack(list(terms.values())), axis=0)[0])
        info: dict[str, Any] = {
            "x_position": float(self.data.qpos[0]),
            "x_velocity": float(velocity[0]),
            **{k: float(v[0]) for k, v in terms.items()},
        }
        if velocity.shape[0] > 1:
            info["y_velocity"] = float(velocity[1])
        if self.render_mode == "human":  # type: ignore[attr-defined]
            self.render()  # type: ignore[attr-defined]
        return observation, reward, self._terminated(), False, info

    def make_batched(
        self,
        tasks: Sequence[Task],
        envs_per_task: int,
        device: torch.device | str = "cpu",
        horizon: int | None = None,
        *,
        seed: int | None = None,
        num_threads: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> BatchedMujocoEnv:
        """``len(tasks) × envs_per_task`` copies of this env stepped at once (see
        :class:`BatchedMujocoEnv`).

        Args:
            tasks: one task per row of the batch.
            envs_per_task: parallel rollouts per task.
            device: device of the returned tensors.
            horizon: steps until ``truncated`` (default: the family's registered 200).
            seed: seed of the reset-noise generator.
            num_threads: physics threads (default: the cores available to this process).
            dtype: dtype of the observation/reward tensors (``torch.float64`` reproduces
                gymnasium exactly).
        """
        tasks_of_type(tasks, self.task_type)
        return BatchedMujocoEnv(
            self,
            tasks,
            envs_per_task,
            device=device,
            horizon=self.default_horizon if horizon is None else horizon,
            seed=seed,
            num_threads=num_threads,
            dtype=dtype,
        )


# ------------------------------------------------------------------------------- batched engine


class BatchedMujocoEnv:
    """``num_tasks × envs_per_task`` MuJoCo environments of one family, stepped at once.

    Same observations, rewards and terminations as the family's gymnasium environment, step for
    step, given the same initial states and actions (``tests/test_locomotion.py`` checks this for
    half-cheetah and ant). An environment that terminated is no longer simulated: it keeps returning
    its last observation and zero reward until :meth:`reset`. ``truncated`` is set for all
    environments at ``horizon``.

    Args:
        family: the gymnasium family instance whose model, reward and conventions are used.
        tasks: one task per row of the batch.
        envs_per_task: parallel environments per task (rollouts per task).
        device: where the returned tensors live.
        horizon: steps until ``truncated``.
        seed: seed of the generator that draws the reset noise (``None``: fresh entropy).
        num_threads: threads stepping the physics (default: the cores this process may use).
        dtype: dtype of the returned observation and reward tensors.
    """

    def __init__(
        self,
        family: MujocoTaskFamily,
        tasks: Sequence[Any],
        envs_per_task: int,
        *,
        device: torch.device | str = "cpu",
        horizon: int = 200,
        seed: int | None = None,
        num_threads: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if len(tasks) == 0:
            raise ValueError("BatchedMujocoEnv needs at least one task")
        if envs_per_task < 1:
            raise ValueError(f"envs_per_task must be >= 1, got {envs_per_task}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.family = family
        self.spec = family.batch_spec()
        self.model = family.model
        self.frame_skip = int(family.frame_skip)
        self.dt = float(family.dt)
        self.num_tasks = len(tasks)
        self.envs_per_task = int(envs_per_task)
        self.horizon = int(horizon)
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_envs = n = self.num_tasks * self.envs_per_task
        self.num_threads = max(1, min(int(num_threads or default_num_threads()), n))
        self._rng = np.random.default_rng(seed)

        params = np.asarray(family.task_params(tasks), dtype=np.float64).reshape(self.num_tasks, -1)
        self._params = np.repeat(params, self.envs_per_task, axis=0)  # [n, k], row i = env i's task

        m = self.model
        # Every environment's full integration state (time, qpos, qvel, act, qacc_warmstart, ctrl,
        # applied
        # forces, ...) lives in one row of ``self.state``; each worker thread owns one MjData,
        # loads a row,
        # steps and stores it back (``mj_setState`` / ``mj_getState``), so that MjData stays hot in
        # cache.
        self._spec_bits = int(mujoco.mjtState.mjSTATE_INTEGRATION)
        #: ``[N, nstate]`` integration state of every environment (``mj_getState`` layout).
        self.state = np.zeros((n, mujoco.mj_stateSize(m, self._spec_bits)))
        offsets = _state_offsets(m, self._spec_bits)
        self.qpos = self.state[:, offsets["qpos"]]  # views into the state rows
        self.qvel = self.state[:, offsets["qvel"]]
        self._ctrl_cols = offsets["ctrl"]
        self._datas = [mujoco.MjData(m) for _ in range(self.num_threads)]
        body = self.spec.position_body
        self._cfrc_views = [d.cfrc_ext for d in self._datas]
        self._xy_views = [d.xpos[body, :2] for d in self._datas] if body is not None else []
        self._cfrc = np.zeros((n, m.nbody, 6))
        self._xy = np.zeros((n, 2))
        self._com = np.zeros((n, 3))
        self._done = np.zeros(n, dtype=bool)
        obs_dim = m.nq - self.spec.qpos_skip + m.nv
        if self.spec.contact_forces_in_obs:
            obs_dim += (m.nbody - 1) * 6
        if self.spec.com_body is not None:
            obs_dim += 3
        self.obs_dim = obs_dim
        self.action_dim = m.nu
        self._obs = np.zeros((n, obs_dim))
        self.t = 0
        self._pool = ThreadPoolExecutor(self.num_threads - 1) if self.num_threads > 1 else None
        self.last_reward_terms: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ public API
    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Reset every environment to ``init + noise`` and return the observations ``[B, E,
        obs_dim]``.

        Args:
            seed: reseed the reset-noise generator first (``None``: continue its stream).
        """
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        n, m, s = self.num_envs, self.model, self.spec.reset_noise_scale
        qpos = self.family.init_qpos + self._rng.uniform(-s, s, size=(n, m.nq))
        qvel = self.family.init_qvel + s * self._rng.standard_normal((n, m.nv))
        return self.set_state(qpos, qvel)

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray) -> torch.Tensor:
        """Start every environment from ``qpos [N, nq]`` and ``qvel [N, nv]`` (``N = B·E``).

        Mirrors gymnasium's ``MujocoEnv.reset``: ``mj_resetData`` then ``set_state``
        (``mj_forward``).
        """
        n, m = self.num_envs, self.model
        qpos = np.asarray(qpos, dtype=np.float64)
        qvel = np.asarray(qvel, dtype=np.float64)
        if qpos.shape != (n, m.nq) or qvel.shape != (n, m.nv):
            raise ValueError(
                f"set_state expects qpos {(n, m.nq)} and qvel {(n, m.nv)}, got {qpos.shape} and {qvel.shape}"
            )
        d, body, com_body = self._datas[0], self.spec.position_body, self.spec.com_body
        for i in range(n):
            mujoco.mj_resetData(m, d)
            d.qpos[:] = qpos[i]
            d.qvel[:] = qvel[i]
            mujoco.mj_forward(m, d)
            mujoco.mj_getState(m, d, self.state[i], self._spec_bits)
            if body is not None:
                self._xy[i] = d.xpos[body, :2]
            if com_body is not None:
                self._com[i] = d.subtree_com[com_body]
        self._cfrc[:] = 0.0  # mj_forward does not compute cfrc_ext: gymnasium's reset obs has zeros
        self._done[:] = False
        self.t = 0
        return self._to_tensor(self._observe(), self.num_tasks, self.envs_per_task, -1)

    def step(
        self, actions: torch.Tensor | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Apply ``actions [B, E, action_dim]``, clipped to the action space
        (:meth:`MujocoTaskFamily.clip_actions`), for ``frame_skip`` physics steps in every live
        environment.

        Returns:
            ``(obs [B, E, obs_dim], reward [B, E], terminated [B, E], truncated [B, E])``.
        """
        a = (
            actions.detach().to("cpu", torch.float64).numpy()
            if isinstance(actions, torch.Tensor)
            else actions
        )
        a = np.asarray(a, dtype=np.float64)
        expected = (self.num_tasks, self.envs_per_task, self.action_dim)
        if a.shape != expected:
            raise ValueError(f"actions must have shape {expected}, got {a.shape}")
        ctrl = self.family.clip_actions(a.reshape(self.num_envs, self.action_dim))
        self.state[:, self._ctrl_cols] = ctrl

        active = ~self._done
        live = np.flatnonzero(active)
        before = self._position().copy()
        self._run_threaded(live)

        after = self._position()
        velocity = (after - before) / self.dt
        contact = None
        if self.spec.needs_contact_forces:
            contact = np.clip(self._cfrc, *self.spec.contact_force_range)
        terms = self.family.reward_terms(self._params, velocity, after, ctrl, contact)
        reward = np.sum(np.stack(list(terms.values())), axis=0)
        reward = np.where(active, reward, 0.0)
        self.last_reward_terms = terms

        terminated = np.zeros(self.num_envs, dtype=bool)
        if self.spec.healthy_z_range is not None:
            low, high = self.spec.healthy_z_range
            finite = np.isfinite(self.qpos).all(1) & np.isfinite(self.qvel).all(1)
            z = self.qpos[:, 2]
            terminated = active & ~(finite & (low <= z) & (z <= high))
        self._done |= terminated
        self.t += 1

        b, e = self.num_tasks, self.envs_per_task
        obs = self._observe()
        truncated = torch.full((b, e), self.t >= self.horizon, dtype=torch.bool, device=self.device)
        return (
            self._to_tensor(obs, b, e, -1),
            self._to_tensor(reward, b, e),
            torch.from_numpy(terminated.reshape(b, e)).to(self.device),
            truncated,
        )

    def close(self) -> None:
        """Stop the worker threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> BatchedMujocoEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    # ------------------------------------------------------------------ internals
    def _position(self) -> np.ndarray:
        return self._xy if self.spec.position_body is not None else self.qpos[:, :1]

    def _run_threaded(self, live: np.ndarray) -> None:
        if live.size == 0:
            return
        if self._pool is None or live.size < 2 * self.num_threads:
            self._step_range(0, live.tolist())
            return
        chunks = [c.tolist() for c in np.array_split(live, self.num_threads)]
        futures = [self._pool.submit(self._step_range, w, c) for w, c in enumerate(chunks) if w > 0]
        self._step_range(0, chunks[0])
        for f in futures:
            f.result()

    def _step_range(self, worker: int, indices: list[int]) -> None:
        """Hot loop of one worker: per env, load its state, ``mj_step × frame_skip``, store it
        back."""
        m, fs, bits, d = self.model, self.frame_skip, self._spec_bits, self._datas[worker]
        set_state, get_state = mujoco.mj_setState, mujoco.mj_getState
        step, rne = mujoco.mj_step, mujoco.mj_rnePostConstraint
        state = self.state
        contacts = self.spec.needs_contact_forces
        track_xy = self.spec.position_body is not None
        cfrc, cfrc_v = self._cfrc, self._cfrc_views[worker]
        xy, xy_v = self._xy, (self._xy_views[worker] if track_xy else None)
        com_body, com, com_v = self.spec.com_body, self._com, d.subtree_com
        kinematics, com_pos = mujoco.mj_kinematics, mujoco.mj_comPos
        for i in indices:
            row = state[i]
            set_state(m, d, row, bits)
            step(m, d, fs)
            get_state(m, d, row, bits)
            if contacts:
                rne(m, d)  # as gymnasium's MujocoEnv: cfrc_ext is not computed by mj_step
                cfrc[i] = cfrc_v
            if track_xy:
                xy[i] = xy_v
            if com_body is not None:  # at the new qpos, as MujocoTaskFamily._subtree_com
                kinematics(m, d)
                com_pos(m, d)
                com[i] = com_v[com_body]

    def _observe(self) -> np.ndarray:
        """``[qpos[skip:], qvel, clip(cfrc_ext[1:]), subtree_com]`` for the whole batch (the family's
        ``_get_obs``)."""
        m, k = self.model, self.spec.qpos_skip
        obs = self._obs
        obs[:, : m.nq - k] = self.qpos[:, k:]
        obs[:, m.nq - k : m.nq - k + m.nv] = self.qvel
        if self.spec.contact_forces_in_obs:
            forces = np.clip(self._cfrc[:, 1:], *self.spec.contact_force_range).reshape(self.num_envs, -1)
            obs[:, m.nq - k + m.nv : m.nq - k + m.nv + forces.shape[1]] = forces
        if self.spec.com_body is not None:
            obs[:, -3:] = self._com
        return obs

    def _to_tensor(self, x: np.ndarray, *shape: int) -> torch.Tensor:
        return torch.from_numpy(x.reshape(*shape)).to(device=self.device, dtype=self.dtype, copy=True)
