"""Meta-World ML1 / ML10 / ML45 as a task family (Yu et al. 2019, Meta-World, arXiv:1910.10897).

The simulation, the rewards and the benchmark splits come from the optional ``metaworld`` package
(``pip install "metarl[metaworld]"``); this module adds the task-family contract of
:mod:`envs.base` on top of it. ``metaworld`` is imported lazily inside :class:`MetaWorldEnv`, so
``import envs`` works without it.

Upstream bugs worked around (metaworld 3.1.1):

- ``gym.make`` cannot build ML1: only a *vector* entry point is registered
  (Farama-Foundation/Metaworld issue #541). This module is a plain single ``gymnasium.Env``,
  registered as ``metarl/MetaWorldML1-v0``.
- The ML1 *train* vector env silently receives the *test* tasks: the registration lambda closes
  over the loop variable ``split``, so both ``Meta-World/ML1-train`` and ``Meta-World/ML1-test``
  build the test split (Farama-Foundation/Metaworld PR #573). Here the train and test goal sets
  are drawn from separate, independent streams, and ``tests/test_metaworld_family.py`` checks that
  they are disjoint.
- ``metaworld``'s benchmark classes draw their goals from the *global* ``np.random`` state. Here
  each goal configuration is drawn from its own generator, seeded by ``(goal_seed, env name,
  split, index)``, through the environment's seeded reset path (so each environment's own
  rejection rules, e.g. "goal at least 15 cm from the object", still apply). The goal sets are
  therefore not bit-identical to those of ``metaworld.ML1(seed=...)``, but they follow the same
  distribution and are reproducible without touching any global random state.
"""

from __future__ import annotations

import dataclasses
import pickle
import zlib
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from envs.base import SPLITS, Task, TaskFamily, missing_extra, split_rng

if TYPE_CHECKING:
    from metaworld.sawyer_xyz_env import SawyerXYZEnv

#: Benchmarks this family can build and the default ML1 environment.
BENCHMARKS: tuple[str, ...] = ("ML1", "ML10", "ML25", "ML45")
DEFAULT_ML1_ENV = "reach-v3"
#: Goal configurations per environment and split in the Meta-World paper (§4).
GOALS_PER_ENV = 50

_INSTALL_HINT = missing_extra("metaworld")

# Goal configurations computed so far, keyed by (env_name, split, index, goal_seed). Each value is
# a pure function of its key, so sharing them between instances (a vector env's copies) is safe.
_GOAL_CACHE: dict[tuple[str, str, int, int], tuple[float, ...]] = {}


@dataclasses.dataclass(frozen=True)
class MetaWorldTask(Task):
    """One Meta-World task: an environment and one of its goal configurations.

    Attributes:
        env_name: the Meta-World environment, e.g. ``"reach-v3"``.
        split: ``"train"`` or ``"test"``: the benchmark goal set the configuration belongs to.
        index: position of the configuration in that set (``0 ≤ index < goals_per_env``).
        rand_vec: the configuration itself, as Meta-World's ``rand_vec`` (object and goal
            positions in the environment's own layout, e.g. ``(obj_x, obj_y, obj_z, goal_x, goal_y,
            goal_z)`` for ``reach-v3``).
    """

    env_name: str
    split: str
    index: int
    rand_vec: tuple[float, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.env_name, str):
            raise TypeError(f"env_name must be a str, got {type(self.env_name).__name__}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {self.split!r}")
        if isinstance(self.index, bool) or not isinstance(self.index, int | np.integer):
            raise TypeError(f"index must be an int, got {type(self.index).__name__}")
        object.__setattr__(self, "index", int(self.index))
        object.__setattr__(self, "rand_vec", tuple(float(x) for x in self.rand_vec))


class MetaWorldEnv(TaskFamily, gym.Env[np.ndarray, np.ndarray]):
    """A Sawyer arm manipulation task from Meta-World's ML1 / ML10 / ML45 benchmarks.

    Meta-World (Yu et al. 2019, arXiv:1910.10897) defines 50 manipulation environments
    (``reach-v3``, ``pick-place-v3``, ...). Its meta-learning benchmarks are:

    - **ML1**: one environment; 50 train goal configurations and 50 separate test configurations.
    - **ML10**: 10 train environments and 5 held-out test environments, 50 configurations each.
    - **ML45**: 45 train environments and 5 held-out test environments, 50 configurations each.

    ## Description
    A 7-DoF Sawyer arm controlled through an end-effector position delta and a gripper command must
    manipulate objects (reach, push, open a door, ...). A task is an environment together with one
    goal configuration; the goal is hidden from the observation (ML benchmarks), so it must be
    inferred from rewards. One underlying Meta-World environment instance is kept per environment
    name, built lazily the first time a task of that environment is set; switching task may switch
    environment.

    ## Action Space
    ``Box(-1, 1, (4,), float32)``: end-effector ``(dx, dy, dz)`` (scaled by 1/100 by Meta-World) and
    the gripper torque. Actions are clipped to the bounds.

    ## Observation Space
    ``Box(..., (39,), float64)``: hand position (3), gripper opening (1), up to two objects'
    positions and quaternions (14), the same 18 values of the previous step, and the goal position,
    which is zeroed (hidden) in the ML benchmarks.

    ## Rewards
    Meta-World's V2 shaped rewards in ``[0, 10]`` (``reward_function_version="v1"`` for V1's).
    ``info["success"]`` (1.0 or 0.0) is passed through from Meta-World, with its other info entries.

    ## Starting State
    The arm at its home pose and the objects at the task's configuration (deterministic given the
    task).

    ## Episode End
    Truncated after 500 steps (Meta-World's ``max_path_length``; ``max_episode_steps`` of the
    registration). Never terminates unless ``terminate_on_success=True`` (Meta-World's test-time
    setting).

    ## Task distribution
    ``sample_tasks(n, split=..., seed=...)`` draws ``n`` tasks uniformly from the benchmark's train
    (``split="train"``: the train environments × their train configurations) or test set
    (``split="test"``: the test environments × their configurations; for ML1 the same environment
    with its separate test configurations), without replacement until the set is exhausted. The
    configurations themselves are fixed by ``goal_seed``; the sampling ``seed`` picks among them.

    ## Arguments
    - ``benchmark``: ``"ML1"`` (default), ``"ML10"``, ``"ML45"`` (``"ML25"`` is also accepted).
    - ``env_name``: the environment of ML1 (default ``"reach-v3"``); ``None`` for the others.
    - ``goals_per_env``: configurations per environment and split (default 50, as in the paper).
    - ``goal_seed``: seed of the fixed goal configurations (default 0).
    - ``reward_function_version``: ``"v2"`` (default) or ``"v1"``.
    - ``terminate_on_success``: end the episode (``terminated=True``) on the first success.
    - ``render_mode``: passed to Meta-World (``"human"``, ``"rgb_array"``, ``"depth_array"``).
    """

    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 80}
    task_type = MetaWorldTask
    task_distribution = (
        "Meta-World ML1/ML10/ML45: 50 goal configs per env; held-out test goals (ML1) / test envs "
        "(ML10: 10+5, ML45: 45+5), H=500 (Yu et al. 2019)"
    )

    def __init__(
        self,
        benchmark: str = "ML1",
        env_name: str | None = None,
        goals_per_env: int = GOALS_PER_ENV,
        goal_seed: int = 0,
        reward_function_version: str = "v2",
        terminate_on_success: bool = False,
        render_mode: str | None = None,
    ) -> None:
        try:
            from metaworld import env_dict
            from metaworld.types import Task as _MWTask
        except ImportError as err:
            raise ImportError(_INSTALL_HINT) from err

        if benchmark not in BENCHMARKS:
            raise ValueError(f"unknown Meta-World benchmark {benchmark!r}; valid: {list(BENCHMARKS)}")
        all_envs = env_dict.ALL_V3_ENVIRONMENTS
        if benchmark == "ML1":
            env_name = DEFAULT_ML1_ENV if env_name is None else env_name
            if env_name not in all_envs:
                raise ValueError(f"unknown Meta-World environment {env_name!r}; valid: {sorted(all_envs)}")
            train_names: tuple[str, ...] = (env_name,)
            test_names: tuple[str, ...] = (env_name,)
        else:
            if env_name is not None:
                raise ValueError(f"env_name is only for ML1; {benchmark} has fixed train/test environments")
            split_dict = getattr(env_dict, f"{benchmark}_V3")
            train_names = tuple(split_dict["train"])
            test_names = tuple(split_dict["test"])
        if isinstance(goals_per_env, bool) or not isinstance(goals_per_env, int) or goals_per_env < 1:
            raise ValueError(f"goals_per_env must be a positive int, got {goals_per_env!r}")
        if isinstance(goal_seed, bool) or not isinstance(goal_seed, int) or goal_seed < 0:
            raise ValueError(f"goal_seed must be a non-negative int, got {goal_seed!r}")
        if reward_function_version not in ("v1", "v2"):
            raise ValueError(f"reward_function_version must be 'v1' or 'v2', got {reward_function_version!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}"
            )

        self.benchmark = benchmark
        self.env_name = env_name
        self.goals_per_env = goals_per_env
        self.goal_seed = goal_seed
        self.reward_function_version = reward_function_version
        self.terminate_on_success = bool(terminate_on_success)
        self.render_mode = render_mode
        self.env_names: dict[str, tuple[str, ...]] = {"train": train_names, "test": test_names}
        self._env_classes: dict[str, type[SawyerXYZEnv]] = {
            name: all_envs[name] for name in (*train_names, *test_names)
        }
        self._mw_task_cls = _MWTask
        self._envs: dict[str, SawyerXYZEnv] = {}  # one instance per env name, for stepping
        self._goal_envs: dict[str, SawyerXYZEnv] = {}  # one per env name, only to draw goals
        self._env: SawyerXYZEnv | None = None
        self._needs_reset = True

        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self._init_task()
        assert self._env is not None
        inner_space = self._env.observation_space
        self.observation_space = gym.spaces.Box(
            low=np.asarray(inner_space.low, dtype=np.float64),
            high=np.asarray(inner_space.high, dtype=np.float64),
            dtype=np.float64,
        )

    # -- tasks -------------------------------------------------------------------------------------

    def sample_tasks(self, n: int, *, split: str = "train", seed: int | None = None) -> list[Task]:
        """Draw ``n`` tasks from the benchmark's ``split`` set (see *Task distribution*).

        The draw is without replacement until all ``len(envs) × goals_per_env`` tasks of the split
        have been used, then starts over with a fresh permutation. ``seed`` follows
        :class:`TaskFamily`: the same ``(n, split, seed)`` gives the same list; ``seed=None`` means
        seed 0 for ``"test"`` and the environment's ``np_random`` for ``"train"``.
        """
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
        if seed is None and split == "train":
            rng = self.np_random
        else:
            rng = split_rng(0 if seed is None else seed, split)
        return list(self._draw_tasks(int(n), split, rng))

    def _draw_task(self, rng: np.random.Generator) -> Task:
        return self._draw_tasks(1, "train", rng)[0]

    def _draw_tasks(self, n: int, split: str, rng: np.random.Generator) -> list[MetaWorldTask]:
        names = self.env_names[split]
        pool = len(names) * self.goals_per_env
        picks: list[int] = []
        while len(picks) < n:
            picks.extend(int(i) for i in rng.permutation(pool)[: n - len(picks)])
        tasks = []
        for pick in picks:
            name, index = names[pick // self.goals_per_env], pick % self.goals_per_env
            tasks.append(MetaWorldTask(name, split, index, self._goal(name, split, index)))
        return tasks

    def _goal(self, env_name: str, split: str, index: int) -> tuple[float, ...]:
        """The ``index``-th goal configuration of ``env_name`` in ``split`` (pure in its arguments).

        Drawn by one reset of a dedicated instance in Meta-World's seeded mode, with a generator
        seeded by ``(goal_seed, env name, split, index)``, so that the environment's own rejection
        loop applies. The stepping instance is never used: sampling never disturbs a running
        episode.
        """
        key = (env_name, split, index, self.goal_seed)
        goal = _GOAL_CACHE.get(key)
        if goal is None:
            env = self._goal_envs.get(env_name)
            if env is None:
                env = self._env_classes[env_name](reward_function_version=self.reward_function_version)
                env._set_task_called = True  # Meta-World refuses to reset before its set_task.
                env._freeze_rand_vec = False
                env.seeded_rand_vec = True  # draw from env.np_random, not the global np.random
                self._goal_envs[env_name] = env
            stream = zlib.crc32(f"{env_name}/{split}".encode())
            env.np_random = np.random.default_rng([self.goal_seed, stream, index])
            env.reset()
            assert env._last_rand_vec is not None
            goal = tuple(float(x) for x in env._last_rand_vec)
            _GOAL_CACHE[key] = goal
        return goal

    def set_task(self, task: Task) -> None:
        """Set the task after checking it is one of this benchmark's tasks; ``reset()`` next."""
        if isinstance(task, MetaWorldTask):
            self._validate(task)
        super().set_task(task)

    def _validate(self, task: MetaWorldTask) -> None:
        where = f"{type(self).__name__}({self.benchmark})"
        if task.env_name not in self.env_names[task.split]:
            raise ValueError(
                f"{where}: {task.env_name!r} is not a {task.split} environment of "
                f"{self.benchmark}; {task.split} environments: {list(self.env_names[task.split])}"
            )
        if not 0 <= task.index < self.goals_per_env:
            raise ValueError(f"{where}: task index {task.index} out of range [0, {self.goals_per_env})")
        expected = self._goal(task.env_name, task.split, task.index)
        if task.rand_vec != expected:
            raise ValueError(
                f"{where}: rand_vec {task.rand_vec} is not {task.split} configuration "
                f"{task.index} of {task.env_name!r} (goal_seed={self.goal_seed} gives {expected}); "
                "use sample_tasks() or a task saved from an environment with the same goal_seed"
            )

    def _on_task_changed(self) -> None:
        task = self._task
        assert isinstance(task, MetaWorldTask)
        env = self._envs.get(task.env_name)
        if env is None:
            env = self._env_classes[task.env_name](
                reward_function_version=self.reward_function_version, render_mode=self.render_mode
            )
            self._envs[task.env_name] = env
        data = {
            "env_cls": self._env_classes[task.env_name],
            "rand_vec": np.asarray(task.rand_vec, dtype=np.float64),
            "partially_observable": True,  # the ML benchmarks hide the goal
        }
        env.set_task(self._mw_task_cls(env_name=task.env_name, data=pickle.dumps(data)))
        self._env = env
        self._needs_reset = True

    # -- gymnasium API -----------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._reset_task(options)
        assert self._env is not None
        obs, info = self._env.reset()
        self._needs_reset = False
        return np.asarray(obs, dtype=np.float64), dict(info)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._needs_reset or self._env is None:
            raise RuntimeError(
                f"{type(self).__name__}: call reset() before step() (and after every set_task)"
            )
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (4,):
            raise ValueError(f"action must have shape (4,), got {action.shape}")
        action = np.clip(action, -1.0, 1.0)
        obs, reward, terminated, truncated, info = self._env.step(action)
        if self.terminate_on_success and info.get("success", 0.0) >= 1.0:
            terminated = True
        if terminated or truncated:
            self._needs_reset = True
        return (
            np.asarray(obs, dtype=np.float64),
            float(reward),
            bool(terminated),
            bool(truncated),
            info,
        )

    def render(self) -> Any:
        if self._env is None:
            raise RuntimeError("no Meta-World environment has been built yet")
        return self._env.render()

    def close(self) -> None:
        for env in (*self._envs.values(), *self._goal_envs.values()):
            env.close()
        self._envs.clear()
        self._goal_envs.clear()
        self._env = None
        super().close()

    @property
    def active_env_names(self) -> tuple[str, ...]:
        """Names of the Meta-World environments built so far for stepping."""
        return tuple(self._envs)
