"""RL²: a recurrent policy whose hidden state is the fast learner, trained by PPO over whole trials.

Duan, Schulman, Chen, Bartlett, Sutskever & Abbeel (2016), "RL²: Fast Reinforcement Learning via Slow
Reinforcement Learning", arXiv:1611.02779. A *trial* is ``n`` episodes of one task (one MDP, one bandit).
A GRU reads, at every step, ``x_t = (o_t, a_{t−1}, r_{t−1}, d_t)`` — the observation, the previous action
(one-hot for discrete actions, the executed action for continuous ones), the previous reward and a flag
``d_t = 1`` on the first step of every episode after the first — and outputs a policy and a value. Its
hidden state is carried across the episodes of a trial and reset to zero between trials, so whatever the
network learns to store in it is a learning algorithm; the (slow) outer loop maximises the trial's total
reward ``Σ_{episodes} Σ_t r_t``:

1. roll out ``meta_batch_size × trials_per_task`` trials at once on the family's batched torch (bandit,
   tabular MDP) or MuJoCo (locomotion) environment, from a zero hidden state;
2. advantages by GAE(γ, λ) along the *trial*: the bootstrap runs through episode ends inside a trial (the
   next episode's first value) and stops only at the trial's end (:func:`metarl.losses.trial_gae`);
3. PPO (Schulman et al. 2017, arXiv:1707.06347): ``ppo_epochs`` passes of ``num_minibatches`` minibatches
   of whole trials, the GRU re-run over each trial from its zero initial state, minimising
   ``clip surrogate + c_v·value loss − c_e·entropy`` (:func:`metarl.losses.ppo_losses`), the value head
   regressing on λ-returns normalised by running statistics (``normalize_values``; trial returns reach
   the hundreds).

``init_from`` starts from another run's network (a curriculum over trial lengths, e.g. n = 10 → 100 pulls).

The meta-learner interface maps onto a trial (``metarl.core``): ``initial`` is a zero hidden state per
trial; ``support(tasks, state, k)`` runs the next *segment* of the trial from ``state`` and returns its data
and the state after it; ``adapt`` carries that state; ``evaluate`` is the mean return of one more segment
run from ``state`` **without advancing it** (a counterfactual continuation with its own random numbers), so
``meta_test/return_step_k`` is the return of segment ``k`` after ``k`` segments of experience. A segment is
one episode (``segments_per_episode = 1``). A bandit trial is one gymnasium episode of ``n`` pulls, so for
bandits ``segments_per_episode`` cuts it into equal chunks of pulls (e.g. 10 chunks of 10 pulls for
``n = 100``): the adaptation curve is then the reward per chunk of pulls, and a bandit's pulls depend only
on the hidden state, so chunking changes nothing else (the episode flag stays 0 at chunk boundaries).
Evaluation draws from a generator reseeded at every ``initial`` (the same random numbers at every
evaluation, none taken from training's stream). The paper's tables report :meth:`RL2.trial_returns`.

Logged metrics (TensorBoard tags, x-axis = environment steps):

- ``meta_train/return_pre_adapt``: mean return of the first segment of the training trials.
- ``meta_train/return_post_adapt``: mean return of the last segment of the training trials.
- ``meta_train/trial_return``: mean total reward of a training trial (the objective; RL² Tables 1–2).
- ``losses/policy_loss``: PPO's clipped surrogate (to minimise), mean over the last epoch's minibatches.
- ``losses/value_loss``: ``½ (V − R^λ)²`` over valid steps, same averaging (in normalised units with
  ``normalize_values``: ``½ (v − (R^λ − m)/σ)²``).
- ``losses/entropy``: mean policy entropy, same averaging.
- ``losses/approx_kl``: ``E[(ρ − 1) − log ρ]`` (Schulman's low-variance KL estimator), last epoch.
- ``losses/clip_fraction``: fraction of steps whose ratio left ``[1 − ε, 1 + ε]``, last epoch.
- ``losses/explained_variance``: ``1 − Var(R^λ − V) / Var(R^λ)`` of the rollout values.
- ``time/rollout_s``: sampling the trials; ``time/update_s``: the PPO epochs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from envs.bandit import BernoulliBanditEnv
from envs.base import Task
from metarl import checkpoint, checks, distributed, fused_gru, losses
from metarl.core import MetaLearner
from metarl.errors import ConfigError
from metarl.families import FamilyTaskSampler, env_factory, horizon_of
from metarl.rollouts import BatchedFamily
from metarl.seeding import seeded

#: the evaluation generator is seeded ``run seed + EVAL_SEED_OFFSET`` (by ``initial``): apart from training's
EVAL_SEED_OFFSET = 1_000_003


@dataclasses.dataclass(frozen=True)
class RL2Config:
    """Hyperparameters of RL²-PPO; sources in REFERENCE.md §2 (garage ``RL2PPO``, lucaslingle/pytorch_rl2).

    Attributes:
        meta_batch_size: tasks per iteration (one trial each by default). lucaslingle collects ~240k steps
            per update; 1000 trials (10k steps for ``n = 10`` bandits, 100k for MDPs ``n = 10``) fit a CPU.
        trials_per_task: parallel trials of every task per iteration.
        episodes_per_trial: ``n``, episodes of one task in a trial (RL² Table 2: 10, 25, 50, 75, 100). A
            bandit trial is one episode of ``n`` pulls: ``n`` is the family's ``num_pulls`` and this is 1.
        segments_per_episode: adaptation segments per episode (the unit of ``support``/``evaluate``): 1
            (one segment = one episode) or, for bandits only, the number of equal chunks of pulls.
        hidden_size: GRU units (256: lucaslingle/pytorch_rl2; garage uses 64).
        value_network: ``"separate"``: the value function has its own GRU of ``hidden_size`` units reading
            the same inputs (the paper's setup and lucaslingle/pytorch_rl2's), so the value loss's gradient
            never reaches the policy's parameters; ``"shared"``: one GRU feeds both heads (garage's
            ``RL2PPO``, metarl's default before session 12), which lets the value loss take most of the
            clipped gradient once trial returns are large. ``"separate"`` is the default since it won the
            long-budget comparison wherever it was run (``experiments/rl2_report.md``, sessions 6–7, with
            ``gae_lambda = 0.95``, at 1000 iterations of n = 100 bandits: +4.0 at k = 10 on validation
            instances, +4.4 at k = 50); on MDPs n = 10 the two tie (128.8 vs 129.1).
        lr: Adam step size (2e-4: lucaslingle).
        ppo_epochs: passes over the trials per iteration (4: CleanRL ``update_epochs``).
        num_minibatches: minibatches of whole trials per pass (4: CleanRL).
        clip: PPO clip range ε (0.1: lucaslingle; garage 0.2).
        gamma: discount per step along the trial (0.99: garage, lucaslingle).
        gae_lambda: GAE λ (0.3: lucaslingle for bandits/MDPs; garage 0.95).
        entropy_coef: entropy bonus c_e (0.01: garage, lucaslingle).
        value_coef: value-loss coefficient c_v (0.5: CleanRL).
        max_grad_norm: global gradient-norm clip (0.5: CleanRL).
        normalize_advantages: standardise advantages over the iteration's valid steps (CleanRL).
        normalize_values: the value head predicts ``(V − m) / σ`` with ``m, σ`` running (debiased exponential)
            statistics of the λ-returns (MAPPO's ValueNorm, Yu et al. 2021, arXiv:2103.01955). Trial returns
            grow with ``n`` (≈ 50–150 here), and without it the value loss dominates the shared GRU's clipped
            gradient so much that the policy barely moves.
        value_norm_decay: decay of those running statistics per iteration.
        init_log_std: initial log standard deviation of the Gaussian policy (continuous actions; 0).
        eval_trials_per_task: trials per held-out task at evaluation (their mean is the task's value).
        init_from: a checkpoint (``.pt``) or run directory of an RL² run with the same input and action sizes
            whose network initialises this one — a curriculum over trial lengths, e.g. bandits n = 10 →
            n = 100; empty: a fresh initialisation. Only the network is taken (not the optimiser).
        fused_gru: on the CPU, run the GRUs with metarl's fused kernel (:mod:`metarl.fused_gru`; equal to
            ``torch.nn.GRU`` to float rounding, ~1.7× faster forward + backward at the bandit presets'
            shape); ``false``: ``torch.nn.GRU`` (the runs before session 7). CUDA always uses ``nn.GRU``.
    """

    meta_batch_size: int = 1000
    trials_per_task: int = 1
    episodes_per_trial: int = 10
    segments_per_episode: int = 1
    hidden_size: int = 256
    value_network: Literal["shared", "separate"] = "separate"
    lr: float = 2e-4
    ppo_epochs: int = 4
    num_minibatches: int = 4
    clip: float = 0.1
    gamma: float = 0.99
    gae_lambda: float = 0.3
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    max_grad_norm: float = 0.5
    normalize_advantages: bool = True
    normalize_values: bool = True
    value_norm_decay: float = 0.9
    init_log_std: float = 0.0
    eval_trials_per_task: int = 1
    init_from: str = ""
    fused_gru: bool = True

    def __post_init__(self) -> None:
        positive = (
            "meta_batch_size",
            "trials_per_task",
            "episodes_per_trial",
            "segments_per_episode",
            "hidden_size",
            "lr",
            "ppo_epochs",
            "num_minibatches",
            "clip",
            "max_grad_norm",
            "eval_trials_per_task",
        )
        checks.positive(self, *positive)
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0 <= self.value_norm_decay < 1:
            raise ValueError(f"value_norm_decay must be in [0, 1), got {self.value_norm_decay}")
        if not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        checks.at_least(self, 0, "entropy_coef", "value_coef")
        if self.value_network not in ("shared", "separate"):
            raise ValueError(f"value_network must be 'shared' or 'separate', got {self.value_network!r}")
        if self.num_minibatches > self.meta_batch_size * self.trials_per_task:
            raise ValueError(
                f"num_minibatches ({self.num_minibatches}) exceeds the trials per iteration "
                f"({self.meta_batch_size * self.trials_per_task})"
            )

    @property
    def segments_per_trial(self) -> int:
        return self.episodes_per_trial * self.segments_per_episode


# ---------------------------------------------------------------------------------------------- network


class RL2Network(nn.Module):
    """GRU → (policy head, value head). Discrete: logits; continuous: Gaussian mean and a learned log σ.

    Args:
        input_dim: size of the RL² input ``(o_t, a_{t−1}, r_{t−1}, d_t)``.
        hidden_size: units of each GRU.
        action_dim: actions (discrete) or action dimensions (continuous).
        discrete: categorical policy over ``action_dim`` actions, else a diagonal Gaussian.
        init_log_std: initial log σ of the Gaussian policy.
        separate_value: a second GRU (``value_gru``) feeds the value head, so the value loss's gradient
            never reaches the policy's GRU (:attr:`RL2Config.value_network`). The recurrent state is then
            the concatenation ``[h_policy, h_value]`` (:attr:`state_size` ``= 2·hidden_size``).
        fused: run the GRUs with the fused CPU kernel of :mod:`metarl.fused_gru`
            (:attr:`RL2Config.fused_gru`).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_size: int,
        action_dim: int,
        discrete: bool,
        init_log_std: float,
        separate_value: bool = False,
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.gru = nn.GRU(input_dim, hidden_size)
        self.policy_head = nn.Linear(hidden_size, action_dim)
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.orthogonal_(self.policy_head.weight, gain=0.01)  # CleanRL's head initialisation
        nn.init.zeros_(self.policy_head.bias)
        nn.init.orthogonal_(self.value_head.weight, gain=1.0)
        nn.init.zeros_(self.value_head.bias)
        self.discrete = discrete
        self.log_std = None if discrete else nn.Parameter(torch.full((action_dim,), init_log_std))
        # created last, so that a shared network draws exactly the initial weights it always did
        self.value_gru = nn.GRU(input_dim, hidden_size) if separate_value else None
        self.hidden_size = hidden_size
        self.state_size = hidden_size * (2 if separate_value else 1)
        self.fused = fused

    def forward(
        self, inputs: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``inputs [L, B, in]``, ``hidden [B, S]`` → ``(head [L, B, A], values [L, B], hidden [B, S])``
        with ``S`` = :attr:`state_size`. The GRUs run in :func:`metarl.fused_gru.gru_sequence` (one fused
        CPU kernel for both when :attr:`fused`, else ``nn.GRU``)."""
        layers = [self.gru] if self.value_gru is None else [self.gru, self.value_gru]
        rows = hidden.shape[0]
        h0 = hidden.reshape(rows, len(layers), self.hidden_size).transpose(0, 1)  # [G, B, H]
        out = fused_gru.gru_sequence(inputs, h0, layers, fused=self.fused)  # [G, L, B, H]
        state = out[:, -1].transpose(0, 1).reshape(rows, self.state_size)
        return self.policy_head(out[0]), self.value_head(out[-1]).squeeze(-1), state

    def log_prob_entropy(
        self, head: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``log π(a|x)`` and ``H(π(·|x))`` for ``head [..., A]`` and actions ``[...]`` / ``[..., A]``."""
        if self.discrete:
            logp = F.log_softmax(head, dim=-1)
            chosen = logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
            return chosen, -(logp.exp() * logp).sum(-1)
        log_std = self.log_std.expand_as(head)
        entropy = (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)
        return losses.gaussian_log_prob(head, log_std, actions), entropy

    def sample(self, head: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Actions from ``head [B, A]``: Gumbel-max for logits, reparameterised noise for Gaussians."""
        u = torch.rand(head.shape, generator=generator, device=head.device)
        if self.discrete:
            return (head - torch.log(-torch.log(u.clamp(1e-20, 1.0)))).argmax(-1)
        normal = torch.special.ndtri(u.clamp(1e-7, 1 - 1e-7))
        return head + self.log_std.exp() * normal


# ---------------------------------------------------------------------------------------------- data


class RL2State(NamedTuple):
    """Where a batch of trials stands between segments; rows are ``task × trial`` (``B = N·E``).

    ``segment`` counts the segments run so far (the next one starts a new episode, with ``d = 1``, when it
    is a positive multiple of ``segments_per_episode``).
    """

    hidden: torch.Tensor  # [B, S]: the GRUs' states (RL2Network.state_size)
    prev_action: torch.Tensor  # [B, A] one-hot or executed action
    prev_reward: torch.Tensor  # [B]
    segment: int


class Trajectory(NamedTuple):
    """Time-major data of consecutive segments of ``B`` trials, ``[L, B, …]``."""

    inputs: torch.Tensor  # [L, B, in]: (o_t, a_{t−1}, r_{t−1}, d_t)
    actions: torch.Tensor  # [L, B] (discrete) or [L, B, A]
    log_probs: torch.Tensor  # [L, B]
    values: torch.Tensor  # [L, B]
    rewards: torch.Tensor  # [L, B]
    mask: torch.Tensor  # [L, B]: 1 where the step happened (0 after a termination)


class Segment(NamedTuple):
    """What ``support`` returns: the segment's data and the state after it."""

    trajectory: Trajectory
    state: RL2State


# ---------------------------------------------------------------------------------------------- learner


class RL2(MetaLearner[Segment, RL2State]):
    """RL²-PPO over a task family with a batched environment (``family.make_batched``)."""

    metric_name = "return"
    higher_is_better = True

    @property
    def step_unit(self) -> str:
        return f"RL² segments of {self.segment_steps} steps (trial continues; hidden state carried)"

    def __init__(
        self,
        config: RL2Config,
        family: Any,
        horizon: int,
        device: torch.device,
        seed: int,
    ) -> None:
        if horizon % config.segments_per_episode:
            raise ValueError(
                f"segments_per_episode ({config.segments_per_episode}) must divide the horizon ({horizon})"
            )
        self.config = config
        self.family = family
        self.device = device
        self.seed = seed
        self.segment_steps = horizon // config.segments_per_episode
        obs_space, action_space = family.observation_space, family.action_space
        self.obs_dim = int(np.prod(obs_space.shape))
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            self.action_dim = int(action_space.n)
        elif isinstance(action_space, gym.spaces.Box):
            self.action_dim = int(np.prod(action_space.shape))
            self.action_low = torch.as_tensor(action_space.low, dtype=torch.float32, device=device)
            self.action_high = torch.as_tensor(action_space.high, dtype=torch.float32, device=device)
        else:
            raise ValueError(f"RL² supports Discrete and Box action spaces, got {action_space}")
        self.input_dim = self.obs_dim + self.action_dim + 2
        with seeded(seed):
            self.net = RL2Network(
                self.input_dim,
                config.hidden_size,
                self.action_dim,
                self.discrete,
                config.init_log_std,
                separate_value=config.value_network == "separate",
                fused=config.fused_gru,
            ).to(device)
        #: running ``(E[R], E[R²], weight)`` of the λ-returns (debiased EMA) for ``normalize_values``
        self.value_stats = torch.zeros(3, dtype=torch.float64)
        if config.init_from:
            source = _learner_state_of(config.init_from)
            # the value head predicts normalised values: its normaliser must come with it, or the first
            # updates regress on targets of another scale and the advantages are noise
            self.value_stats = source.get("value_stats", self.value_stats).clone()
            try:
                self.net.load_state_dict(source["net"])
            except RuntimeError as exc:
                reason = str(exc).strip().splitlines()[0]
                raise ConfigError(
                    f"algo.init_from {config.init_from!r}: a different network ({reason})"
                ) from None
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr, eps=1e-5)
        self.generator = torch.Generator(device=device)  # training actions, minibatch order, env seeds
        self.generator.manual_seed(seed)
        self.eval_generator = torch.Generator(device=device)  # reseeded by every `initial`

    # -- rollouts ------------------------------------------------------------------------------------
    def zero_state(self, rows: int) -> RL2State:
        """The start of ``rows`` trials: zero hidden state, no previous action or reward."""
        zeros = torch.zeros(rows, device=self.device)
        return RL2State(
            torch.zeros(rows, self.net.state_size, device=self.device),
            torch.zeros(rows, self.action_dim, device=self.device),
            zeros,
            0,
        )

    def _make_env(self, tasks: Sequence[Task], per_task: int, generator: torch.Generator) -> Any:
        env_seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        return self.family.make_batched(list(tasks), per_task, self.device, self.segment_steps, seed=env_seed)

    @torch.no_grad()
    def _rollout(
        self, env: Any, state: RL2State, segments: int, generator: torch.Generator
    ) -> tuple[Trajectory, RL2State]:
        """Run ``segments`` segments of every trial from ``state`` (one env episode reset per segment)."""
        rows, steps = state.hidden.shape[0], self.segment_steps
        length = segments * steps
        dev = self.device
        inputs = torch.empty(length, rows, self.input_dim, device=dev)
        actions = torch.empty(
            (length, rows) if self.discrete else (length, rows, self.action_dim),
            dtype=torch.long if self.discrete else torch.float32,
            device=dev,
        )
        log_probs, values, rewards, mask = (torch.empty(length, rows, device=dev) for _ in range(4))
        hidden, prev_action, prev_reward, segment = state
        scale = self._value_scale()  # read once: no device-to-host copy per step
        for s in range(segments):
            obs = env.reset().reshape(rows, -1).float()
            new_episode = segment > 0 and segment % self.config.segments_per_episode == 0
            flag = torch.full((rows, 1), float(new_episode), device=dev)
            alive = torch.ones(rows, device=dev)
            for t in range(steps):
                i = s * steps + t
                x, head, value, hidden, action, executed = self.policy_step(
                    obs, hidden, prev_action, prev_reward, flag, generator, scale
                )
                shape = (env.num_tasks, env.envs_per_task) + (() if self.discrete else (self.action_dim,))
                obs, reward, terminated, _ = env.step(executed.reshape(shape))
                obs, reward = obs.reshape(rows, -1).float(), reward.reshape(rows).float() * alive
                inputs[i], actions[i], values[i], rewards[i], mask[i] = x, action, value, reward, alive
                log_probs[i] = self.net.log_prob_entropy(head, action)[0]
                alive = alive * (~terminated.reshape(rows)).float()
                prev_action = F.one_hot(action, self.action_dim).float() if self.discrete else executed
                prev_reward = reward
                flag = torch.zeros_like(flag)
            segment += 1
        return Trajectory(inputs, actions, log_probs, values, rewards, mask), RL2State(
            hidden, prev_action, prev_reward, segment
        )

    def policy_step(
        self,
        obs: torch.Tensor,
        hidden: torch.Tensor,
        prev_action: torch.Tensor,
        prev_reward: torch.Tensor,
        flag: torch.Tensor,
        generator: torch.Generator,
        value_scale: tuple[float, float] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step of the recurrent policy for ``B`` trials: its input ``x = (o_t, a_{t−1}, r_{t−1}, d_t)``
        (``flag [B, 1]``: 1 on the first step of an episode after the first), the policy head, the value, the
        next hidden state, the sampled action and the executed one (clipped to a Box's bounds).
        ``value_scale``: :meth:`_value_scale`, read once per rollout by the caller (on a GPU each read is a
        device-to-host copy); ``None`` reads it here."""
        x = torch.cat([obs, prev_action, prev_reward.unsqueeze(-1), flag], dim=-1)
        head, value, hidden = self.net(x.unsqueeze(0), hidden)
        mean, std = self._value_scale() if value_scale is None else value_scale
        head, value = head.squeeze(0), value.squeeze(0) * std + mean
        action = self.net.sample(head, generator)
        executed = (
            action
            if self.discrete
            else torch.maximum(torch.minimum(action, self.action_high), self.action_low)
        )
        return x, head, value, hidden, action, executed

    def _value_scale(self) -> tuple[float, float]:
        """``(m, σ)`` of the value normalisation (``(0, 1)`` when off or before the first update)."""
        mean_r, mean_sq, weight = self.value_stats.tolist()
        if not self.config.normalize_values or weight == 0:
            return 0.0, 1.0
        mean = mean_r / weight
        return mean, max(mean_sq / weight - mean * mean, 1e-4) ** 0.5

    def _update_value_stats(self, returns: torch.Tensor) -> None:
        decay = self.config.value_norm_decay
        batch = torch.stack([returns.mean(), (returns * returns).mean(), torch.ones(())]).double().cpu()
        batch = distributed.all_reduce_mean(batch)  # the moments of every rank's returns
        self.value_stats = decay * self.value_stats + (1 - decay) * batch

    def _segment_returns(self, traj: Trajectory, num_tasks: int) -> torch.Tensor:
        """``[segments, N]``: return of each segment, averaged over the trials of each task."""
        per_segment = traj.rewards.view(-1, self.segment_steps, traj.rewards.shape[1]).sum(1)
        return per_segment.view(per_segment.shape[0], num_tasks, -1).mean(-1)

    # -- the inner loop: running a trial --------------------------------------------------------------
    def initial(self, tasks: Sequence[Task]) -> RL2State:
        self.eval_generator.manual_seed(self.seed + EVAL_SEED_OFFSET)
        return self.zero_state(len(tasks) * self.config.eval_trials_per_task)

    def support(self, tasks: Sequence[Task], adapted: RL2State, step: int) -> Segment:
        env = self._make_env(tasks, self.config.eval_trials_per_task, self.eval_generator)
        return Segment(*self._rollout(env, adapted, 1, self.eval_generator))

    def adapt(self, adapted: RL2State, support: Segment, step: int) -> RL2State:
        return support.state

    def evaluate(self, tasks: Sequence[Task], adapted: RL2State) -> torch.Tensor:
        """Mean return of one more segment from ``adapted``; ``adapted`` itself is not advanced."""
        env = self._make_env(tasks, self.config.eval_trials_per_task, self.eval_generator)
        traj, _ = self._rollout(env, adapted, 1, self.eval_generator)
        return self._segment_returns(traj, len(tasks))[0]

    def adaptation_cost(self) -> tuple[int, int]:
        return self.segment_steps, self.segment_steps

    def trial_returns(self, tasks: Sequence[Task], trials_per_task: int = 1, seed: int = 0) -> torch.Tensor:
        """``[N]`` total reward of whole trials from a zero hidden state (RL² Tables 1–2), mean per task."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        env = self._make_env(tasks, trials_per_task, generator)
        traj, _ = self._rollout(
            env, self.zero_state(len(tasks) * trials_per_task), self.config.segments_per_trial, generator
        )
        return self._segment_returns(traj, len(tasks)).sum(0)

    # -- the outer loop: PPO over trials --------------------------------------------------------------
    def selection_score(self, curve_mean: Sequence[float]) -> float:
        """The trial return (the RL² objective): the sum of the curve's segment returns."""
        return float(sum(curve_mean))

    def meta_update(self, tasks: Sequence[Task]) -> dict[str, float]:
        cfg = self.config
        start = time.perf_counter()
        env = self._make_env(tasks, cfg.trials_per_task, self.generator)
        rows = len(tasks) * cfg.trials_per_task
        traj, _ = self._rollout(env, self.zero_state(rows), cfg.segments_per_trial, self.generator)
        rollout_s = time.perf_counter() - start

        advantages = losses.trial_gae(traj.rewards, traj.values, traj.mask, cfg.gamma, cfg.gae_lambda)
        returns = advantages + traj.values
        if cfg.normalize_advantages:  # over the whole meta-batch (every rank's trials)
            advantages = distributed.normalize_advantages(advantages, traj.mask)
        self._update_value_stats(returns[traj.mask > 0])
        mean, std = self._value_scale()
        targets = (returns - mean) / std  # what the value head regresses on
        hidden0 = torch.zeros(rows, self.net.state_size, device=self.device)
        size = math.ceil(rows / cfg.num_minibatches)
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(rows, generator=self.generator, device=self.device)
            sums = torch.zeros(5, device=self.device)  # summed on the device: no sync per minibatch
            for idx in order.split(size):
                head, values, _ = self.net(traj.inputs[:, idx], hidden0[idx])
                log_probs, entropy = self.net.log_prob_entropy(head, traj.actions[:, idx])
                terms = losses.ppo_losses(
                    log_probs,
                    traj.log_probs[:, idx],
                    advantages[:, idx],
                    values,
                    targets[:, idx],
                    entropy,
                    traj.mask[:, idx],
                    cfg.clip,
                )
                loss = terms.policy + cfg.value_coef * terms.value - cfg.entropy_coef * terms.entropy
                self.optimizer.zero_grad()
                loss.backward()
                distributed.all_reduce_grads_(self.optimizer)  # data-parallel: each rank's minibatch
                nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                sums += torch.stack([t.detach() for t in terms])
        means = sums / len(order.split(size))

        valid = traj.mask > 0
        residual_var = (returns - traj.values)[valid].var()
        explained = 1.0 - float(residual_var / returns[valid].var().clamp(min=1e-8))
        segment_returns = self._segment_returns(traj, len(tasks))
        return {
            "env_steps": float(traj.mask.sum()),
            "meta_train/return_pre_adapt": float(segment_returns[0].mean()),
            "meta_train/return_post_adapt": float(segment_returns[-1].mean()),
            "meta_train/trial_return": float(segment_returns.sum(0).mean()),
            "losses/policy_loss": float(means[0]),
            "losses/value_loss": float(means[1]),
            "losses/entropy": float(means[2]),
            "losses/approx_kl": float(means[3]),
            "losses/clip_fraction": float(means[4]),
            "losses/explained_variance": explained,
            "time/rollout_s": rollout_s,
            "time/update_s": time.perf_counter() - start - rollout_s,
        }

    # -- persistence ----------------------------------------------------------------------------------
    def generators(self) -> tuple[torch.Generator, torch.Generator]:
        """Training (actions, minibatch order, env seeds) and evaluation generators."""
        return self.generator, self.eval_generator

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "value_stats": self.value_stats.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        # Checkpoints written before value normalisation existed carry no statistics: (m, σ) = (0, 1).
        self.value_stats = state.get("value_stats", torch.zeros(3, dtype=torch.float64)).clone()


def _learner_state_of(path: str) -> dict[str, Any]:
    """The RL² learner state (network weights, value normaliser) in a checkpoint file or a run directory's
    ``checkpoints/latest.pt``."""
    file = Path(path)
    if file.is_dir():
        file = file / "checkpoints" / "latest.pt"
    state = checkpoint.load(file)  # raises CheckpointError with the path when missing or corrupted
    learner = state.get("learner", {})
    if "net" not in learner:
        raise ConfigError(f"algo.init_from {path!r}: {str(file)!r} is not a checkpoint of an RL² run")
    return learner


def build(config: Any, device: torch.device) -> tuple[FamilyTaskSampler, RL2]:
    """The registry's builder: the family of ``[env]`` and an :class:`RL2`.

    The learner steps the family through :class:`metarl.rollouts.BatchedFamily`: its own ``make_batched``
    when it has one, gymnasium copies otherwise (any family that follows the contract of ``envs/base.py``).
    """
    algo, env = config.algo, config.env
    make_env = env_factory(env.id, env.kwargs, env.max_episode_steps)
    probe = make_env()
    family = probe.unwrapped
    if algo.segments_per_episode > 1 and not isinstance(family, BernoulliBanditEnv):
        raise ConfigError(
            "algo.segments_per_episode > 1 cuts an episode into chunks; only bandits (stateless between "
            f"pulls) allow it, got env.id {env.id!r}"
        )
    if isinstance(family, BernoulliBanditEnv) and algo.episodes_per_trial != 1:
        raise ConfigError(
            "a bandit trial is one episode of n pulls: set algo.episodes_per_trial = 1 and "
            "env.kwargs.num_pulls = env.max_episode_steps = n"
        )
    horizon = horizon_of(probe)
    if horizon % algo.segments_per_episode:
        raise ConfigError(
            f"algo.segments_per_episode ({algo.segments_per_episode}) must divide the horizon ({horizon})"
        )
    return FamilyTaskSampler(probe), RL2(algo, BatchedFamily(make_env), horizon, device, config.run.seed)
