"""Batched rollouts: ``envs_per_task`` episodes of every task of a meta-batch, collected at once.

Every learner steps a family through the batched-env protocol of :class:`envs.base.BatchedTaskEnv`
(``reset() -> obs [N, E, ...]``, ``step(actions [N, E, ...]) -> (obs, reward, terminated, truncated)``).
:class:`BatchedFamily` gives any family that protocol: a family with ``make_batched`` (Navigation2D,
bandits, tabular MDPs, the fast MuJoCo path) is stepped as one tensor program on the learner's device; any
other family that follows the contract (a user's own ``module:Class``) is stepped through gymnasium copies
of the env by :class:`GymBatchedEnv`, with the policy still evaluated once per time step for all of them.
Both are seeded the same way: one integer ``seed`` per batched env, drawn from the learner's generator.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch

from envs.base import Task
from metarl.errors import ConfigError

#: ``obs [N, E, D] -> actions [N, E, A]``: the (per-task) policy, sampling with the caller's generator.
ActFn = Callable[[torch.Tensor], torch.Tensor]


class Episodes(NamedTuple):
    """Time-major episodes of ``N`` tasks × ``E`` episodes each.

    Attributes:
        obs: ``[T, N, E, D]`` observation before each action.
        actions: ``[T, N, E, A]``.
        rewards: ``[T, N, E]``.
        mask: ``[T, N, E]`` float, 1 where the step happened (before termination), 0 after.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor

    def task_returns(self) -> torch.Tensor:
        """Undiscounted episode return averaged over each task's episodes: ``[N]``."""
        return (self.rewards * self.mask).sum(0).mean(-1)

    @property
    def num_steps(self) -> int:
        """Environment steps taken (valid steps only)."""
        return int(self.mask.sum().item())


class GymBatchedEnv:
    """Gymnasium copies of any task family behind the batched-env protocol (``envs.base.BatchedTaskEnv``).

    One copy per ``(task, env)`` pair, rows ordered task-major like the batched families. The first
    :meth:`reset` resets copy ``i`` with ``seed=seeds[i]`` (drawn from ``seed``) and
    ``options={"task": task}``; later resets pass the task again and continue each copy's own random
    stream, so one ``seed`` fixes every episode, as for the batched families. A copy whose episode ended
    (``terminated``, or its own ``truncated`` before ``horizon``) is not stepped again until :meth:`reset`:
    it returns its last observation, zero reward and ``terminated = True`` (the protocol has no per-env
    early truncation; callers mask every step after it). ``truncated`` is set for all at ``horizon``.

    Args:
        copies: at least ``len(tasks) * envs_per_task`` envs of the family (extra ones are not used).
        tasks: the task of each row of envs.
        envs_per_task: ``E``, envs per task.
        device: where observations, rewards and flags are returned.
        horizon: steps after which ``truncated`` is set.
        seed: seeds the copies' first reset (``None``: fresh entropy).
        release: called with the copies on :meth:`close` (a pool taking them back).
    """

    def __init__(
        self,
        copies: Sequence[gym.Env],
        tasks: Sequence[Task],
        envs_per_task: int,
        device: torch.device | str = "cpu",
        horizon: int = 100,
        seed: int | None = None,
        release: Callable[[list[gym.Env]], None] | None = None,
    ) -> None:
        self.num_tasks, self.envs_per_task, self.horizon = len(tasks), int(envs_per_task), int(horizon)
        rows = self.num_tasks * self.envs_per_task
        if len(copies) < rows:
            raise ValueError(f"GymBatchedEnv needs {rows} env copies, got {len(copies)}")
        self.device = torch.device(device)
        self.copies = list(copies[:rows])
        self.tasks = [task for task in tasks for _ in range(self.envs_per_task)]
        space = self.copies[0].action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        self.action_shape = () if self.discrete else tuple(space.shape)
        self._seeds: list[int | None] = (
            [None] * rows
            if seed is None
            else [int(s) for s in np.random.default_rng(int(seed)).integers(2**31 - 1, size=rows)]
        )
        self._release = release
        self._obs = np.zeros(0, dtype=np.float32)
        self._done = np.zeros(rows, dtype=bool)
        self.t = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_tasks, self.envs_per_task)

    def _out(self, array: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.as_tensor(array, dtype=dtype).reshape(*self.shape, *array.shape[1:]).to(self.device)

    def reset(self) -> torch.Tensor:
        """Start a new episode in every copy (the tasks stay); returns ``obs [N, E, *obs_shape]``."""
        obs = []
        for i, (env, task) in enumerate(zip(self.copies, self.tasks, strict=True)):
            seed, self._seeds[i] = self._seeds[i], None  # seeded once; later episodes continue the stream
            obs.append(np.asarray(env.reset(seed=seed, options={"task": task})[0], dtype=np.float32))
        self._obs = np.stack(obs)
        self._done[:] = False
        self.t = 0
        return self._out(self._obs)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step every copy whose episode is running; returns ``(obs, reward, terminated, truncated)``."""
        flat = actions.detach().cpu().numpy().reshape(len(self.copies), *self.action_shape)
        rewards = np.zeros(len(self.copies), dtype=np.float32)
        for i in np.flatnonzero(~self._done):
            action = int(flat[i]) if self.discrete else flat[i]
            obs, reward, terminated, truncated, _ = self.copies[i].step(action)
            self._obs[i] = np.asarray(obs, dtype=np.float32)
            rewards[i] = reward
            self._done[i] = terminated or truncated
        self.t += 1
        truncated = torch.full(self.shape, self.t >= self.horizon, dtype=torch.bool, device=self.device)
        return self._out(self._obs), self._out(rewards), self._out(self._done, torch.bool), truncated

    def close(self) -> None:
        """Hand the copies back to the pool they came from (they stay open for the next batch)."""
        release, copies = getattr(self, "_release", None), getattr(self, "copies", [])
        if release is not None and copies:
            release(copies)
        self.copies = []

    def __del__(self) -> None:
        self.close()


class BatchedFamily:
    """A task family as the learners see it: its spaces and a ``make_batched`` that always exists.

    ``make_batched(tasks, envs_per_task, device, horizon, *, seed)`` calls the family's own
    ``make_batched`` when it has one (passing ``seed`` only when its signature accepts it) and otherwise
    builds a :class:`GymBatchedEnv` over gymnasium copies from ``make_env``. Copies are pooled: a batched env
    takes them and gives them back on ``close()`` or when it is garbage-collected, so the next batch reuses
    them.

    Attributes:
        family: the unwrapped family env (``make_env().unwrapped``).
        native: whether the family's own ``make_batched`` is used.
    """

    def __init__(self, make_env: Callable[[], gym.Env]) -> None:
        self.make_env = make_env
        self.family = make_env().unwrapped
        self.observation_space = self.family.observation_space
        self.action_space = self.family.action_space
        own = getattr(self.family, "make_batched", None)
        self.native = callable(own)
        self._own = own if self.native else None
        self._own_takes_seed = self.native and "seed" in inspect.signature(own).parameters
        self._free: list[gym.Env] = []

    def make_batched(
        self,
        tasks: Sequence[Task],
        envs_per_task: int,
        device: torch.device | str = "cpu",
        horizon: int = 100,
        *,
        seed: int | None = None,
    ) -> Any:
        """A batched env of ``tasks × envs_per_task`` on ``device`` (see the class docstring)."""
        if self._own is not None:
            extra = {"seed": seed} if self._own_takes_seed and seed is not None else {}
            return self._own(list(tasks), envs_per_task, device=device, horizon=horizon, **extra)
        rows = len(tasks) * int(envs_per_task)
        while len(self._free) < rows:
            self._free.append(self.make_env())
        copies, self._free = self._free[:rows], self._free[rows:]
        return GymBatchedEnv(copies, tasks, envs_per_task, device, horizon, seed, self._give_back)

    def _give_back(self, copies: list[gym.Env]) -> None:
        self._free.extend(copies)


class RolloutSampler:
    """Collects ``envs_per_task`` episodes of ``horizon`` steps for each task, all tasks at once.

    Args:
        make_env: builds one env of the family (wrapped in a :class:`BatchedFamily`: the family's own
            ``make_batched`` or gymnasium copies).
        horizon: episode length ``H``; episodes end earlier when they terminate.
        envs_per_task: episodes per task per call (``E``; the papers' "rollouts per task").
        device: where episodes are returned (and batched envs run).
        seed: seeds the environments' own randomness (reset noise, stochastic rewards): one seed per
            batched env, drawn from a generator seeded with it.
    """

    def __init__(
        self,
        make_env: Callable[[], gym.Env],
        horizon: int,
        envs_per_task: int,
        device: torch.device,
        seed: int,
    ) -> None:
        self.batched = BatchedFamily(make_env)
        self.family = self.batched.family
        self.horizon = int(horizon)
        self.envs_per_task = int(envs_per_task)
        self.device = device
        self.env_rng = np.random.default_rng(seed)
        space = self.family.action_space
        if not isinstance(space, gym.spaces.Box):
            raise ConfigError(
                f"{type(self.family).__name__} has a {type(space).__name__} action space; "
                "this learner needs a continuous (Box) action space"
            )
        self.obs_dim = int(np.prod(self.family.observation_space.shape))
        self.action_dim = int(np.prod(space.shape))

    def rollout(self, tasks: Sequence[Task], act: ActFn) -> Episodes:
        """``envs_per_task`` episodes of every task, the policy ``act`` called once per time step."""
        seed = int(self.env_rng.integers(2**63 - 1))
        env = self.batched.make_batched(tasks, self.envs_per_task, self.device, self.horizon, seed=seed)
        obs = env.reset().reshape(len(tasks), self.envs_per_task, -1).float()
        alive = torch.ones(len(tasks), self.envs_per_task, device=self.device)
        all_obs, all_actions, all_rewards, all_mask = [], [], [], []
        for _ in range(self.horizon):
            actions = act(obs)
            next_obs, reward, terminated, _ = env.step(actions)
            all_obs.append(obs)
            all_actions.append(actions)
            all_rewards.append(reward.float() * alive)
            all_mask.append(alive)
            alive = alive * (~terminated).float()
            obs = next_obs.reshape(obs.shape).float()
        if hasattr(env, "close"):
            env.close()
        return Episodes(
            torch.stack(all_obs),
            torch.stack(all_actions),
            torch.stack(all_rewards),
            torch.stack(all_mask),
        )
