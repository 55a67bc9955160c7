"""The task-family contract: what your own family must provide (and all that metarl needs of it).

A *task family* is an ordinary :class:`gymnasium.Env` whose behaviour depends on a *task* (a goal, a
target velocity, the arm probabilities of a bandit). ``metarl check-family ID`` checks every point below
(``metarl train`` runs the same checks before it writes anything):

1. **A task is an instance of a frozen dataclass whose fields are JSON values** (numbers, strings, booleans,
   ``None``, and tuples / lists of them). Run dirs store tasks as JSON and rebuild them with
   ``TaskClass(**fields)`` (JSON lists become tuples), and the rebuilt task must equal the original.
   The task class is taken from the tasks ``sample_tasks`` returns; nothing else has to declare it.
2. ``env.sample_tasks(n, *, split="train" | "test", seed=None) -> list[task]``: the same ``(n, split, seed)``
   gives the same tasks; the ``"test"`` split is the held-out distribution (independent of ``"train"``).
3. ``env.set_task(task)`` sets the task and raises ``TypeError`` or ``ValueError`` for anything that is not a
   valid task of this env; ``env.get_task()`` returns the current one.
4. ``env.reset(seed=..., options={"task": task})`` sets the task too, and a plain ``reset()`` keeps it
   (gymnasium's vector environments autoreset a sub-environment by calling ``reset()`` without options).
5. A finite horizon: the ``max_episode_steps`` of its registration, or ``[env] max_episode_steps``.
6. A :class:`gymnasium.spaces.Box` observation space and a ``Box`` (every learner) or ``Discrete`` (RL²)
   action space.

Optional:

- ``make_batched(tasks, envs_per_task, device="cpu", horizon=None, *, seed=None)`` returning a
  :class:`BatchedTaskEnv` that steps many tasks at once in torch (``seed`` is passed only when the method
  accepts it). Without it every learner steps gymnasium copies of the env through one adapter
  (:class:`metarl.rollouts.GymBatchedEnv`), with the same seeding; the batched version is only faster.
- ``oracle_return(task, horizon)``: the return of an optimal policy that knows the task (``metarl compare``
  normalises scores with it; without it the oracle is PPO trained on each task).
- ``task_distribution``: one line describing the task distribution, shown by ``metarl list``.

Subclassing :class:`TaskFamily` (next to ``gymnasium.Env``) and :class:`Task` is a convenience, not a
requirement: ``TaskFamily`` implements points 2–4 from a ``task_type`` and a ``_draw_task(rng)`` (plus the
optional hooks ``_validate_task(task)`` and ``_on_task_changed()``), with independent train/test streams.

This module (and all of ``envs/``) is plain gymnasium + numpy (+ torch for the batched versions): it never
imports ``metarl``, so Stable-Baselines3 or any other library can use the families directly.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")

# Salt mixed into the seed so the train and test streams of one seed are independent streams.
_SPLIT_SALT = {"train": 0x7A11, "test": 0x7E57}

T = TypeVar("T", bound="Task")
D = TypeVar("D")


@dataclasses.dataclass(frozen=True)
class Task:
    """Base class of all tasks: a frozen dataclass that round-trips through JSON."""

    def to_dict(self) -> dict[str, Any]:
        return task_to_dict(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        return task_from_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def task_to_dict(task: Any) -> dict[str, Any]:
    """The JSON-ready fields of any dataclass task (tuples become lists, numpy scalars Python numbers)."""
    if not dataclasses.is_dataclass(task) or isinstance(task, type):
        raise TypeError(f"a task must be a dataclass instance, got {type(task).__name__}")
    return {f.name: _jsonable(getattr(task, f.name)) for f in dataclasses.fields(task)}


def task_from_dict(cls: type[D], data: dict[str, Any]) -> D:
    """Rebuild a ``cls`` task from :func:`task_to_dict`'s output (JSON lists back to tuples)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; valid: {sorted(names)}")
    return cls(**{k: _tuples(v) for k, v in data.items()})


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tuples(value: Any) -> Any:
    """JSON lists back to (nested) tuples, so a task read from JSON equals (and hashes like) the original."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


#: The pip extra each optional family module needs (``metarl list`` and every failed import say the same).
EXTRAS: dict[str, str] = {"mujoco": "MuJoCo", "metaworld": "Meta-World"}


def missing_extra(extra: str) -> str:
    """The one line printed wherever a family's optional extra is not installed (``gym.make``, ``train``)."""
    return (
        f'the {EXTRAS.get(extra, extra)} task families need the optional "{extra}" extra: '
        f'pip install "metarl[{extra}]" (install all extras in one command; metaworld pins mujoco==3.3.0)'
    )


def split_rng(seed: int, split: str) -> np.random.Generator:
    """The generator of one split's task stream: the same seed gives independent train/test streams."""
    if split not in _SPLIT_SALT:
        raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
    return np.random.default_rng([int(seed), _SPLIT_SALT[split]])


def check_indices(actions: torch.Tensor, count: int, what: str) -> None:
    """Check that ``actions`` are indices in ``[0, count)`` (a batched discrete env's ``step``). On the
    CPU an invalid index raises ``ValueError("actions must be <what> in [0, count)")``; on an accelerator
    the check is a device-side assertion (``torch._assert_async``), so that stepping never waits for the
    device to report the actions' range."""
    if actions.device.type == "cpu":
        low, high = torch.aminmax(actions)
        if low < 0 or high >= count:
            raise ValueError(f"actions must be {what} in [0, {count})")
    else:
        valid = ((actions >= 0) & (actions < count)).all()
        torch._assert_async(valid, f"actions must be {what} in [0, {count})")


class TaskFamily(abc.ABC):
    """Mixin giving a ``gymnasium.Env`` the task-family contract.

    Subclasses set ``task_type`` and implement ``_draw_task``; they call ``self._init_task()`` at the end of
    ``__init__`` and ``self._reset_task(options)`` at the start of ``reset``.

    Held-out split: ``sample_tasks(n, split="test", seed=s)`` draws from a stream derived from ``(s, "test")``
    and ``split="train"`` from ``(s, "train")``; the two streams are independent, so for continuous task
    distributions the held-out tasks are disjoint from every training draw with probability one. The test
    set is fixed for a given ``(n, seed)``; ``seed=None`` gives the canonical held-out set (seed 0) for
    ``"test"`` and a draw from the environment's own ``np_random`` for ``"train"``.
    """

    task_type: ClassVar[type[Task]]
    #: One line describing the task distribution, shown by ``metarl list``.
    task_distribution: ClassVar[str] = ""
    #: ``reset`` option keys this family accepts.
    reset_option_keys: ClassVar[frozenset[str]] = frozenset({"task"})

    _task: Task

    @abc.abstractmethod
    def _draw_task(self, rng: np.random.Generator) -> Task:
        """Draw one task from the family's task distribution using ``rng``."""

    def _validate_task(self, task: Task) -> None:
        """Hook: raise ``ValueError`` if ``task`` (already of ``task_type``) does not fit this instance."""

    def _on_task_changed(self) -> None:
        """Hook: recompute whatever depends on the task (called after every ``set_task``)."""

    def _init_task(self) -> None:
        self.set_task(self._draw_task(split_rng(0, "train")))

    def sample_tasks(self, n: int, *, split: str = "train", seed: int | None = None) -> list[Task]:
        if not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
        rng = self.task_rng(split, seed)
        return [self._draw_task(rng) for _ in range(int(n))]

    def task_rng(self, split: str, seed: int | None) -> np.random.Generator:
        """The generator ``sample_tasks`` draws from (for families that override ``sample_tasks``)."""
        if seed is None and split == "train":
            return self.np_random  # type: ignore[attr-defined]
        return split_rng(0 if seed is None else seed, split)

    def set_task(self, task: Task) -> None:
        if not isinstance(task, self.task_type):
            raise TypeError(
                f"{type(self).__name__}.set_task expects a {self.task_type.__name__}, "
                f"got {type(task).__name__}"
            )
        self._validate_task(task)
        self._task = task
        self._on_task_changed()

    def get_task(self) -> Task:
        return self._task

    def task_from_dict(self, data: dict[str, Any]) -> Task:
        return self.task_type.from_dict(data)

    def _reset_task(self, options: dict[str, Any] | None) -> None:
        """Validate ``reset`` options and apply ``options["task"]`` if given."""
        if not options:
            return
        unknown = set(options) - self.reset_option_keys
        if unknown:
            raise ValueError(
                f"{type(self).__name__}.reset: unknown option key(s) {sorted(unknown)}; "
                f"valid: {sorted(self.reset_option_keys)}"
            )
        if "task" in options:
            self.set_task(options["task"])


@runtime_checkable
class BatchedTaskEnv(Protocol):
    """``num_tasks × envs_per_task`` copies of a family stepped at once as torch tensors.

    Observations are ``[num_tasks, envs_per_task, *obs_shape]``, actions
    ``[num_tasks, envs_per_task, *action_shape]``, rewards/flags ``[num_tasks, envs_per_task]``; everything
    lives on ``device``. An environment that terminated keeps returning its last observation and zero reward
    until ``reset``; the caller masks those steps. ``reset()`` keeps the tasks (a trial of several episodes
    calls it between episodes). Environments holding resources (threads) also offer ``close()``.
    """

    num_tasks: int
    envs_per_task: int
    horizon: int

    def reset(self) -> Any: ...

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any]: ...


def tasks_of_type(tasks: Sequence[Task], task_type: type[Task]) -> None:
    """Raise ``TypeError`` unless every task is a ``task_type``."""
    for task in tasks:
        if not isinstance(task, task_type):
            raise TypeError(f"expected {task_type.__name__} tasks, got {type(task).__name__}")
