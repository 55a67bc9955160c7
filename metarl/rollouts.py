"""Batched rollouts: ``envs_per_task`` episodes of every task of a meta-batch, collected at once.

A family with ``make_batched`` (Navigation2D, bandits, tabular MDPs, the fast MuJoCo path) is stepped as
one tensor program on the learner's device. Any other family that follows the contract (a user's own
``module:Class``) is stepped through gymnasium copies of the env, one per (task, episode), with the policy
still evaluated once per time step for all of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import NamedTuple

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


class RolloutSampler:
    """Collects ``envs_per_task`` episodes of ``horizon`` steps for each task, all tasks at once.

    Args:
        make_env: builds one env of the family (used for the family handle and, without
            ``make_batched``, for the per-episode gymnasium copies).
        horizon: episode length ``H``; episodes end earlier when they terminate.
        envs_per_task: episodes per task per call (``E``; the papers' "rollouts per task").
        device: where episodes are returned (and batched envs run).
        seed: seeds the environments' own randomness (reset noise, stochastic rewards).
    """

    def __init__(
        self,
        make_env: Callable[[], gym.Env],
        horizon: int,
        envs_per_task: int,
        device: torch.device,
        seed: int,
    ) -> None:
        self.make_env = make_env
        self.family = make_env().unwrapped
        self.horizon = int(horizon)
        self.envs_per_task = int(envs_per_task)
        self.device = device
        self.env_rng = np.random.default_rng(seed)
        self._pool: list[gym.Env] = []
        self._make_batched = getattr(self.family, "make_batched", None)
        space = self.family.action_space
        if not isinstance(space, gym.spaces.Box):
            raise ConfigError(
                f"{type(self.family).__name__} has a {type(space).__name__} action space; "
                "this learner needs a continuous (Box) action space"
            )
        self.obs_dim = int(np.prod(self.family.observation_space.shape))
        self.action_dim = int(np.prod(space.shape))

    def rollout(self, tasks: Sequence[Task], act: ActFn) -> Episodes:
        if self._make_batched is not None:
            return self._rollout_batched(tasks, act)
        return self._rollout_gym(tasks, act)

    # -- stepped as one tensor program ----------------------------------------------------------------
    def _rollout_batched(self, tasks: Sequence[Task], act: ActFn) -> Episodes:
        kwargs = {}
        if "seed" in inspect.signature(self._make_batched).parameters:
            kwargs["seed"] = int(self.env_rng.integers(2**63 - 1))
        env = self._make_batched(
            tasks, self.envs_per_task, device=self.device, horizon=self.horizon, **kwargs
        )
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

    # -- any gymnasium family: one env per (task, episode) -------------------------------------------
    def _rollout_gym(self, tasks: Sequence[Task], act: ActFn) -> Episodes:
        n, e, h = len(tasks), self.envs_per_task, self.horizon
        while len(self._pool) < n * e:
            self._pool.append(self.make_env())
        envs = self._pool[: n * e]
        obs = np.zeros((h, n * e, self.obs_dim), dtype=np.float32)
        actions = np.zeros((h, n * e, self.action_dim), dtype=np.float32)
        rewards = np.zeros((h, n * e), dtype=np.float32)
        mask = np.zeros((h, n * e), dtype=np.float32)
        seeds = self.env_rng.integers(2**31 - 1, size=n * e)
        current = np.stack(
            [
                np.asarray(env.reset(seed=int(s), options={"task": tasks[i // e]})[0]).ravel()
                for i, (env, s) in enumerate(zip(envs, seeds, strict=True))
            ]
        ).astype(np.float32)
        alive = np.ones(n * e, dtype=bool)
        for t in range(h):
            if not alive.any():
                break
            obs[t] = current
            mask[t] = alive
            a = act(torch.as_tensor(current, device=self.device).reshape(n, e, -1))
            actions[t] = a.reshape(n * e, -1).detach().cpu().numpy()
            for i in np.flatnonzero(alive):
                o, r, terminated, truncated, _ = envs[i].step(actions[t, i])
                rewards[t, i] = r
                current[i] = np.asarray(o, dtype=np.float32).ravel()
                alive[i] = not (terminated or truncated)

        def to(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(x, device=self.device).reshape(h, n, e, *x.shape[2:])

        return Episodes(to(obs), to(actions), to(rewards), to(mask))
