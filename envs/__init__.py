"""metarl task families: parameterized gymnasium environments registered as ``metarl/<Name>-v0``.

Importing this package registers every family with gymnasium::

    import gymnasium as gym
    import envs  # noqa: F401  (registers the metarl/ ids)

    env = gym.make("metarl/Navigation2D-v0")
    tasks = env.unwrapped.sample_tasks(20, split="train", seed=0)
    obs, info = env.reset(options={"task": tasks[0]})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from envs.base import SPLITS, BatchedTaskEnv, Task, TaskFamily, split_rng

__all__ = [
    "SPLITS",
    "BatchedTaskEnv",
    "FAMILIES",
    "FamilySpec",
    "Task",
    "TaskFamily",
    "register_all",
    "split_rng",
]


@dataclass(frozen=True)
class FamilySpec:
    """One registered id: the class (as ``module:Class``), its kwargs and the episode horizon."""

    id: str
    entry_point: str
    max_episode_steps: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    extra: str | None = None  # the pip extra the family needs, if any


FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec("metarl/Navigation2D-v0", "envs.navigation:Navigation2DEnv", 100),
    FamilySpec("metarl/Bandit-K5-v0", "envs.bandit:BernoulliBanditEnv", 10, {"num_arms": 5}),
    FamilySpec("metarl/Bandit-K10-v0", "envs.bandit:BernoulliBanditEnv", 10, {"num_arms": 10}),
    FamilySpec("metarl/Bandit-K50-v0", "envs.bandit:BernoulliBanditEnv", 10, {"num_arms": 50}),
    FamilySpec("metarl/TabularMDP-v0", "envs.tabular_mdp:TabularMDPEnv", 10),
    FamilySpec("metarl/HalfCheetahVel-v0", "envs.locomotion:HalfCheetahVelEnv", 200, extra="mujoco"),
    FamilySpec("metarl/HalfCheetahDir-v0", "envs.locomotion:HalfCheetahDirEnv", 200, extra="mujoco"),
    FamilySpec("metarl/AntVel-v0", "envs.locomotion:AntVelEnv", 200, extra="mujoco"),
    FamilySpec("metarl/AntDir-v0", "envs.locomotion:AntDirEnv", 200, extra="mujoco"),
    FamilySpec("metarl/AntGoal-v0", "envs.locomotion:AntGoalEnv", 200, extra="mujoco"),
    FamilySpec(
        "metarl/MetaWorldML1-v0",
        "envs.metaworld_family:MetaWorldEnv",
        500,
        {"benchmark": "ML1", "env_name": "reach-v3"},
        extra="metaworld",
    ),
    FamilySpec(
        "metarl/MetaWorldML10-v0",
        "envs.metaworld_family:MetaWorldEnv",
        500,
        {"benchmark": "ML10"},
        extra="metaworld",
    ),
    FamilySpec(
        "metarl/MetaWorldML45-v0",
        "envs.metaworld_family:MetaWorldEnv",
        500,
        {"benchmark": "ML45"},
        extra="metaworld",
    ),
)


def register_all() -> None:
    """Register every family with gymnasium (idempotent)."""
    for spec in FAMILIES:
        if spec.id not in gym.registry:
            gym.register(
                id=spec.id,
                entry_point=spec.entry_point,
                max_episode_steps=spec.max_episode_steps,
                kwargs=dict(spec.kwargs),
            )


register_all()
