"""Single-task PPO baselines of the paradigm comparison: learning from scratch, transfer, oracle.

Every baseline here is Stable-Baselines3's PPO (Schulman et al. 2017, "Proximal Policy Optimization
Algorithms", arXiv:1707.06347) trained on *one* task of a task family at a time (``envs/base.py``):

- **from scratch**: :func:`ppo_curves` with ``init=None`` trains a freshly initialised agent per task;
- **transfer**: :func:`pretrain` trains one agent on the training distribution (every episode draws a task
  from ``train_tasks``), then :func:`ppo_curves` with ``init=`` fine-tunes a copy of it on each task in one
  of the three ways of the transfer paradigm (``PPOBaselineConfig.finetune``):

  - ``"full"``: every parameter trained from its pretrained value;
  - ``"head"``: the pretrained features (``mlp_extractor``, and the features extractor when it has
    parameters) frozen; only the output heads ``action_net``, ``value_net`` (and ``log_std`` of Gaussian
    policies) trained;
  - ``"regularized"``: trained on ``L = λ·L_pretrain + (1 − λ)·L_target``, with ``L_target`` SB3's PPO loss on
    the task and ``L_pretrain`` the distillation loss ``mean_s KL(π_pretrained(·|s) ‖ π_θ(·|s))`` over
    states ``s`` visited during pretraining (:attr:`Pretrained.replay_obs`).

- **oracle**: the same curves given a budget large enough to solve each task (the caller picks it).

Curves are measured in environment steps: at each budget the agent's stochastic policy is evaluated for a
number of episodes on a separate environment with the same task (:func:`evaluate`).

How the regularized loss reaches SB3's update without copying ``PPO.train()``: the policy's optimizer is
replaced (after construction and loading of the pretrained weights) by :class:`DistillationAdam`, whose
``step()`` first turns the gradient SB3 just back-propagated, ``g = ∇L_target``, into
``(1 − λ)·g + λ·∇KL`` (the KL and its gradient are computed on all replay states against the pretrained
policy's action distributions, recorded once at construction), then takes Adam's step. SB3 clips ``g`` to
``max_grad_norm`` (0.5) before ``step()`` sees it, as in any SB3 PPO run; the KL term is not clipped.
Adam normalises each parameter's gradient, so the ``(1 − λ)`` factor alone changes little for parameters
the KL does not reach (the value network); λ trades the two losses off where both have gradients.

Randomness: each task's agent is seeded from ``(seed, task index)``; evaluation draws its actions from its
own torch generator and its environment seeds from ``(seed, task index)`` too, the same at every budget
(common random numbers across budgets). SB3 re-seeds the global ``random``/numpy/torch generators; they are
restored afterwards (the CPU ones; on CUDA SB3 also seeds the CUDA generator, which is left as it is).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.vec_env import DummyVecEnv
from tqdm import tqdm

from envs.base import Task
from metarl.checks import at_least, positive

FinetuneMode = Literal["full", "head", "regularized"]
FINETUNE_MODES: tuple[str, ...] = ("full", "head", "regularized")

#: At most this many evaluation environments are stepped side by side (one policy forward for all).
EVAL_PARALLEL = 32

# Salts that make the seed streams of pretraining's agent, its task draws and its replay subsample distinct.
_PRETRAIN_SALTS = (0x50A1, 0x50A2, 0x50A3)


@dataclasses.dataclass(frozen=True)
class PPOBaselineConfig:
    """SB3 PPO hyperparameters and the fine-tuning mode of the transfer baseline.

    ``n_steps`` is the rollout length of one PPO update (one environment), so every step budget must be a
    multiple of it. ``batch_size`` must divide ``n_steps`` (no truncated mini-batch). ``hidden_sizes`` are
    the layers of both the policy and the value network (separate networks, SB3's default for PPO).
    """

    n_steps: int = 500
    batch_size: int = 100
    n_epochs: int = 10
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    hidden_sizes: tuple[int, ...] = (64, 64)
    finetune: FinetuneMode = "full"
    reg_lambda: float = 0.5
    replay_states: int = 1000

    def __post_init__(self) -> None:
        for name in ("n_steps", "batch_size", "n_epochs", "replay_states"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        at_least(self, 2, "n_steps", "batch_size")
        positive(self, "n_epochs", "learning_rate", "clip_range", "replay_states")
        if self.n_steps % self.batch_size:
            raise ValueError(
                f"batch_size must divide n_steps, got batch_size={self.batch_size}, n_steps={self.n_steps}"
            )
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in (0, 1], got {self.gamma}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda must lie in [0, 1], got {self.gae_lambda}")
        at_least(self, 0, "ent_coef")
        sizes = tuple(self.hidden_sizes)
        if not all(isinstance(h, int | np.integer) and not isinstance(h, bool) and h > 0 for h in sizes):
            raise ValueError(f"hidden_sizes must be positive integers, got {self.hidden_sizes!r}")
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in sizes))
        if self.finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {list(FINETUNE_MODES)}, got {self.finetune!r}")
        if not 0.0 <= self.reg_lambda < 1.0:
            raise ValueError(f"reg_lambda must lie in [0, 1), got {self.reg_lambda}")


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A policy pretrained on the training distribution.

    ``state_dict``: the SB3 policy's parameters (CPU tensors); ``replay_obs``: ``[N, *obs_shape]``
    observations visited during pretraining, a uniform subsample without replacement of all of them.
    """

    state_dict: dict[str, torch.Tensor]
    replay_obs: np.ndarray


class TaskDistributionWrapper(gym.Wrapper):
    """Each ``reset`` draws a task uniformly from ``tasks`` with ``rng``; passes it as ``options["task"]``."""

    def __init__(self, env: gym.Env, tasks: Sequence[Task], rng: np.random.Generator) -> None:
        super().__init__(env)
        if len(tasks) == 0:
            raise ValueError("TaskDistributionWrapper needs at least one task")
        self.tasks = list(tasks)
        self.rng = rng

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        task = self.tasks[int(self.rng.integers(len(self.tasks)))]
        return self.env.reset(seed=seed, options={**(options or {}), "task": task})


def action_distribution(policy: BasePolicy, obs: torch.Tensor) -> torch.distributions.Distribution:
    """The torch distribution of ``policy``'s actions at the (already tensorised) observations ``obs``."""
    return policy.get_distribution(obs).distribution


def mean_kl(
    reference: torch.distributions.Distribution, current: torch.distributions.Distribution
) -> torch.Tensor:
    """``mean_s KL(reference(·|s) ‖ current(·|s))``; per-dimension KLs of diagonal Gaussians are summed."""
    kl = torch.distributions.kl_divergence(reference, current)
    return kl.reshape(kl.shape[0], -1).sum(-1).mean()


class DistillationAdam(torch.optim.Adam):
    """Adam on ``λ·mean_s KL(π_ref(·|s) ‖ π_θ(·|s)) + (1 − λ)·L`` where ``∇L`` is already in ``.grad``.

    ``π_ref`` is ``policy`` as it is when the optimizer is built (its action distributions on
    ``replay_obs`` are recorded then); :meth:`step` calls :meth:`mix_gradients` and then Adam's step.
    """

    def __init__(
        self,
        params: Any,
        lr: float,
        *,
        policy: BasePolicy,
        replay_obs: np.ndarray,
        reg_lambda: float,
        **adam_kwargs: Any,
    ) -> None:
        super().__init__(params, lr=lr, **adam_kwargs)
        if not 0.0 <= reg_lambda < 1.0:
            raise ValueError(f"reg_lambda must lie in [0, 1), got {reg_lambda}")
        if len(replay_obs) == 0:
            raise ValueError("DistillationAdam needs at least one replay observation")
        self.policy = policy
        self.reg_lambda = float(reg_lambda)
        self.replay_obs, _ = policy.obs_to_tensor(np.asarray(replay_obs))
        with torch.no_grad():
            self.reference = action_distribution(policy, self.replay_obs)

    def regularizer(self) -> torch.Tensor:
        """``L_pretrain``: the mean KL from the reference policy to the current one over the replay states."""
        return mean_kl(self.reference, action_distribution(self.policy, self.replay_obs))

    def mix_gradients(self) -> None:
        """``.grad ← (1 − λ)·.grad + λ·∇L_pretrain`` for every parameter the optimizer trains."""
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        with torch.enable_grad():
            grads = torch.autograd.grad(self.regularizer(), params, allow_unused=True)
        lam = self.reg_lambda
        for param, grad in zip(params, grads, strict=True):
            if param.grad is not None:
                param.grad.mul_(1.0 - lam)
            if grad is not None:
                if param.grad is None:
                    param.grad = lam * grad
                else:
                    param.grad.add_(grad, alpha=lam)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        self.mix_gradients()
        return super().step(closure)


def kl_from_pretrained(policy: ActorCriticPolicy, init: Pretrained) -> float:
    """``mean_s KL(π_pretrained(·|s) ‖ π(·|s))`` over ``init.replay_obs``: how far ``policy`` has drifted."""
    # A fresh policy of the same construction (what SB3's own ``BasePolicy.save``/``load`` do); deepcopy
    # would trip over the graph-attached distribution SB3 caches from the last forward pass.
    reference = type(policy)(**policy._get_constructor_parameters()).to(policy.device)
    reference.load_state_dict(init.state_dict)
    obs, _ = policy.obs_to_tensor(np.asarray(init.replay_obs))
    with torch.no_grad():
        return float(mean_kl(action_distribution(reference, obs), action_distribution(policy, obs)))


def make_ppo(
    env: gym.Env,
    config: PPOBaselineConfig,
    *,
    seed: int,
    init: Pretrained | None = None,
    device: str | torch.device = "cpu",
) -> PPO:
    """The PPO agent on ``env`` (in a one-env ``DummyVecEnv``), seeded with ``seed``.

    With ``init`` the policy starts from the pretrained parameters and is set up for ``config.finetune``:
    ``"head"`` freezes the feature layers and rebuilds the optimizer over the heads only; ``"regularized"``
    replaces the optimizer by a :class:`DistillationAdam` around the pretrained policy.
    """
    model = PPO(
        "MlpPolicy",
        DummyVecEnv([lambda: env]),
        learning_rate=config.learning_rate,
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=config.n_epochs,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        clip_range=config.clip_range,
        ent_coef=config.ent_coef,
        policy_kwargs={"net_arch": list(config.hidden_sizes)},
        seed=int(seed),
        device=device,
        verbose=0,
    )
    if init is None:
        return model
    policy = model.policy
    policy.load_state_dict(init.state_dict)
    if config.finetune == "head":
        for name in ("mlp_extractor", "features_extractor", "pi_features_extractor", "vf_features_extractor"):
            module = getattr(policy, name, None)
            if module is not None:
                module.requires_grad_(False)
        heads = [p for p in policy.parameters() if p.requires_grad]
        policy.optimizer = policy.optimizer_class(heads, lr=config.learning_rate, **policy.optimizer_kwargs)
    elif config.finetune == "regularized":
        if not isinstance(env.action_space, gym.spaces.Discrete | gym.spaces.Box):
            raise ValueError(
                f"finetune='regularized' supports Discrete and Box action spaces, got {env.action_space}"
            )
        policy.optimizer = DistillationAdam(
            policy.parameters(),
            lr=config.learning_rate,
            policy=policy,
            replay_obs=init.replay_obs,
            reg_lambda=config.reg_lambda,
            **policy.optimizer_kwargs,
        )
    return model


def evaluate(policy: BasePolicy, envs: Sequence[gym.Env], task: Task, *, episodes: int, seed: int) -> float:
    """Mean undiscounted return of ``episodes`` episodes of ``policy``'s stochastic actions on ``task``.

    The episodes run ``len(envs)`` at a time (one batched policy call per step). Episode ``e`` resets its
    env with the ``e``-th seed drawn from ``seed``, and actions are sampled from a torch generator seeded
    with ``seed`` (the global torch RNG is left as it was), so the result depends only on the policy,
    the task and ``seed``.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be > 0, got {episodes}")
    if len(envs) == 0:
        raise ValueError("evaluate needs at least one env")
    reset_seeds = np.random.SeedSequence(int(seed)).generate_state(episodes)
    returns = np.zeros(episodes, dtype=np.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for start in range(0, episodes, len(envs)):
            batch = envs[: min(len(envs), episodes - start)]
            seeds = reset_seeds[start : start + len(batch)]
            obs = np.stack(
                [
                    env.reset(seed=int(s), options={"task": task})[0]
                    for env, s in zip(batch, seeds, strict=True)
                ]
            )
            active = np.ones(len(batch), dtype=bool)
            while active.any():
                live = np.flatnonzero(active)
                actions, _ = policy.predict(obs[live], deterministic=False)
                for j, action in zip(live, actions, strict=True):
                    obs[j], reward, terminated, truncated, _ = batch[j].step(action)
                    returns[start + j] += float(reward)
                    active[j] = not (terminated or truncated)
    return float(returns.mean())


def _derived_seed(seed: int, salt: int) -> int:
    """A 32-bit seed (what SB3 and ``np.random.seed`` accept) derived from ``(seed, salt)``."""
    return int(np.random.SeedSequence([int(seed), salt]).generate_state(1)[0])


def task_seeds(seed: int, index: int) -> tuple[int, int]:
    """``(agent seed, evaluation seed)`` of the task at ``index`` of a :func:`ppo_curves` call."""
    agent, evaluation = np.random.SeedSequence([int(seed), int(index)]).generate_state(2)
    return int(agent), int(evaluation)


@contextlib.contextmanager
def _global_rngs_restored() -> Iterator[None]:
    """Restore Python's, numpy's and torch's (CPU) global generators after the block (SB3 re-seeds them)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _check_steps(steps: int, n_steps: int, what: str) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {steps!r}")
    if steps % n_steps:
        raise ValueError(
            f"{what} {steps} is not a multiple of n_steps={n_steps} (SB3's PPO collects whole rollouts)"
        )
    return int(steps)


class _ReplayCollector(BaseCallback):
    """Keeps the observations of pretraining at pre-drawn step indices (a uniform subsample) and shows
    progress. Reads each rollout from the rollout buffer once it is complete."""

    def __init__(self, total: int, keep: int, rng: np.random.Generator, progress: bool) -> None:
        super().__init__(verbose=0)
        self.keep = np.sort(rng.choice(total, size=min(keep, total), replace=False))
        self.seen = 0
        self.kept: list[np.ndarray] = []
        self.bar = tqdm(total=total, desc="pretrain", unit="step", disable=not progress, dynamic_ncols=True)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        space = self.model.observation_space
        rollout = self.model.rollout_buffer.observations.reshape(-1, *space.shape)
        lo, hi = np.searchsorted(self.keep, [self.seen, self.seen + len(rollout)])
        self.kept.append(rollout[self.keep[lo:hi] - self.seen].copy())
        self.seen += len(rollout)
        self.bar.update(len(rollout))

    def _on_training_end(self) -> None:
        self.bar.close()

    def replay_obs(self) -> np.ndarray:
        return np.concatenate(self.kept).astype(self.model.observation_space.dtype, copy=False)


def pretrain(
    make_env: Callable[[], gym.Env],
    train_tasks: Sequence[Task],
    steps: int,
    config: PPOBaselineConfig,
    *,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Pretrained:
    """Train one PPO policy for ``steps`` env steps on the training distribution (each episode's task drawn
    uniformly from ``train_tasks``) and keep up to ``config.replay_states`` of the states it visited."""
    steps = _check_steps(steps, config.n_steps, "steps")
    if steps == 0:
        raise ValueError("steps must be > 0, got 0")
    env = make_env()
    if not isinstance(env.observation_space, gym.spaces.Box | gym.spaces.Discrete | gym.spaces.MultiBinary):
        raise ValueError(f"pretrain supports array observations, got {env.observation_space}")
    agent_seed, task_seed, replay_seed = (_derived_seed(seed, salt) for salt in _PRETRAIN_SALTS)
    wrapped = TaskDistributionWrapper(env, train_tasks, np.random.default_rng(task_seed))
    collector = _ReplayCollector(steps, config.replay_states, np.random.default_rng(replay_seed), progress)
    with _global_rngs_restored():
        model = make_ppo(wrapped, config, seed=agent_seed, device=device)
        try:
            model.learn(total_timesteps=steps, callback=collector)
        finally:
            model.env.close()
    if model.num_timesteps != steps:
        raise RuntimeError(f"PPO took {model.num_timesteps} steps instead of {steps}")
    state = {name: tensor.detach().cpu().clone() for name, tensor in model.policy.state_dict().items()}
    return Pretrained(state_dict=state, replay_obs=collector.replay_obs())


def ppo_curves(
    make_env: Callable[[], gym.Env],
    tasks: Sequence[Task],
    budgets: Sequence[int],
    config: PPOBaselineConfig,
    *,
    eval_episodes: int,
    seed: int,
    init: Pretrained | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    first_index: int = 0,
) -> np.ndarray:
    """``[len(budgets), len(tasks)]`` mean returns of PPO trained on each task alone for each step budget.

    For every task a PPO agent (fresh when ``init`` is None, else started from ``init`` and fine-tuned as
    ``config.finetune`` says) trains on that task only, and is evaluated (:func:`evaluate`,
    ``eval_episodes`` episodes of its stochastic policy on a separate env with the same task) when its env
    step count reaches each budget; budget 0 evaluates it before any training. ``budgets`` must be
    non-decreasing multiples of ``config.n_steps``.
    Evaluation runs ``min(eval_episodes, EVAL_PARALLEL)`` episodes side by side, so the sampled actions
    (and the exact numbers) depend on that constant. Task ``i`` draws its seeds from ``(seed, first_index +
    i)``: a share of a longer task list (a rank's, ``metarl compare --nproc``) passes its offset in it and
    gets the numbers the whole list gives.
    """
    budgets = [_check_steps(b, config.n_steps, "budget") for b in budgets]
    if not budgets:
        raise ValueError("budgets must not be empty")
    if np.any(np.diff(budgets) < 0):
        raise ValueError(f"budgets must be sorted ascending, got {budgets}")
    if (
        isinstance(eval_episodes, bool)
        or not isinstance(eval_episodes, int | np.integer)
        or eval_episodes < 1
    ):
        raise ValueError(f"eval_episodes must be a positive integer, got {eval_episodes!r}")
    curves = np.empty((len(budgets), len(tasks)), dtype=np.float64)
    for index, task in enumerate(tqdm(tasks, desc="ppo tasks", unit="task", disable=not progress)):
        curves[:, index] = _task_curve(
            make_env,
            task,
            budgets,
            config,
            eval_episodes=int(eval_episodes),
            seeds=task_seeds(seed, first_index + index),
            init=init,
            device=device,
        )
    return curves


def _task_curve(
    make_env: Callable[[], gym.Env],
    task: Task,
    budgets: list[int],
    config: PPOBaselineConfig,
    *,
    eval_episodes: int,
    seeds: tuple[int, int],
    init: Pretrained | None,
    device: str | torch.device,
) -> np.ndarray:
    """One task's column of :func:`ppo_curves`."""
    agent_seed, eval_seed = seeds
    env = make_env()
    env.unwrapped.set_task(task)
    eval_envs = [make_env() for _ in range(min(eval_episodes, EVAL_PARALLEL))]
    curve = np.empty(len(budgets), dtype=np.float64)
    try:
        with _global_rngs_restored():
            model = make_ppo(env, config, seed=agent_seed, init=init, device=device)
            for j, budget in enumerate(budgets):
                if budget > model.num_timesteps:
                    model.learn(total_timesteps=budget - model.num_timesteps, reset_num_timesteps=False)
                if model.num_timesteps != budget:
                    raise RuntimeError(f"PPO is at {model.num_timesteps} env steps, expected budget {budget}")
                curve[j] = evaluate(model.policy, eval_envs, task, episodes=eval_episodes, seed=eval_seed)
    finally:
        env.close()
        for eval_env in eval_envs:
            eval_env.close()
    return curve
