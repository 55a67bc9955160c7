"""Bernoulli multi-armed bandits (Duan et al. 2016, RL², arXiv:1611.02779, §3.1).

Two versions of one family, with the same rewards for the same random numbers:

- :class:`BernoulliBanditEnv`, a ``gymnasium.Env`` (one bandit, numpy, randomness from
  ``self.np_random``);
- :class:`BatchedBernoulliBandit`, ``num_tasks × envs_per_task`` bandits stepped at once in torch
  (randomness from a ``torch.Generator``), built by :meth:`BernoulliBanditEnv.make_batched`.

Both turn one uniform variate ``u ~ U[0, 1)`` (float32) per pull into a reward with
:func:`bernoulli_reward`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
import torch

from envs.base import Task, TaskFamily, check_indices, tasks_of_type

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclasses.dataclass(frozen=True)
class BanditTask(Task):
    """The success probability of every arm: arm ``i`` pays 1 with probability ``probs[i]``."""

    probs: tuple[float, ...]

    def __post_init__(self) -> None:
        probs = np.asarray(self.probs, dtype=np.float64)
        if probs.ndim != 1 or probs.size == 0:
            raise ValueError(f"BanditTask.probs must be a non-empty 1-D sequence, got shape {probs.shape}")
        if not np.all((probs >= 0.0) & (probs <= 1.0)):
            raise ValueError(f"BanditTask.probs must lie in [0, 1], got {self.probs}")
        object.__setattr__(self, "probs", tuple(probs.tolist()))

    @property
    def num_arms(self) -> int:
        return len(self.probs)


def bernoulli_reward(probs: ArrayT, uniform: ArrayT) -> ArrayT:
    """The reward of a pull: ``1`` if ``uniform < p_a`` else ``0`` (so ``P(r = 1) = p_a``).

    Args:
        probs: the success probability of the pulled arm, float32, any shape.
        uniform: ``U[0, 1)`` variates (float32) of the same shape.

    Returns:
        float32 rewards of the same shape (numpy in, numpy out; torch in, torch out).
    """
    hit = uniform < probs
    if isinstance(hit, torch.Tensor):
        return hit.to(torch.float32)
    return np.asarray(hit, dtype=np.float32)


class BernoulliBanditEnv(TaskFamily, gym.Env[np.ndarray, np.int64]):
    """A ``k``-armed Bernoulli bandit whose arm probabilities are the task.

    ## Description
    The RL² bandit benchmark (Duan et al. 2016, "RL²: Fast Reinforcement Learning via Slow
    Reinforcement Learning", arXiv:1611.02779, §3.1). Each task is a bandit with ``k`` arms; arm
    ``i`` pays ``1`` with probability ``p_i`` and ``0`` otherwise. The agent does not observe the
    ``p_i``: it must explore the arms and exploit the best one within a trial of ``n`` pulls.

    One gymnasium episode is one RL² *trial*: ``n = num_pulls`` pulls of the same bandit. (RL²
    reports ``n ∈ {10, 100, 500}``; Table 1 of the paper gives the reference returns.)

    ## Action Space
    ``Discrete(num_arms)``: the arm to pull.

    ## Observation Space
    ``Box(0, 1, (1,), float32)``, always ``0`` (a bandit has no state; a recurrent policy sees the
    previous action and reward instead).

    ## Rewards
    ``1`` with probability ``p_a`` for the pulled arm ``a``, else ``0``. Each step draws exactly one
    variate ``u = self.np_random.random(dtype=np.float32)`` and pays ``float(u < p_a)``
    (:func:`bernoulli_reward`); the ``p_i`` are held as float32.

    ## Starting State
    The constant observation. ``reset`` draws no random numbers and keeps the task.

    ## Episode End
    Never terminates; truncated after ``num_pulls`` pulls. The registered ids set
    ``max_episode_steps`` to the default ``num_pulls`` (10); for another ``n`` pass both, e.g.
    ``gym.make("metarl/Bandit-K5-v0", num_pulls=100, max_episode_steps=100)``.

    ## Task distribution
    ``p_i ~ U[0, 1]`` independently for each of the ``k`` arms (RL² §3.1); registered as
    ``metarl/Bandit-K5-v0``, ``metarl/Bandit-K10-v0`` and ``metarl/Bandit-K50-v0``.

    ## Arguments
    - ``num_arms``: ``k``, the number of arms (default ``5``).
    - ``num_pulls``: ``n``, the pulls of one trial / episode (default ``10``, the first row of RL²
      Table 1).
    - ``prob_low``, ``prob_high``: bounds of the uniform arm-probability distribution (default
      ``0``, ``1``).
    """

    metadata = {"render_modes": []}
    task_type = BanditTask
    task_distribution = "p_i ~ U[0, 1] for k arms, n pulls per trial (RL² §3.1)"

    def __init__(
        self,
        num_arms: int = 5,
        num_pulls: int = 10,
        prob_low: float = 0.0,
        prob_high: float = 1.0,
    ) -> None:
        if int(num_arms) < 1:
            raise ValueError(f"num_arms must be at least 1, got {num_arms}")
        if int(num_pulls) < 1:
            raise ValueError(f"num_pulls must be at least 1, got {num_pulls}")
        if not 0.0 <= prob_low <= prob_high <= 1.0:
            raise ValueError(
                f"need 0 <= prob_low <= prob_high <= 1, got prob_low={prob_low}, prob_high={prob_high}"
            )
        self.num_arms = int(num_arms)
        self.num_pulls = int(num_pulls)
        self.prob_low = float(prob_low)
        self.prob_high = float(prob_high)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(self.num_arms)
        self._probs = np.zeros(self.num_arms, dtype=np.float32)
        self._pulls = 0
        self._init_task()

    def _draw_task(self, rng: np.random.Generator) -> BanditTask:
        return BanditTask(probs=tuple(rng.uniform(self.prob_low, self.prob_high, size=self.num_arms)))

    def set_task(self, task: Task) -> None:
        if isinstance(task, BanditTask) and task.num_arms != self.num_arms:
            raise ValueError(
                f"{type(self).__name__} has {self.num_arms} arms, got a BanditTask with {task.num_arms}"
            )
        super().set_task(task)

    def _on_task_changed(self) -> None:
        self._probs = np.asarray(self._task.probs, dtype=np.float32)  # type: ignore[attr-defined]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._reset_task(options)
        self._pulls = 0
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: int | np.integer) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an arm index in [0, {self.num_arms}), got {action!r}")
        uniform = self.np_random.random(dtype=np.float32)
        reward = bernoulli_reward(self._probs[int(action)], uniform)
        self._pulls += 1
        truncated = self._pulls >= self.num_pulls
        return np.zeros(1, dtype=np.float32), float(reward), False, truncated, {}

    def oracle_return(self, task: BanditTask, horizon: int) -> float:
        """Expected return of the optimal policy that knows the arms: ``horizon · max_i p_i``."""
        return float(horizon * max(task.probs))

    def make_batched(
        self,
        tasks: Sequence[BanditTask],
        envs_per_task: int,
        device: torch.device | str = "cpu",
        horizon: int | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> BatchedBernoulliBandit:
        """A :class:`BatchedBernoulliBandit` over ``tasks`` (``horizon`` default: ``num_pulls``)."""
        return BatchedBernoulliBandit(
            tasks,
            envs_per_task,
            device=device,
            horizon=self.num_pulls if horizon is None else horizon,
            seed=seed,
            generator=generator,
        )


class BatchedBernoulliBandit:
    """``num_tasks × envs_per_task`` Bernoulli bandits pulled at once in torch.

    Same rewards as :class:`BernoulliBanditEnv` for the same uniform variates:
    ``step(actions, noise=u)`` pays ``bernoulli_reward(p[task, action], u)``, exactly as the
    gymnasium version does with its draw from ``np_random``. Without ``noise`` the variates come
    from the env's ``torch.Generator`` (:meth:`sample_noise`).

    Shapes: actions, rewards and flags ``[num_tasks, envs_per_task]``; observations
    ``[num_tasks, envs_per_task, 1]`` (constant zeros). Nothing terminates; ``truncated`` is set
    once ``horizon`` pulls have been made since ``reset``.

    Args:
        tasks: one :class:`BanditTask` per task row, all with the same number of arms.
        envs_per_task: independent copies of each task (``E``).
        device: where every tensor lives.
        horizon: pulls per trial (``n``).
        seed: seed of the env's own generator when ``generator`` is not given (``None``: fresh
            entropy).
        generator: a ``torch.Generator`` on ``device`` to draw the reward variates from.
    """

    def __init__(
        self,
        tasks: Sequence[BanditTask],
        envs_per_task: int,
        *,
        device: torch.device | str = "cpu",
        horizon: int = 10,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        tasks_of_type(tasks, BanditTask)
        if len(tasks) == 0:
            raise ValueError("BatchedBernoulliBandit needs at least one task")
        arms = {task.num_arms for task in tasks}
        if len(arms) != 1:
            raise ValueError(f"all tasks must have the same number of arms, got {sorted(arms)}")
        if int(envs_per_task) < 1 or int(horizon) < 1:
            raise ValueError(f"envs_per_task and horizon must be positive, got {envs_per_task} and {horizon}")
        self.device = torch.device(device)
        self.num_tasks = len(tasks)
        self.envs_per_task = int(envs_per_task)
        self.num_arms = arms.pop()
        self.horizon = int(horizon)
        self.generator = make_torch_generator(self.device, seed, generator)
        #: ``[num_tasks, num_arms]`` float32 arm probabilities.
        self.probs = torch.tensor([t.probs for t in tasks], dtype=torch.float32, device=self.device)
        self.t = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_tasks, self.envs_per_task)

    def reset(self) -> torch.Tensor:
        """Start a new trial in every env (the tasks stay); returns the ``[B, E, 1]`` zeros."""
        self.t = 0
        return torch.zeros(*self.shape, 1, device=self.device)

    def sample_noise(self) -> torch.Tensor:
        """The ``[B, E]`` float32 ``U[0, 1)`` variates of one ``step``, from the env's generator."""
        return torch.rand(self.shape, generator=self.generator, device=self.device)

    def step(
        self, actions: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pull ``actions[b, e]`` in every env.

        Args:
            actions: ``[B, E]`` integer arm indices.
            noise: optional ``[B, E]`` float32 ``U[0, 1)`` variates to use instead of drawing them.

        Returns:
            ``(obs [B, E, 1], reward [B, E], terminated [B, E], truncated [B, E])``.
        """
        if actions.shape != self.shape:
            raise ValueError(f"actions must have shape {self.shape}, got {tuple(actions.shape)}")
        if actions.dtype.is_floating_point or actions.dtype == torch.bool:
            raise TypeError(f"actions must be integer arm indices, got dtype {actions.dtype}")
        actions = actions.to(device=self.device, dtype=torch.long)
        check_indices(actions, self.num_arms, "arm indices")
        if noise is None:
            noise = self.sample_noise()
        elif noise.shape != self.shape:
            raise ValueError(f"noise must have shape {self.shape}, got {tuple(noise.shape)}")
        reward = bernoulli_reward(torch.gather(self.probs, 1, actions), noise.to(self.probs))
        self.t += 1
        terminated = torch.zeros(self.shape, dtype=torch.bool, device=self.device)
        truncated = torch.full(self.shape, self.t >= self.horizon, dtype=torch.bool, device=self.device)
        return torch.zeros(*self.shape, 1, device=self.device), reward, terminated, truncated


def make_torch_generator(
    device: torch.device, seed: int | None, generator: torch.Generator | None
) -> torch.Generator:
    """The batched env's generator: ``generator`` as given, else a new one seeded with ``seed``."""
    if generator is not None:
        if seed is not None:
            raise ValueError("pass either seed or generator, not both")
        if generator.device.type != device.type:
            raise ValueError(f"generator lives on {generator.device}, the env on {device}")
        return generator
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen
