"""Resolving a task family from a config (a registered gymnasium id or a user's ``"module:Class"``) and
checking it against the task-family contract of :mod:`envs.base`.

:func:`check_family` is the one check of that contract: ``metarl train`` runs it (through
:func:`env_factory`) before it writes anything, and ``metarl check-family`` prints its result together with
gymnasium's ``check_env``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

import envs
from envs.base import Task, task_from_dict, task_to_dict
from metarl.core import TaskSampler
from metarl.errors import ConfigError

#: The methods every task family has (``envs/base.py``).
CONTRACT = ("sample_tasks", "set_task", "get_task")
#: What ``check_family`` verifies, in order (the lines ``metarl check-family`` prints when they pass).
CHECKS = (
    "has sample_tasks, set_task and get_task",
    "has a finite horizon",
    "has a Box observation space and a Box or Discrete action space",
    "sample_tasks(n, split=..., seed=...) returns n tasks, the same ones for the same seed, on both splits",
    "a task is a frozen dataclass instance",
    "a task round-trips through JSON (TaskClass(**fields) == task)",
    "set_task(task) / get_task() agree",
    "set_task rejects a non-task with TypeError or ValueError",
    "reset(options={'task': task}) sets the task and a plain reset() keeps it",
    "step() runs after reset",
)


def task_type_name(task_type: type) -> str:
    """``"module:QualName"`` of a task class (recorded in a run dir's ``tasks.json``)."""
    return f"{task_type.__module__}:{task_type.__qualname__}"


def check_family(env: gym.Env) -> list[str]:
    """Every way ``env`` breaks the task-family contract of :mod:`envs.base`; empty when it follows it.

    Each problem is one line naming what is missing. The checks run in the order of :data:`CHECKS` and
    stop at the first failed group that later checks depend on (no tasks: nothing else can be checked).
    The env is reset and stepped once; its task afterwards is one of its sampled tasks.
    """
    family = env.unwrapped
    missing = [name for name in CONTRACT if not callable(getattr(family, name, None))]
    if missing:
        return [f"it has no {', '.join(missing)} method{'s' * (len(missing) > 1)} (see envs/base.py)"]
    problems: list[str] = []
    if horizon_of(env) is None:
        problems.append("it has no horizon: register it with max_episode_steps or set env.max_episode_steps")
    if not isinstance(env.observation_space, gym.spaces.Box):
        problems.append(f"its observation space is a {type(env.observation_space).__name__}, not a Box")
    if not isinstance(env.action_space, gym.spaces.Box | gym.spaces.Discrete):
        problems.append(f"its action space is a {type(env.action_space).__name__}, not a Box or Discrete")

    tasks: dict[str, list[Any]] = {}
    for split in ("train", "test"):
        call = f"sample_tasks(2, split={split!r}, seed=0)"
        try:
            drawn = [list(family.sample_tasks(2, split=split, seed=0)) for _ in range(2)]
        except Exception as exc:  # a user's code: any failure is a contract violation, reported as one line
            return [*problems, f"{call} raised {type(exc).__name__}: {_one_line(exc)}"]
        if len(drawn[0]) != 2:
            return [*problems, f"{call} returned {len(drawn[0])} tasks, not 2"]
        tasks[split] = drawn[0]
        if _safe_equal(drawn[0], drawn[1]) is False:
            problems.append(f"{call} returns different tasks each time (the seed must fix them)")
    task = tasks["train"][0]
    name = type(task).__name__
    if not dataclasses.is_dataclass(task) or isinstance(task, type):
        return [*problems, f"its task ({name}) is not a dataclass instance: use @dataclass(frozen=True)"]
    if not type(task).__dataclass_params__.frozen:  # type: ignore[attr-defined]
        problems.append(f"its task class {name} is not frozen: declare it with @dataclass(frozen=True)")
    for candidate in (*tasks["train"], *tasks["test"]):
        if type(candidate) is not type(task):
            other = type(candidate).__name__
            return [*problems, f"sample_tasks returns tasks of several classes ({name}, {other})"]
        try:
            rebuilt = task_from_dict(type(task), json.loads(json.dumps(task_to_dict(candidate))))
        except Exception as exc:  # json, the dataclass constructor or its __post_init__
            why = f"{type(exc).__name__}: {_one_line(exc)}"
            return [*problems, f"its task {candidate!r} is not JSON-serialisable ({why})"]
        if _safe_equal(rebuilt, candidate) is not True:
            return [*problems, f"its task {candidate!r} does not round-trip through JSON (got {rebuilt!r})"]

    first, second = tasks["train"]
    try:
        family.set_task(first)
        current = family.get_task()
    except Exception as exc:
        return [*problems, f"set_task({first!r}) / get_task() raised {type(exc).__name__}: {_one_line(exc)}"]
    if _safe_equal(current, first) is not True:
        problems.append(f"get_task() returned {current!r} after set_task({first!r})")
    for garbage in (object(), "garbage"):
        try:
            family.set_task(garbage)
        except (TypeError, ValueError):
            continue
        except Exception as exc:
            problems.append(
                f"set_task({garbage!r}) raised {type(exc).__name__}; it must raise TypeError or ValueError"
            )
        else:
            problems.append(f"set_task accepts garbage ({garbage!r}); it must raise TypeError or ValueError")
        break
    try:
        env.reset(seed=0, options={"task": second})
        after_options = family.get_task()
        env.reset()
        after_plain = family.get_task()
    except Exception as exc:
        why = f"{type(exc).__name__}: {_one_line(exc)}"
        return [*problems, f"reset(options={{'task': ...}}) / reset() raised {why}"]
    if _safe_equal(after_options, second) is not True:
        problems.append(
            f"reset(options={{'task': {second!r}}}) did not set the task (get_task() is {after_options!r})"
        )
    elif _safe_equal(after_plain, second) is not True:
        problems.append(
            f"the task is lost on a plain reset(): get_task() changed from {second!r} to {after_plain!r}"
        )
    try:
        env.action_space.seed(0)
        env.step(env.action_space.sample())
    except Exception as exc:
        problems.append(f"step() after reset raised {type(exc).__name__}: {_one_line(exc)}")
    return problems


def _safe_equal(a: Any, b: Any) -> bool | None:
    """``a == b`` as a bool; ``None`` when the comparison itself fails or is not a truth value."""
    try:
        return bool(a == b)
    except Exception:
        return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


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


def env_factory(
    env_id: str, kwargs: dict[str, Any], max_episode_steps: int | None, *, check: bool = True
) -> Callable[[], gym.Env]:
    """A zero-argument constructor of the family's env, validated once (it builds one env to check it).

    ``env_id`` is a registered id (``metarl/Navigation2D-v0``), ``"module:Class"`` or ``"module:EnvId"``
    (an id the module registers on import); only the module the user named is imported. With ``check``
    the probe env must pass :func:`check_family` (the contract of :mod:`envs.base`, including a finite
    horizon from its registration or ``max_episode_steps``); every violation is one :class:`ConfigError`
    line. A family whose optional extra is missing gives :func:`envs.base.missing_extra`'s line.
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
    except ImportError as exc:
        message = _one_line(exc)
        if 'pip install "metarl[' in message:  # a missing extra: the same line as gym.make and metarl list
            raise ConfigError(message) from None
        raise ConfigError(f"env.id {env_id!r}: {message}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"env {env_id!r} with kwargs {kwargs}: {_one_line(exc)}") from None
    problems = check_family(probe) if check else []
    probe.close()
    if problems:
        raise ConfigError(
            f"env.id {env_id!r} breaks the task-family contract (envs/base.py; metarl check-family): "
            + "; ".join(problems)
        )
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


def tasks_document(tasks: list[Any], seed: int) -> dict[str, Any]:
    """What a run dir's ``tasks.json`` holds: the held-out tasks' fields, their seed and class.

    ``task_type`` (``"module:QualName"``, taken from the tasks) is recorded so that a resumed or evaluated
    run can check that its family still samples tasks of the same class; it is never imported from here.
    """
    task_type = task_type_name(type(tasks[0])) if tasks else None
    return {"seed": seed, "task_type": task_type, "tasks": [task_to_dict(t) for t in tasks]}


def tasks_from_document(data: dict[str, Any], sampler: TaskSampler) -> list[Any]:
    """The tasks of a ``tasks.json`` document, rebuilt by ``sampler`` (its family's own task class).

    Raises:
        ConfigError: the document names another task class than the one the family samples now.
    """
    tasks = [sampler.task_from_dict(d) for d in data["tasks"]]
    recorded = data.get("task_type")
    if tasks and recorded is not None and recorded != task_type_name(type(tasks[0])):
        raise ConfigError(
            f"tasks.json holds {recorded} tasks but the family now samples {task_type_name(type(tasks[0]))}"
        )
    return tasks


class FamilyTaskSampler(TaskSampler):
    """Tasks from a task family's ``sample_tasks`` (train split for meta-training, test for held-out).

    The task class is the class of the tasks the family samples (any frozen dataclass; see
    :mod:`envs.base`): nothing but ``sample_tasks`` has to name it.
    """

    def __init__(self, env: gym.Env) -> None:
        self.family = env.unwrapped
        self._task_type: type | None = None

    @property
    def task_type(self) -> type:
        """The class of this family's tasks, taken from one sampled task."""
        if self._task_type is None:
            self._task_type = type(self.family.sample_tasks(1, split="test", seed=0)[0])
        return self._task_type

    def sample(self, n: int, *, split: str, rng: np.random.Generator) -> list[Task]:
        return list(self.family.sample_tasks(n, split=split, seed=int(rng.integers(2**63 - 1))))

    def held_out(self, n: int, *, seed: int) -> list[Task]:
        return list(self.family.sample_tasks(n, split="test", seed=seed))

    def task_from_dict(self, data: dict[str, Any]) -> Task:
        return task_from_dict(self.task_type, data)
