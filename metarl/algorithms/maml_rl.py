"""MAML for reinforcement learning with a policy-gradient inner loop.

Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
arXiv:1703.03400, §3.2 and §5.3. For each task ``T_i`` of a meta-batch:

1. sample ``K`` rollouts with the meta-policy ``π_θ`` (the *support* episodes);
2. adapt with one (or more) vanilla policy-gradient steps ``θ'_i = θ − α ∇_θ L_{T_i}(θ)``, where ``L`` is the
   REINFORCE surrogate with advantages from a linear feature baseline refit per task and GAE(γ, λ);
3. sample ``K`` rollouts with ``π_{θ'_i}`` (the *query* episodes);

then update ``θ`` on ``Σ_i L_{T_i}(θ'_i)`` through the inner update (second order by default: the gradient
flows through ``∇_θ L`` via ``torch.func.grad``). The inner loops of all tasks run as one ``vmap`` over the
task dimension and all rollouts of a meta-batch as one batched rollout. The outer optimiser here is Adam on
the VPG surrogate; the paper's TRPO outer loop plugs in at ``_outer_step``.

Logged metrics (TensorBoard tags, x-axis = environment steps):

- ``meta_train/return_pre_adapt``: mean undiscounted return of the support episodes (policy ``π_θ``).
- ``meta_train/return_post_adapt``: mean return of the query episodes (policy ``π_{θ'}``).
- ``losses/outer_loss``: the meta-objective ``mean_i L_{T_i}(θ'_i)`` before the update.
- ``losses/inner_loss``: the inner surrogate at ``θ`` averaged over tasks.
- ``losses/policy_std``: the mean standard deviation of the Gaussian policy.
- ``time/sampling_s``, ``time/inner_s``, ``time/outer_s``: wall-clock split of the iteration.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch.func import grad, vmap

from envs.base import Task
from metarl import losses
from metarl.core import MetaLearner
from metarl.policies import GaussianMLPPolicy, Params
from metarl.rollouts import Episodes, RolloutSampler


@dataclasses.dataclass(frozen=True)
class MAMLRLConfig:
    """Hyperparameters of MAML-RL; defaults are the MAML paper's navigation/locomotion settings.

    Attributes:
        meta_batch_size: tasks per meta-iteration (20 for navigation, 40 for locomotion; §5.3).
        rollouts_per_task: episodes per task for each inner step and for the query (20; §5.3).
        num_inner_steps: inner VPG steps during meta-training (1; §5.3).
        inner_lr: inner step size α during meta-training (0.1; §5.3).
        test_inner_lrs: step size of each adaptation step at evaluation; later steps reuse the last value
            (0.1 then 0.05, as in the reference code's test scripts).
        first_order: drop the second-order term (FOMAML): ``θ' = θ − α·stop_grad(∇L(θ))``.
        outer_lr: Adam step size of the outer update (the paper uses TRPO; Adam-VPG is the simple option).
        gamma: discount (0.99).
        gae_lambda: GAE λ (1.0: plain returns minus baseline, as in the paper).
        normalize_advantages: centre and scale advantages per task (rllab's ``center_adv``).
        hidden_sizes: policy MLP (2×100; App. A.2).
        activation: ``"relu"`` (paper) or ``"tanh"`` (pytorch-maml-rl).
        init_std: initial policy standard deviation (1.0).
        baseline_reg: ridge coefficient of the linear feature baseline (1e-5, rllab).
    """

    meta_batch_size: int = 20
    rollouts_per_task: int = 20
    num_inner_steps: int = 1
    inner_lr: float = 0.1
    test_inner_lrs: tuple[float, ...] = (0.1, 0.05)
    first_order: bool = False
    outer_lr: float = 1e-3
    gamma: float = 0.99
    gae_lambda: float = 1.0
    normalize_advantages: bool = True
    hidden_sizes: tuple[int, ...] = (100, 100)
    activation: str = "relu"
    init_std: float = 1.0
    baseline_reg: float = 1e-5

    def __post_init__(self) -> None:
        positive = ("meta_batch_size", "rollouts_per_task", "num_inner_steps", "inner_lr", "outer_lr")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        if not self.test_inner_lrs or any(lr <= 0 for lr in self.test_inner_lrs):
            raise ValueError(f"test_inner_lrs must be positive step sizes, got {self.test_inner_lrs}")
        if not self.hidden_sizes or any(h <= 0 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive layer widths, got {self.hidden_sizes}")
        if self.activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be one of ['relu', 'tanh'], got {self.activation!r}")
        if self.init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")


class Batch(NamedTuple):
    """Support/query data of one adaptation step: episodes and their (constant) advantages."""

    episodes: Episodes
    advantages: torch.Tensor  # [T, N, E]


class MAMLRL(MetaLearner[Batch, Params]):
    """MAML with a VPG inner loop; ``Adapted`` is the per-task fast weights (a params dict, leading dim N)."""

    metric_name = "return"
    higher_is_better = True

    def __init__(self, config: MAMLRLConfig, sampler: RolloutSampler, seed: int) -> None:
        self.config = config
        self.sampler = sampler
        self.device = sampler.device
        torch.manual_seed(seed)  # parameter initialisation only; sampling uses self.generator
        self.policy = GaussianMLPPolicy(
            sampler.obs_dim,
            sampler.action_dim,
            config.hidden_sizes,
            config.activation,
            config.init_std,
        ).to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.outer_lr)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    # -- acting ---------------------------------------------------------------------------------------
    def _act_fn(self, params: Params):
        detached = {k: v.detach() for k, v in params.items()}
        dist = vmap(self.policy.distribution)

        def act(obs: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                mean, log_std = dist(detached, obs)
                noise = torch.randn(mean.shape, generator=self.generator, device=self.device)
                return mean + log_std.exp() * noise

        return act

    def _advantages(self, episodes: Episodes) -> torch.Tensor:
        """Per-task baseline fit + GAE, vmapped over the task dimension (dim 1)."""
        cfg = self.config

        def one_task(obs: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            returns = losses.discounted_returns(rewards, mask, cfg.gamma)
            feats = losses.baseline_features(obs, mask)
            values = losses.fit_linear_baseline(feats, returns, cfg.baseline_reg)
            adv = losses.gae(rewards, values, mask, cfg.gamma, cfg.gae_lambda)
            return losses.normalize_advantages(adv, mask) if cfg.normalize_advantages else adv

        return vmap(one_task, in_dims=1, out_dims=1)(episodes.obs, episodes.rewards, episodes.mask)

    def _surrogate(self, params: Params, obs, actions, advantages, mask) -> torch.Tensor:
        """The VPG surrogate of one task under ``params`` (inputs ``[T, E, ...]``)."""
        mean, log_std = self.policy.distribution(params, obs)
        return losses.vpg_loss(losses.gaussian_log_prob(mean, log_std, actions), advantages, mask)

    def _task_losses(self, params: Params, batch: Batch) -> torch.Tensor:
        ep = batch.episodes
        return vmap(self._surrogate, in_dims=(0, 1, 1, 1, 1))(
            params, ep.obs, ep.actions, batch.advantages, ep.mask
        )

    def _inner_step(self, params: Params, batch: Batch, lr: float, create_graph: bool) -> Params:
        def step(p: Params, obs, actions, advantages, mask) -> Params:
            g = grad(self._surrogate)(p, obs, actions, advantages, mask)
            if not create_graph:
                g = {k: v.detach() for k, v in g.items()}
            return {k: p[k] - lr * g[k] for k in p}

        ep = batch.episodes
        return vmap(step, in_dims=(0, 1, 1, 1, 1))(
            params, ep.obs, ep.actions, batch.advantages, ep.mask
        )

    # -- the meta-learner interface ---------------------------------------------------------------------
    def initial(self, tasks: Sequence[Task]) -> Params:
        n = len(tasks)
        return {k: v.expand(n, *v.shape) for k, v in self.policy.params().items()}

    def support(self, tasks: Sequence[Task], adapted: Params, step: int) -> Batch:
        episodes = self.sampler.rollout(tasks, self._act_fn(adapted))
        return Batch(episodes, self._advantages(episodes))

    def adapt(self, adapted: Params, support: Batch, step: int) -> Params:
        lrs = self.config.test_inner_lrs
        lr = lrs[min(step, len(lrs) - 1)]
        return {k: v.detach() for k, v in self._inner_step(adapted, support, lr, False).items()}

    def evaluate(self, tasks: Sequence[Task], adapted: Params) -> torch.Tensor:
        return self.sampler.rollout(tasks, self._act_fn(adapted)).task_returns()

    def meta_update(self, tasks: Sequence[Task]) -> dict[str, float]:
        cfg = self.config
        t0 = time.perf_counter()
        sampling = inner = 0.0
        params = self.initial(tasks)
        env_steps = 0
        inner_losses = pre_returns = None
        for step in range(cfg.num_inner_steps):
            ts = time.perf_counter()
            batch = self.support(tasks, params, step)
            sampling += time.perf_counter() - ts
            env_steps += batch.episodes.num_steps
            ti = time.perf_counter()
            if step == 0:
                pre_returns = batch.episodes.task_returns()
                inner_losses = self._task_losses(params, batch).detach()
            params = self._inner_step(params, batch, cfg.inner_lr, not cfg.first_order)
            inner += time.perf_counter() - ti
        ts = time.perf_counter()
        query = self.support(tasks, params, cfg.num_inner_steps)
        sampling += time.perf_counter() - ts
        env_steps += query.episodes.num_steps
        to = time.perf_counter()
        outer_loss = self._outer_step(params, query)
        outer = time.perf_counter() - to
        return {
            "env_steps": float(env_steps),
            "meta_train/return_pre_adapt": float(pre_returns.mean()),
            "meta_train/return_post_adapt": float(query.episodes.task_returns().mean()),
            "losses/outer_loss": outer_loss,
            "losses/inner_loss": float(inner_losses.mean()),
            "losses/policy_std": float(self.policy.log_std.detach().exp().mean()),
            "time/sampling_s": sampling,
            "time/inner_s": inner,
            "time/outer_s": outer,
            "time/iteration_s": time.perf_counter() - t0,
        }

    def _outer_step(self, adapted: Params, query: Batch) -> float:
        """Adam on ``mean_i L_{T_i}(θ'_i)``; the gradient reaches θ through the inner update."""
        loss = self._task_losses(adapted, query).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    # -- persistence ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "env_rng": self.sampler.env_rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.sampler.env_rng.bit_generator.state = state["env_rng"]
