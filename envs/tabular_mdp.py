"""Random tabular MDPs (Duan et al. 2016, RL², arXiv:1611.02779, §3.2).

Two versions of one family, with the same transitions and rewards for the same random numbers:

- :class:`TabularMDPEnv`, a ``gymnasium.Env`` (one MDP, numpy, randomness from ``self.np_random``);
- :class:`BatchedTabularMDP`, ``num_tasks × envs_per_task`` MDPs stepped at once in torch
  (randomness from a ``torch.Generator``), built by :meth:`TabularMDPEnv.make_batched`.

Each step consumes two float32 variates: ``z ~ N(0, 1)`` for the reward (:func:`gaussian_reward`)
and ``u ~ U[0, 1)`` for the next state, sampled by inverting the transition CDF
(:func:`transition_cdf`, :func:`next_state`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar

import gymnasium as gym
import numpy as np
import torch

from envs.bandit import make_torch_generator
from envs.base import Task, TaskFamily, check_indices, tasks_of_type

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclasses.dataclass(frozen=True)
class TabularMDPTask(Task):
    """One MDP: ``mean_rewards[s][a] = μ_{s,a}`` and ``transitions[s][a][s'] = P(s' | s, a)``.

    Nested lists (as from JSON) are converted to nested tuples of floats; shapes and probabilities
    are validated.
    """

    mean_rewards: tuple[tuple[float, ...], ...]
    transitions: tuple[tuple[tuple[float, ...], ...], ...]

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean_rewards, dtype=np.float64)
        probs = np.asarray(self.transitions, dtype=np.float64)
        if mean.ndim != 2 or mean.size == 0:
            raise ValueError(f"mean_rewards must be a non-empty [S][A] table, got shape {mean.shape}")
        num_states, num_actions = mean.shape
        if probs.shape != (num_states, num_actions, num_states):
            raise ValueError(
                f"transitions must have shape [S][A][S] = {(num_states, num_actions, num_states)}, "
                f"got {probs.shape}"
            )
        if np.any(probs < 0.0) or not np.allclose(probs.sum(-1), 1.0, atol=1e-6):
            raise ValueError("every transitions[s][a] must be a probability vector (>= 0, sums to 1)")
        object.__setattr__(self, "mean_rewards", _nested_tuple(mean))
        object.__setattr__(self, "transitions", _nested_tuple(probs))

    @property
    def num_states(self) -> int:
        return len(self.mean_rewards)

    @property
    def num_actions(self) -> int:
        return len(self.mean_rewards[0])


def _nested_tuple(array: np.ndarray) -> Any:
    if array.ndim == 1:
        return tuple(array.tolist())
    return tuple(_nested_tuple(row) for row in array)


def transition_cdf(transitions: np.ndarray) -> np.ndarray:
    """The float32 CDF of ``P(· | s, a)`` along the last axis, with its last entry set to 1.

    Both versions of the family sample from this same table, so they pick the same next state for
    the same variate. Works on one task ``[S, A, S]`` or a stack ``[B, S, A, S]`` (rows are summed
    independently).
    """
    cdf = np.cumsum(np.asarray(transitions, dtype=np.float64), axis=-1).astype(np.float32)
    cdf[..., -1] = 1.0
    return cdf


def next_state(cdf_rows: ArrayT, uniform: ArrayT) -> ArrayT:
    """Inverse-CDF sampling: ``s'`` = the number of CDF entries ``<= u``.

    Args:
        cdf_rows: ``[..., S]`` float32 rows of :func:`transition_cdf` for the current ``(s, a)``.
        uniform: ``[...]`` float32 ``U[0, 1)`` variates.

    Returns:
        ``[...]`` integer next states in ``[0, S)`` (the last CDF entry is 1 > u).
    """
    return (cdf_rows <= uniform[..., None]).sum(-1)


def gaussian_reward(mean: ArrayT, normal: ArrayT, std: float) -> ArrayT:
    """``r = μ_{s,a} + std · z`` in float32, with ``z ~ N(0, 1)`` (so ``r ~ N(μ_{s,a}, std²)``)."""
    return mean + std * normal


class TabularMDPNoise(NamedTuple):
    """The variates one batched ``step`` consumes, each ``[num_tasks, envs_per_task]`` float32."""

    reward: torch.Tensor  #: ``z ~ N(0, 1)``
    transition: torch.Tensor  #: ``u ~ U[0, 1)``


class TabularMDPEnv(TaskFamily, gym.Env[np.ndarray, np.int64]):
    """A random finite MDP whose reward means and transition probabilities are the task.

    ## Description
    The RL² tabular-MDP benchmark (Duan et al. 2016, "RL²: Fast Reinforcement Learning via Slow
    Reinforcement Learning", arXiv:1611.02779, §3.2). Each task is an MDP with ``|S|`` states and
    ``|A|`` actions, reward means ``μ_{s,a}`` and transition distributions ``P(· | s, a)``, all
    unobserved. An episode lasts ``T`` steps; an RL² *trial* is ``n ∈ {10, 25, 50, 75, 100}``
    episodes of the same MDP (the task persists across ``reset``; RL² Table 2 gives the reference
    returns).

    ## Action Space
    ``Discrete(num_actions)``.

    ## Observation Space
    ``Box(0, 1, (num_states,), float32)``: the one-hot encoding of the current state.

    ## Rewards
    ``r ~ N(μ_{s,a}, reward_noise_std²)`` for the state ``s`` the action ``a`` was taken in. Each
    step draws, in this order, ``z = self.np_random.standard_normal(dtype=np.float32)`` (the reward,
    :func:`gaussian_reward`) and ``u = self.np_random.random(dtype=np.float32)`` (the next state,
    :func:`next_state` over :func:`transition_cdf`); the tables are held as float32.

    ## Starting State
    State ``0``. ``reset`` draws no random numbers and keeps the task.

    ## Episode End
    Never terminates; truncated after ``episode_length`` steps. The registered id sets
    ``max_episode_steps`` to the default ``episode_length`` (10); for another ``T`` pass both, e.g.
    ``gym.make("metarl/TabularMDP-v0", episode_length=20, max_episode_steps=20)``.

    ## Task distribution
    ``μ_{s,a} ~ N(1, 1)`` and ``P(· | s, a) ~ Dirichlet(1, …, 1)`` independently for every
    ``(s, a)`` (RL² §3.2); registered as ``metarl/TabularMDP-v0`` with ``|S| = 10``, ``|A| = 5``,
    ``T = 10``.

    ## Arguments
    - ``num_states``: ``|S|`` (default ``10``).
    - ``num_actions``: ``|A|`` (default ``5``).
    - ``episode_length``: ``T``, steps per episode (default ``10``).
    - ``reward_mean_loc``, ``reward_mean_scale``: ``μ_{s,a} ~ N(loc, scale²)`` (default ``1``,
      ``1``).
    - ``reward_noise_std``: standard deviation of the reward around ``μ_{s,a}`` (default ``1``).
    - ``dirichlet_concentration``: the symmetric Dirichlet parameter of ``P(· | s, a)`` (default
      ``1``).
    """

    metadata = {"render_modes": []}
    task_type = TabularMDPTask
    task_distribution = "mu ~ N(1, 1), P(.|s,a) ~ Dirichlet(1); |S|=10, |A|=5, T=10 (RL² §3.2)"

    def __init__(
        self,
        num_states: int = 10,
        num_actions: int = 5,
        episode_length: int = 10,
        reward_mean_loc: float = 1.0,
        reward_mean_scale: float = 1.0,
        reward_noise_std: float = 1.0,
        dirichlet_concentration: float = 1.0,
    ) -> None:
        if int(num_states) < 1 or int(num_actions) < 1 or int(episode_length) < 1:
            raise ValueError(
                "num_states, num_actions and episode_length must be positive, got "
                f"{num_states}, {num_actions} and {episode_length}"
            )
        if reward_mean_scale < 0 or reward_noise_std < 0:
            raise ValueError(
                f"reward_mean_scale and reward_noise_std must be >= 0, got {reward_mean_scale} "
                f"and {reward_noise_std}"
            )
        if dirichlet_concentration <= 0:
            raise ValueError(f"dirichlet_concentration must be positive, got {dirichlet_concentration}")
        self.num_states = int(num_states)
        self.num_actions = int(num_actions)
        self.episode_length = int(episode_length)
        self.reward_mean_loc = float(reward_mean_loc)
        self.reward_mean_scale = float(reward_mean_scale)
        self.reward_noise_std = float(reward_noise_std)
        self.dirichlet_concentration = float(dirichlet_concentration)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(self.num_states,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(self.num_actions)
        self._mean = np.zeros((self.num_states, self.num_actions), dtype=np.float32)
        self._cdf = np.ones((self.num_states, self.num_actions, self.num_states), dtype=np.float32)
        self._state = 0
        self._steps = 0
        self._init_task()

    def _draw_task(self, rng: np.random.Generator) -> TabularMDPTask:
        shape = (self.num_states, self.num_actions)
        mean = rng.normal(self.reward_mean_loc, self.reward_mean_scale, size=shape)
        alpha = np.full(self.num_states, self.dirichlet_concentration)
        return TabularMDPTask(mean_rewards=mean, transitions=rng.dirichlet(alpha, size=shape))

    def set_task(self, task: Task) -> None:
        if isinstance(task, TabularMDPTask) and (task.num_states, task.num_actions) != (
            self.num_states,
            self.num_actions,
        ):
            raise ValueError(
                f"{type(self).__name__} has |S|={self.num_states}, |A|={self.num_actions}; got a "
                f"TabularMDPTask with |S|={task.num_states}, |A|={task.num_actions}"
            )
        super().set_task(task)

    def _on_task_changed(self) -> None:
        task: TabularMDPTask = self._task  # type: ignore[assignment]
        self._mean = np.asarray(task.mean_rewards, dtype=np.float32)
        self._cdf = transition_cdf(np.asarray(task.transitions))

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.num_states, dtype=np.float32)
        obs[self._state] = 1.0
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._reset_task(options)
        self._state = 0
        self._steps = 0
        return self._obs(), {}

    def step(self, action: int | np.integer) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be in [0, {self.num_actions}), got {action!r}")
        a = int(action)
        normal = self.np_random.standard_normal(dtype=np.float32)
        uniform = self.np_random.random(dtype=np.float32)
        reward = gaussian_reward(self._mean[self._state, a], normal, np.float32(self.reward_noise_std))
        self._state = int(next_state(self._cdf[self._state, a], np.asarray(uniform)))
        self._steps += 1
        truncated = self._steps >= self.episode_length
        return self._obs(), float(reward), False, truncated, {}

    def make_batched(
        self,
        tasks: Sequence[TabularMDPTask],
        envs_per_task: int,
        device: torch.device | str = "cpu",
        horizon: int | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> BatchedTabularMDP:
        """A :class:`BatchedTabularMDP` over ``tasks`` (``horizon`` default: ``episode_length``)."""
        return BatchedTabularMDP(
            tasks,
            envs_per_task,
            device=device,
            horizon=self.episode_length if horizon is None else horizon,
            reward_noise_std=self.reward_noise_std,
            seed=seed,
            generator=generator,
        )


class BatchedTabularMDP:
    """``num_tasks × envs_per_task`` tabular MDPs stepped at once in torch.

    Same transitions and rewards as :class:`TabularMDPEnv` for the same variates:
    ``step(actions, noise)`` with ``noise = TabularMDPNoise(reward=z, transition=u)`` computes
    ``gaussian_reward(μ[s, a], z)`` and ``next_state(F[s, a], u)`` from the same float32 tables.
    Without ``noise`` the variates come from the env's ``torch.Generator`` (:meth:`sample_noise`).

    Shapes: actions, rewards and flags ``[num_tasks, envs_per_task]``; observations
    ``[num_tasks, envs_per_task, num_states]`` one-hot float32. Nothing terminates; ``truncated``
    is set once ``horizon`` steps have been taken since ``reset`` (one episode; call ``reset`` for
    the next episode of the trial — the tasks stay).

    Args:
        tasks: one :class:`TabularMDPTask` per task row, all with the same ``|S|`` and ``|A|``.
        envs_per_task: independent copies of each task (``E``).
        device: where every tensor lives.
        horizon: steps per episode (``T``).
        reward_noise_std: standard deviation of the reward around ``μ_{s,a}``.
        seed: seed of the env's own generator when ``generator`` is not given (``None``: fresh
            entropy).
        generator: a ``torch.Generator`` on ``device`` to draw the variates from.
    """

    def __init__(
        self,
        tasks: Sequence[TabularMDPTask],
        envs_per_task: int,
        *,
        device: torch.device | str = "cpu",
        horizon: int = 10,
        reward_noise_std: float = 1.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        tasks_of_type(tasks, TabularMDPTask)
        if len(tasks) == 0:
            raise ValueError("BatchedTabularMDP needs at least one task")
        sizes = {(task.num_states, task.num_actions) for task in tasks}
        if len(sizes) != 1:
            raise ValueError(f"all tasks must have the same (|S|, |A|), got {sorted(sizes)}")
        if int(envs_per_task) < 1 or int(horizon) < 1:
            raise ValueError(f"envs_per_task and horizon must be positive, got {envs_per_task} and {horizon}")
        if reward_noise_std < 0:
            raise ValueError(f"reward_noise_std must be >= 0, got {reward_noise_std}")
        self.device = torch.device(device)
        self.num_tasks = len(tasks)
        self.envs_per_task = int(envs_per_task)
        self.num_states, self.num_actions = sizes.pop()
        self.horizon = int(horizon)
        self.reward_noise_std = float(reward_noise_std)
        self.generator = make_torch_generator(self.device, seed, generator)
        mean = np.asarray([t.mean_rewards for t in tasks], dtype=np.float32)
        cdf = transition_cdf(np.asarray([t.transitions for t in tasks]))
        #: ``[num_tasks, S, A]`` float32 reward means.
        self.mean_rewards = torch.from_numpy(mean).to(self.device)
        #: ``[num_tasks, S, A, S]`` float32 transition CDFs.
        self.transition_cdf = torch.from_numpy(cdf).to(self.device)
        # Row ``(b, s, a)`` of the flattened tables is ``(b * S + s) * A + a``.
        self._task_offset = torch.arange(self.num_tasks, device=self.device)[:, None] * (
            self.num_states * self.num_actions
        )
        self._one_hot = torch.eye(self.num_states, device=self.device)
        self.state = torch.zeros(self.shape, dtype=torch.long, device=self.device)
        self.t = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_tasks, self.envs_per_task)

    def _obs(self) -> torch.Tensor:
        return self._one_hot.index_select(0, self.state.view(-1)).view(*self.shape, -1)

    def reset(self) -> torch.Tensor:
        """Start a new episode at state 0 in every env (the tasks stay); returns ``[B, E, S]``."""
        self.state.zero_()
        self.t = 0
        return self._obs()

    def sample_noise(self) -> TabularMDPNoise:
        """The variates one ``step`` consumes, from the env's generator."""
        return TabularMDPNoise(
            reward=torch.randn(self.shape, generator=self.generator, device=self.device),
            transition=torch.rand(self.shape, generator=self.generator, device=self.device),
        )

    def step(
        self, actions: torch.Tensor, noise: TabularMDPNoise | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Take ``actions[b, e]`` in every env.

        Args:
            actions: ``[B, E]`` integer actions.
            noise: optional variates to use instead of drawing them (see :class:`TabularMDPNoise`).

        Returns:
            ``(obs [B, E, S], reward [B, E], terminated [B, E], truncated [B, E])``.
        """
        if actions.shape != self.shape:
            raise ValueError(f"actions must have shape {self.shape}, got {tuple(actions.shape)}")
        if actions.dtype.is_floating_point or actions.dtype == torch.bool:
            raise TypeError(f"actions must be integer action indices, got dtype {actions.dtype}")
        actions = actions.to(device=self.device, dtype=torch.long)
        check_indices(actions, self.num_actions, "action indices")
        if noise is None:
            noise = self.sample_noise()
        elif noise.reward.shape != self.shape or noise.transition.shape != self.shape:
            raise ValueError(
                f"noise tensors must have shape {self.shape}, got {tuple(noise.reward.shape)} "
                f"and {tuple(noise.transition.shape)}"
            )
        row = torch.add(actions, self.state, alpha=self.num_actions).add_(self._task_offset).view(-1)
        mean = self.mean_rewards.view(-1).index_select(0, row).view(self.shape)
        cdf_rows = self.transition_cdf.view(-1, self.num_states).index_select(0, row)
        reward = gaussian_reward(mean, noise.reward.to(mean), self.reward_noise_std)
        self.state = next_state(cdf_rows.view(*self.shape, -1), noise.transition.to(mean))
        self.t += 1
        terminated = torch.zeros(self.shape, dtype=torch.bool, device=self.device)
        truncated = torch.full(self.shape, self.t >= self.horizon, dtype=torch.bool, device=self.device)
        return self._obs(), reward, terminated, truncated
