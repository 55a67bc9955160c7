"""2D navigation to an unknown goal (Finn et al. 2017, MAML, arXiv:1703.03400, §5.3)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from envs.base import Task, TaskFamily, tasks_of_type


@dataclasses.dataclass(frozen=True)
class NavigationTask(Task):
    """The goal position ``(gx, gy)``."""

    goal: tuple[float, float]


class Navigation2DEnv(TaskFamily, gym.Env[np.ndarray, np.ndarray]):
    """2D point-mass navigation to a goal drawn per task.

    ## Description
    The agent is a point starting at the origin; each action moves it by a (clipped) velocity. It must reach
    a goal it does not observe: the only information about the task is the reward.

    ## Action Space
    ``Box(-0.1, 0.1, (2,), float32)``: the displacement of one step. Actions are clipped to the bounds.
    With ``normalized_actions=True``, ``Box(-1, 1, (2,), float32)`` and the displacement is
    ``max_velocity · clip(a, −1, 1)``: rllab's ``normalize()`` wrapper, in which cbfinn/maml_rl runs this
    env (``maml_examples/maml_trpo_point.py``: ``TfEnv(normalize(PointEnvRandGoal()))``). The two differ for
    a Gaussian policy: with σ = 1 on a ±0.1 box almost every action saturates, on a ±1 box it does not —
    the random-init returns stored with the reference code (−82.7 at 0 steps) are of the normalised
    convention (a zero-mean σ = 1 policy: −71 normalised, −90 plain).

    ## Observation Space
    ``Box(-inf, inf, (2,), float32)``: the current position.

    ## Rewards
    ``-‖s' − g‖₂`` after the move (the plain distance, as in every released implementation: cbfinn/maml_rl,
    pytorch-maml-rl, garage; the paper's text says squared distance: ``squared_distance=True``).

    ## Starting State
    ``(0, 0)``.

    ## Episode End
    Terminates when ``|x − gx| < 0.01`` and ``|y − gy| < 0.01``; truncated after 100 steps
    (``max_episode_steps`` of the registration).

    ## Task distribution
    ``goal ~ U[-0.5, 0.5]²`` (MAML §5.3).

    ## Arguments
    - ``goal_low``, ``goal_high``: bounds of the uniform goal distribution (default ``-0.5``, ``0.5``).
    - ``max_velocity``: the action bound (default ``0.1``).
    - ``success_tolerance``: per-axis distance below which the episode terminates (default ``0.01``).
    - ``squared_distance``: use ``-‖s' − g‖²`` as the reward (the paper's text) instead of the distance.
    - ``normalized_actions``: actions in ``[−1, 1]²`` scaled by ``max_velocity`` (rllab ``normalize()``,
      the MAML reference code; default ``False``: the displacement itself, as pytorch-maml-rl and garage).
    """

    metadata = {"render_modes": []}
    task_type = NavigationTask
    task_distribution = "goal ~ U[-0.5, 0.5]^2, H=100 (MAML §5.3)"

    def __init__(
        self,
        goal_low: float = -0.5,
        goal_high: float = 0.5,
        max_velocity: float = 0.1,
        success_tolerance: float = 0.01,
        squared_distance: bool = False,
        normalized_actions: bool = False,
    ) -> None:
        if not goal_low < goal_high:
            raise ValueError(f"goal_low ({goal_low}) must be below goal_high ({goal_high})")
        if max_velocity <= 0:
            raise ValueError(f"max_velocity must be positive, got {max_velocity}")
        self.goal_low = float(goal_low)
        self.goal_high = float(goal_high)
        self.max_velocity = float(max_velocity)
        self.success_tolerance = float(success_tolerance)
        self.squared_distance = bool(squared_distance)
        self.normalized_actions = bool(normalized_actions)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        bound = 1.0 if self.normalized_actions else self.max_velocity
        self.action_space = gym.spaces.Box(-bound, bound, shape=(2,), dtype=np.float32)
        self._state = np.zeros(2, dtype=np.float32)
        self._goal = np.zeros(2, dtype=np.float32)
        self._init_task()

    def _draw_task(self, rng: np.random.Generator) -> NavigationTask:
        gx, gy = rng.uniform(self.goal_low, self.goal_high, size=2)
        return NavigationTask(goal=(float(gx), float(gy)))

    def _on_task_changed(self) -> None:
        self._goal = np.asarray(self._task.goal, dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._reset_task(options)
        self._state = np.zeros(2, dtype=np.float32)
        return self._state.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float32)
        if self.normalized_actions:
            action = np.float32(self.max_velocity) * np.clip(action, -1.0, 1.0)
        else:
            action = np.clip(action, -self.max_velocity, self.max_velocity)
        self._state = (self._state + action).astype(np.float32)
        dx = self._state[0] - self._goal[0]
        dy = self._state[1] - self._goal[1]
        sq = dx * dx + dy * dy
        # sqrt in float64, rounded to float32: correctly rounded on every backend (torch's float32 sqrt
        # on CPU is not), so the batched version reproduces these rewards bit for bit.
        reward = float(sq if self.squared_distance else np.float32(np.sqrt(np.float64(sq))))
        terminated = bool(abs(dx) < self.success_tolerance and abs(dy) < self.success_tolerance)
        return (
            self._state.copy(),
            -reward,
            terminated,
            False,
            {"distance": float(np.sqrt(np.float64(sq)))},
        )

    def oracle_return(self, task: NavigationTask, horizon: int) -> float:
        """Return of the optimal policy that knows the goal, over an episode of ``horizon`` steps.

        Every step moves each coordinate towards the goal by at most ``max_velocity``, so after ``t`` steps
        the closest reachable point is the goal clipped to the box ``[−t·v, t·v]²``; the greedy policy
        ``a = clip(goal − s, −v, v)`` is at that point at every ``t``, so it maximises every term of the
        return at once (MAML §5.3's "oracle" for this task). Simulated with the env's own float32 step.
        """
        oracle = type(self)(
            self.goal_low,
            self.goal_high,
            self.max_velocity,
            self.success_tolerance,
            self.squared_distance,
            self.normalized_actions,
        )
        state, _ = oracle.reset(options={"task": task})
        total = 0.0
        goal = np.asarray(task.goal, dtype=np.float32)
        scale = np.float32(self.max_velocity if self.normalized_actions else 1.0)
        for _ in range(horizon):
            state, reward, terminated, _, _ = oracle.step((goal - state) / scale)
            total += reward
            if terminated:
                break
        return total

    def make_batched(
        self,
        tasks: Sequence[NavigationTask],
        envs_per_task: int,
        device: torch.device | str = "cpu",
        horizon: int = 100,
    ) -> BatchedNavigation2D:
        return BatchedNavigation2D(
            tasks,
            envs_per_task,
            device=device,
            horizon=horizon,
            max_velocity=self.max_velocity,
            success_tolerance=self.success_tolerance,
            squared_distance=self.squared_distance,
            normalized_actions=self.normalized_actions,
        )


class BatchedNavigation2D:
    """``num_tasks × envs_per_task`` Navigation2D environments stepped at once in torch.

    Same dynamics and rewards as :class:`Navigation2DEnv` (float32, step for step). Terminated environments
    stay where they are and return zero reward until ``reset``; ``truncated`` is set at ``horizon``.
    """

    def __init__(
        self,
        tasks: Sequence[NavigationTask],
        envs_per_task: int,
        *,
        device: torch.device | str = "cpu",
        horizon: int = 100,
        max_velocity: float = 0.1,
        success_tolerance: float = 0.01,
        squared_distance: bool = False,
        normalized_actions: bool = False,
    ) -> None:
        tasks_of_type(tasks, NavigationTask)
        self.device = torch.device(device)
        self.num_tasks = len(tasks)
        self.envs_per_task = int(envs_per_task)
        self.horizon = int(horizon)
        self.max_velocity = float(max_velocity)
        self.success_tolerance = float(success_tolerance)
        self.squared_distance = squared_distance
        self.normalized_actions = normalized_actions
        goals = torch.tensor([t.goal for t in tasks], dtype=torch.float32, device=self.device)
        self.goals = goals[:, None, :].expand(-1, self.envs_per_task, -1)
        shape = (self.num_tasks, self.envs_per_task)
        self.state = torch.zeros(*shape, 2, device=self.device)
        self.done = torch.zeros(shape, dtype=torch.bool, device=self.device)
        self.t = 0

    def reset(self) -> torch.Tensor:
        self.state.zero_()
        self.done.zero_()
        self.t = 0
        return self.state.clone()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        actions = actions.to(torch.float32)
        if self.normalized_actions:
            actions = self.max_velocity * actions.clamp(-1.0, 1.0)
        else:
            actions = actions.clamp(-self.max_velocity, self.max_velocity)
        active = ~self.done
        self.state = torch.where(active[..., None], self.state + actions, self.state)
        d = self.state - self.goals
        sq = d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]
        cost = sq if self.squared_distance else torch.sqrt(sq.double()).float()
        reward = torch.where(active, -cost, torch.zeros_like(cost))
        terminated = active & (d.abs() < self.success_tolerance).all(-1)
        self.done = self.done | terminated
        self.t += 1
        truncated = torch.full_like(terminated, self.t >= self.horizon)
        return self.state.clone(), reward, terminated, truncated
