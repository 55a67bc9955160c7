"""Resolving a task family from a config: a registered gymnasium id or a user's ``"module:Class"``."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

import envs
from envs.base import Task
from metarl.core import TaskSampler
from metarl.errors import ConfigError

CONTRACT = ("sample_tasks", "set_task", "get_task")


def family_ids() -> list[str]:
    """Every registered metarl family id."""
    return [spec.id for spec in envs.FAMILIES]


def _import_named(path: str) -> type | str:
    """``"module:Class"`` → the class; ``"module:Some-v0"`` → the id the module registered with gymnasium.

    Only the module the user named is imported (gymnasium's own ``"module:EnvId"`` convention).
    """
    module_name, _, name = path.partition(":")
    if not module_name or not name:
        raise ConfigError(f"env.id {path!r}: expected a registered id, 'module:Class' or 'module:EnvId'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"env.id {path!r}: cannot import module {module_name!r} ({exc})") from None
    if name in gym.registry:
        return name
    cls = getattr(module, name, None)
    if not inspect.isclass(cls):
        raise ConfigError(
            f"env.id {path!r}: module {module_name!r} has no class {name!r} and registers no id {name!r}"
        )
    if not issubclass(cls, gym.Env):
        raise ConfigError(f"env.id {path!r}: {cls.__name__} is not a gymnasium.Env")
    return cls


def env_factory(env_id: str, kwargs: dict[str, Any], max_episode_steps: int | None) -> Callable[[], gym.Env]:
    """A zero-argument constructor of the family's env, validated once (it builds one env to check it).

    ``env_id`` is a registered id (``metarl/Navigation2D-v0``), ``"module:Class"`` or ``"module:EnvId"``
    (an id the module registers on import); only the module the user named is imported. The env must
    follow the task-family contract (``sample_tasks``, ``set_task``, ``get_task``) and have a finite
    horizon (from its registration or ``max_episode_steps``).
    """
    named = _import_named(env_id) if ":" in env_id and env_id not in gym.registry else env_id
    if not isinstance(named, str):
        cls = named

        def make() -> gym.Env:
            env = cls(**kwargs)
            if max_episode_steps is not None:
                env = gym.wrappers.TimeLimit(env, max_episode_steps)
            return env

    else:
        if named not in gym.registry:
            raise ConfigError(
                f"env.id {env_id!r} is not registered; valid: {', '.join(family_ids())} "
                "or 'module:Class' / 'module:EnvId' of your own family"
            )
        extra = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}

        def make() -> gym.Env:
            return gym.make(named, **kwargs, **extra)

    try:
        probe = make()
    except ConfigError:
        raise
    except (TypeError, ValueError, ImportError) as exc:
        raise ConfigError(f"env {env_id!r} with kwargs {kwargs}: {exc}") from None
    missing = [name for name in CONTRACT if not callable(getattr(probe.unwrapped, name, None))]
    if missing:
        raise ConfigError(
            f"env.id {env_id!r} is not a task family: it lacks {', '.join(missing)} "
            "(see envs/base.py for the contract)"
        )
    if horizon_of(probe) is None:
        raise ConfigError(f"env {env_id!r} has no horizon: set env.max_episode_steps")
    probe.close()
    return make


def horizon_of(env: gym.Env) -> int | None:
    """The episode horizon: the registration's or TimeLimit's ``max_episode_steps``."""
    if env.spec is not None and env.spec.max_episode_steps is not None:
        return int(env.spec.max_episode_steps)
    while isinstance(env, gym.Wrapper):
        if isinstance(env, gym.wrappers.TimeLimit):
            return int(env._max_episode_steps)
        env = env.env
    return None


class FamilyTaskSampler(TaskSampler):
    """Tasks from a task family's ``sample_tasks`` (train split for meta-training, test for held-out)."""

    def __init__(self, env: gym.Env) -> None:
        self.family = env.unwrapped

    def sample(self, n: int, *, split: str, rng: np.random.Generator) -> list[Task]:
        return self.family.sample_tasks(n, split=split, seed=int(rng.integers(2**63 - 1)))

    def held_out(self, n: int, *, seed: int) -> list[Task]:
        return self.family.sample_tasks(n, split="test", seed=seed)

    def task_from_dict(self, data: dict[str, Any]) -> Task:
        return self.family.task_type.from_dict(data)
