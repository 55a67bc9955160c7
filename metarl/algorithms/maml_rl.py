"""MAML for reinforcement learning: a policy-gradient inner loop, a TRPO / PPO / Adam-VPG outer loop.

Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
arXiv:1703.03400, §3.2 and §5.3. For each task ``T_i`` of a meta-batch:

1. sample ``K`` rollouts with the meta-policy ``π_θ`` (the *support* episodes);
2. adapt with one (or more) vanilla policy-gradient steps ``θ'_i = θ − α_k ∇_θ L_{T_i}(θ)``, where ``L`` is
   the REINFORCE surrogate with advantages from a linear feature baseline refit per task and GAE(γ, λ);
3. sample ``K`` rollouts with ``π_{θ'_i}`` (the *query* episodes);

then update ``θ`` on the meta-objective ``Σ_i L_{T_i}(θ'_i(θ))`` through the inner update (second order by
default: the gradient flows through ``∇_θ L`` via ``torch.func.grad``; ``first_order`` drops that term). The
inner loops of all tasks run as one ``vmap`` over the task dimension and all rollouts of a meta-batch as one
batched rollout. Every outer step *re-adapts from θ* on the stored support data, so the objective, its
gradient and the KL are functions of θ alone. Three outer optimisers (``outer``):

- ``"trpo"`` (the paper's, §5.3): the likelihood-ratio surrogate of the adapted policies on the query data,
  ``L(θ) = −mean_i E[π_{θ'_i(θ)}(a|s) / π_{θ'_i,old}(a|s) · A]``, under the constraint
  ``mean_i E_s[KL(π_{θ'_i,old}(·|s) ‖ π_{θ'_i(θ)}(·|s))] ≤ δ``. The KL is between the *post-update* policies:
  the sampling-time adapted policy and the one re-adapted from the candidate θ — the convention of the MAML
  code (cbfinn/maml_rl ``maml_npo.py`` constrains the KL of the final, adapted policies) and of
  pytorch-maml-rl (``MAMLTRPO.surrogate_loss`` re-adapts and takes ``kl_divergence(pi, old_pi)``). Its
  Hessian at θ_old (the Fisher of the adapted policies pulled back through the inner loop) is applied as
  the Gauss-Newton product ``Jᵀ M J v`` from graphs cached once per step (``fvp = "gauss_newton"``) or by
  double backward (``"hessian"``); conjugate gradient and the backtracking line search are ``metarl.optim``.
- ``"ppo"`` (ProMP, Rothfuss et al. 2018, arXiv:1810.06784; garage's MAML-PPO): the clipped surrogate,
  ``ppo_epochs`` Adam steps on the same query data, re-adapting from the current θ at every epoch.
- ``"vpg"``: one Adam step on the REINFORCE meta-objective (the simplest; fine for short runs).

With ``learn_inner_lr`` the inner step sizes are per-parameter meta-parameters (Meta-SGD: Li et al. 2017,
arXiv:1707.09835), updated by the same outer optimiser. With ``num_inner_steps = 0`` there is no inner step
during training: the outer loop trains one policy on all tasks — the paper's *pretrained* baseline, which is
then fine-tuned at test time with the same inner steps (registered as ``pretrained_rl``).

Logged metrics (TensorBoard tags, x-axis = environment steps):

- ``meta_train/return_pre_adapt``: mean undiscounted return of the first support episodes (policy ``π_θ``).
- ``meta_train/return_post_adapt``: mean return of the query episodes (policy ``π_{θ'}``).
- ``meta_train/inner_lr_mean``: mean learned inner step size over parameters and steps (Meta-SGD only).
- ``losses/outer_loss``: the outer objective at the old θ before the update (REINFORCE surrogate for
  ``vpg``; the likelihood-ratio surrogate for ``trpo``; the clipped surrogate for ``ppo``).
- ``losses/surrogate_improvement``: decrease of the likelihood-ratio surrogate achieved by the update.
- ``losses/kl``: ``mean_i KL(π_{θ'_i,old} ‖ π_{θ'_i,new})`` on the query states after the update.
- ``losses/inner_loss``: the inner surrogate at ``θ`` averaged over tasks (absent without inner steps).
- ``losses/policy_std``: the mean standard deviation of the Gaussian policy.
- ``losses/step_fraction`` (trpo): accepted fraction of the full trust-region step (0: step rejected).
- ``losses/line_search_evals`` (trpo): candidates the line search evaluated.
- ``losses/clip_fraction`` (ppo): fraction of query steps with ratio outside ``[1 − ε, 1 + ε]`` (last epoch).
- ``time/sampling_s``: rollouts (support and query) and their advantages (baseline fit, GAE);
  ``time/inner_s``: the inner adaptation steps run to collect data; ``time/outer_s``: the outer update
  (re-adaptation, gradients, CG, line search / epochs); ``time/iteration_s``: the whole meta-iteration.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import nn
from torch.func import grad, vmap

from envs.base import Task
from metarl import checks, distributed, losses, optim
from metarl.core import MetaLearner, RandomGenerator
from metarl.families import FamilyTaskSampler, env_factory, horizon_of
from metarl.policies import GaussianMLPPolicy, Params
from metarl.rollouts import Episodes, RolloutSampler
from metarl.seeding import seeded

#: Key prefix of the learned inner step sizes among the meta-parameters (Meta-SGD).
LR_PREFIX = "inner_lr/"


@dataclasses.dataclass(frozen=True)
class MAMLRLConfig:
    """Hyperparameters of MAML-RL; defaults are the MAML paper's navigation/locomotion settings.

    Attributes:
        meta_batch_size: tasks per meta-iteration (20 for navigation, 40 for locomotion; §5.3).
        rollouts_per_task: episodes per task for each inner step and for the query (20; §5.3).
        num_inner_steps: inner VPG steps ``K`` during meta-training (1; §5.3). 0 trains the *pretrained*
            baseline (no adaptation during training).
        inner_lr: inner step size α of every training step (0.1; §5.3) when ``inner_lrs`` is empty.
        inner_lrs: per-step inner step sizes ``(α_1, …, α_K)``, one per inner step (overrides ``inner_lr``;
            empty: ``inner_lr`` at every step). With ``learn_inner_lr`` they initialise the learned rates.
        learn_inner_lr: Meta-SGD (Li et al. 2017, arXiv:1707.09835): per-parameter, per-step inner step sizes
            that are meta-parameters, updated by the outer loop and used at test time too.
        test_inner_lrs: step size of each adaptation step at evaluation; later steps reuse the last value
            (0.1 then 0.05, as in the reference code's test scripts). Ignored with ``learn_inner_lr``.
        first_order: drop the second-order term (FOMAML): ``θ' = θ − α·stop_grad(∇L(θ))``.
        outer: the outer optimiser: ``"trpo"`` (MAML §5.3), ``"ppo"`` (ProMP / garage MAML-PPO) or
            ``"vpg"`` (Adam on the REINFORCE meta-objective).
        max_kl: TRPO trust-region radius δ on the mean KL (0.01; MAML §5.3).
        kl_constraint: which policies the trust region bounds: ``"adapted"`` (the post-update policies on the
            query episodes, differentiated through the inner loop: cbfinn/maml_rl's default
            ``kl_constrain_step = -1`` and pytorch-maml-rl) or ``"pre_update"`` (the meta-policy θ itself on
            the first support episodes: ``kl_constrain_step = 0`` of cbfinn/maml_rl). The pre-update KL
            does not go through the inner loop, so its Fisher-vector products are plain first-order TRPO
            products and cost a fraction of the adapted ones.
        fvp: how conjugate gradient's Fisher-vector products ``v ↦ ∇²KL(θ_old) v`` are computed.
            ``"gauss_newton"``: ``Jᵀ M J v`` with ``J`` the Jacobian of the constrained policies'
            ``(μ, log σ)`` with respect to θ (through the inner loop for the adapted KL) and ``M`` the
            Gaussian KL's Hessian in ``(μ, log σ)`` (diagonal: ``1/σ²`` and ``2``). At ``θ_old`` the KL's
            gradient in ``(μ, log σ)`` is zero, so this *is* the KL's Hessian (Martens 2014,
            arXiv:1412.1193, §9; Schulman et al. 2015, arXiv:1502.05477, App. C), without the third-order
            term that the double backward of a second-order gradient computes only to multiply by
            zero. Each product is a chain of cached reverse-mode products (the inner steps'
            Hessian-vector products on the support data and the policy's Jacobian on the constrained
            states). ``"hessian"``: double backward of ``∇KL`` built with ``create_graph`` (exact
            arithmetic gives the same matrix; several times slower on the adapted KL).
        fvp_subsample: fraction of each task's episodes (the first ``⌈E·f⌉``) on which the Fisher-vector
            products of conjugate gradient are computed (rllab ``ConjugateGradientOptimizer``
            ``subsample_factor``, OpenAI baselines' TRPO uses every 5th sample). The gradient, the step
            length and the line search always use all episodes.
        fvp_task_chunk: tasks per chunk of the Gauss-Newton products (0: all tasks at once). The products
            are sums over tasks; running them a few tasks at a time keeps each chunk's tensors in the CPU's
            cache (on HalfCheetahVel, a product costs ~70 ms per task in chunks of 10 and ~120 ms with
            all 40 tasks at once). The result is the same up to floating-point summation order.
        cg_iters: conjugate-gradient iterations (10; rllab's ``ConjugateGradientOptimizer``).
        cg_damping: Tikhonov damping added to the Fisher-vector product (1e-5; rllab ``reg_coeff``).
        line_search_steps: backtracking candidates (15; rllab ``backtrack_ratio`` search).
        line_search_decay: shrink factor between candidates (0.8; rllab).
        outer_threads: torch CPU threads for the outer update only (0: the process's setting,
            ``run.num_threads``). Sampling keeps its threads (the MuJoCo fast path steps the physics on every
            core by itself), so the cores it leaves idle can serve the outer step; the setting is restored
            after the update.
        outer_lr: Adam step size of the ``ppo`` and ``vpg`` outer loops (1e-3; garage, ProMP).
        ppo_clip: PPO clip range ε (0.3 ProMP; garage uses 0.5).
        ppo_epochs: Adam steps per meta-iteration on the same query data (5; ProMP ``num_ppo_steps``).
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
    inner_lrs: tuple[float, ...] = ()
    learn_inner_lr: bool = False
    test_inner_lrs: tuple[float, ...] = (0.1, 0.05)
    first_order: bool = False
    outer: Literal["trpo", "ppo", "vpg"] = "trpo"
    max_kl: float = 0.01
    kl_constraint: Literal["adapted", "pre_update"] = "adapted"
    fvp: Literal["gauss_newton", "hessian"] = "gauss_newton"
    fvp_subsample: float = 1.0
    fvp_task_chunk: int = 8
    cg_iters: int = 10
    cg_damping: float = 1e-5
    line_search_steps: int = 15
    line_search_decay: float = 0.8
    outer_threads: int = 0
    outer_lr: float = 1e-3
    ppo_clip: float = 0.3
    ppo_epochs: int = 5
    gamma: float = 0.99
    gae_lambda: float = 1.0
    normalize_advantages: bool = True
    hidden_sizes: tuple[int, ...] = (100, 100)
    activation: str = "relu"
    init_std: float = 1.0
    baseline_reg: float = 1e-5

    def __post_init__(self) -> None:
        positive = (
            "meta_batch_size",
            "rollouts_per_task",
            "inner_lr",
            "outer_lr",
            "max_kl",
            "cg_iters",
            "line_search_steps",
            "ppo_clip",
            "ppo_epochs",
        )
        checks.positive(self, *positive)
        if self.num_inner_steps < 0:
            raise ValueError(f"num_inner_steps must be >= 0, got {self.num_inner_steps}")
        if self.outer_threads < 0:
            raise ValueError(
                f"outer_threads must be >= 0 (0: the process's setting), got {self.outer_threads}"
            )
        if self.fvp_task_chunk < 0:
            raise ValueError(f"fvp_task_chunk must be >= 0 (0: all tasks at once), got {self.fvp_task_chunk}")
        if self.fvp not in ("gauss_newton", "hessian"):
            raise ValueError(f"fvp must be one of ['gauss_newton', 'hessian'], got {self.fvp!r}")
        if not 0 < self.fvp_subsample <= 1:
            raise ValueError(f"fvp_subsample must be in (0, 1], got {self.fvp_subsample}")
        if self.kl_constraint == "pre_update" and self.learn_inner_lr:
            raise ValueError(
                "kl_constraint = 'pre_update' bounds θ's policy only and leaves the learned inner step sizes "
                "(learn_inner_lr) unconstrained: use kl_constraint = 'adapted' with Meta-SGD"
            )
        if self.inner_lrs and len(self.inner_lrs) != self.num_inner_steps:
            raise ValueError(
                f"inner_lrs must give one step size per inner step ({self.num_inner_steps}), "
                f"got {self.inner_lrs}"
            )
        if any(lr <= 0 for lr in self.inner_lrs):
            raise ValueError(f"inner_lrs must be positive step sizes, got {self.inner_lrs}")
        if self.learn_inner_lr and self.num_inner_steps == 0:
            raise ValueError("learn_inner_lr needs num_inner_steps >= 1 (there is no inner step to learn)")
        if self.outer not in ("trpo", "ppo", "vpg"):
            raise ValueError(f"outer must be one of ['trpo', 'ppo', 'vpg'], got {self.outer!r}")
        if self.cg_damping < 0:
            raise ValueError(f"cg_damping must be >= 0, got {self.cg_damping}")
        if not 0 < self.line_search_decay < 1:
            raise ValueError(f"line_search_decay must be in (0, 1), got {self.line_search_decay}")
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

    @property
    def step_lrs(self) -> tuple[float, ...]:
        """The training step size of each of the ``num_inner_steps`` inner steps."""
        return self.inner_lrs or (self.inner_lr,) * self.num_inner_steps


@dataclasses.dataclass(frozen=True)
class PretrainedRLConfig(MAMLRLConfig):
    """The MAML paper's *pretrained* baseline (§5.3): ``MAMLRLConfig`` with no inner step during training.

    One policy is trained with the same outer optimiser on all training tasks; at test time it is fine-tuned
    with the same inner steps (``test_inner_lrs``) as MAML.
    """

    num_inner_steps: int = 0


class Batch(NamedTuple):
    """Support/query data of one adaptation step: episodes and their (constant) advantages."""

    episodes: Episodes
    advantages: torch.Tensor  # [T, N, E]


class OldPolicy(NamedTuple):
    """The sampling-time adapted policies on the query episodes: constants ``[T, N, E, ·]``."""

    mean: torch.Tensor
    log_std: torch.Tensor
    log_probs: torch.Tensor


class _InnerGraph(NamedTuple):
    """One inner step ``θ_{k+1} = θ_k − α_k ⊙ g_k(θ_k)`` of every task, its graph kept for Hessian products.

    Attributes:
        params: ``θ_k``, leaves ``[N, ...]`` (one row per task).
        grads: ``g_k = ∇L_k(θ_k)`` ``[N, ...]``, differentiable in ``θ_k`` (constants when first order).
        lr: the step size ``α_k``: a float, or one tensor per parameter (Meta-SGD).
    """

    params: Params
    grads: Params
    lr: float | Params


class _Linearization(NamedTuple):
    """``θ ↦ (μ, log σ)`` of the policies adapted from θ through ``steps``, with every graph cached at θ.

    Attributes:
        steps: the inner steps, in order.
        head: the adapted parameters ``θ_K`` as leaves ``[N, ...]``.
        obs: ``[T, N, E, D]`` the constrained states.
        mean, log_std: ``[T, N, E, A]`` the adapted policies on the constrained states, graphs to ``head``.
        transpose: ``(c, J_headᵀ c)`` for dummy cotangents ``c``, the graph of the policy's transposed
            Jacobian (:meth:`MAMLRL._with_transpose`).
    """

    steps: list[_InnerGraph]
    head: Params
    obs: torch.Tensor
    mean: torch.Tensor
    log_std: torch.Tensor
    transpose: tuple[Any, ...]


def _scaled(lr: float | Params, name: str, x: torch.Tensor) -> torch.Tensor:
    """``α ⊙ x`` for the parameter ``name`` (``α`` a float or per parameter)."""
    return (lr[name] if isinstance(lr, dict) else lr) * x


def _task_major(t: torch.Tensor) -> torch.Tensor:
    """``t [T, N, ...]`` with the same shape, stored task by task: each task's ``[T, ...]`` slice is
    contiguous, so the per-task products of a ``vmap`` over dim 1 read and write dense memory."""
    return t.movedim(1, 0).contiguous().movedim(0, 1)


def _task_slice(batch: Batch, tasks: slice) -> Batch:
    """The tasks ``tasks`` (dim 1) of a batch, stored task by task (:func:`_task_major`)."""
    episodes = Episodes(*(_task_major(t[:, tasks]) for t in batch.episodes))
    return Batch(episodes, _task_major(batch.advantages[:, tasks]))


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(vector: torch.Tensor, like: Params) -> Params:
    out, i = {}, 0
    for name, t in like.items():
        out[name] = vector[i : i + t.numel()].view_as(t)
        i += t.numel()
    return out


def _per_task(loss: Callable[..., torch.Tensor], *tensors: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Apply a pure ``[T, E, …]`` loss to each task of ``[T, N, E, …]`` tensors at once: a ``[N]`` tensor."""
    return vmap(lambda *t: loss(*t, **kwargs), in_dims=1)(*tensors)


class MAMLRL(MetaLearner[Batch, Params]):
    """MAML with a VPG inner loop; ``Adapted`` is the per-task fast weights (a params dict, leading dim N)."""

    metric_name = "return"
    higher_is_better = True

    @property
    def step_unit(self) -> str:
        return f"inner gradient steps ({self.config.rollouts_per_task} episodes each)"

    def __init__(self, config: MAMLRLConfig, sampler: RolloutSampler, seed: int) -> None:
        self.config = config
        self.sampler = sampler
        self.device = sampler.device
        with seeded(seed):
            self.policy = GaussianMLPPolicy(
                sampler.obs_dim, sampler.action_dim, config.hidden_sizes, config.activation, config.init_std
            ).to(self.device)
        self.inner_lrs: dict[str, nn.Parameter] = {}
        if config.learn_inner_lr:  # Meta-SGD: α[k] has the shape of the parameter, initialised to α_k
            init = torch.tensor(config.step_lrs, device=self.device)
            self.inner_lrs = {
                name: nn.Parameter(init.view(-1, *[1] * p.dim()).expand(-1, *p.shape).clone())
                for name, p in self.policy.params().items()
            }
        self.optimizer = (
            None
            if config.outer == "trpo"
            else torch.optim.Adam(self.meta_parameters().values(), lr=config.outer_lr)
        )
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def meta_parameters(self) -> Params:
        """Everything the outer loop updates: the policy's θ and, with Meta-SGD, the inner step sizes."""
        lrs = {LR_PREFIX + name: lr for name, lr in self.inner_lrs.items()}
        return {**self.policy.params(), **lrs}

    # -- acting ---------------------------------------------------------------------------------------
    def _act_fn(self, params: Params) -> Callable[[torch.Tensor], torch.Tensor]:
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

    # -- the inner loop -------------------------------------------------------------------------------
    def _surrogate(
        self,
        params: Params,
        obs: torch.Tensor,
        actions: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """The VPG surrogate of one task under ``params`` (inputs ``[T, E, ...]``)."""
        mean, log_std = self.policy.distribution(params, obs)
        return losses.vpg_loss(losses.gaussian_log_prob(mean, log_std, actions), advantages, mask)

    def _task_losses(self, params: Params, batch: Batch) -> torch.Tensor:
        ep = batch.episodes
        return vmap(self._surrogate, in_dims=(0, 1, 1, 1, 1))(
            params, ep.obs, ep.actions, batch.advantages, ep.mask
        )

    def _inner_step(self, params: Params, batch: Batch, lr: float | Params, create_graph: bool) -> Params:
        """``θ'_i = θ_i − α ⊙ ∇L_{T_i}(θ_i)`` for every task; ``lr``: a float or per parameter (Meta-SGD)."""

        def step(p: Params, obs, actions, advantages, mask) -> Params:
            g = grad(self._surrogate)(p, obs, actions, advantages, mask)
            if not create_graph:
                g = {k: v.detach() for k, v in g.items()}
            return {k: p[k] - (lr[k] if isinstance(lr, dict) else lr) * g[k] for k in p}

        ep = batch.episodes
        return vmap(step, in_dims=(0, 1, 1, 1, 1))(params, ep.obs, ep.actions, batch.advantages, ep.mask)

    def _lr(self, meta: Params, step: int, training: bool) -> float | Params:
        """Step size of inner step ``step``: learned per parameter (Meta-SGD) or the configured schedule."""
        if self.inner_lrs:
            k = min(step, self.config.num_inner_steps - 1)
            return {name: meta[LR_PREFIX + name][k] for name in self.inner_lrs}
        lrs = self.config.step_lrs if training else self.config.test_inner_lrs
        return lrs[min(step, len(lrs) - 1)]

    def _adapt(self, meta: Params, supports: Sequence[Batch], num_tasks: int, create_graph: bool) -> Params:
        """Re-run the training inner loop from the meta-parameters ``meta`` on stored support data."""
        params = self._shared(meta, num_tasks)
        for step, batch in enumerate(supports):
            params = self._inner_step(params, batch, self._lr(meta, step, True), create_graph)
        return params

    # -- the meta-learner interface ---------------------------------------------------------------------
    def initial(self, tasks: Sequence[Task]) -> Params:
        n = len(tasks)
        return {k: v.detach().expand(n, *v.shape) for k, v in self.policy.params().items()}

    def support(self, tasks: Sequence[Task], adapted: Params, step: int) -> Batch:
        return self.support_from(self.sampler.rollout(tasks, self._act_fn(adapted)))

    def support_from(self, episodes: Episodes) -> Batch:
        """The support batch of ``episodes`` (``[T, N, E, ...]``, one task per ``N``), wherever they were
        collected (e.g. an external evaluation protocol's environments): advantages by the per-task
        baseline, as for the learner's own rollouts."""
        return Batch(episodes, self._advantages(episodes))

    def act(self, adapted: Params, obs: torch.Tensor) -> torch.Tensor:
        """Actions ``[N, E, A]`` of each task's policy (fast weights ``adapted``) on ``obs [N, E, D]``,
        sampled with the learner's generator (unclipped, as in its rollouts)."""
        return self._act_fn(adapted)(obs)

    def adapt(self, adapted: Params, support: Batch, step: int) -> Params:
        meta = {k: v.detach() for k, v in self.meta_parameters().items()}
        lr = self._lr(meta, step, training=False)
        return {k: v.detach() for k, v in self._inner_step(adapted, support, lr, False).items()}

    def evaluate(self, tasks: Sequence[Task], adapted: Params) -> torch.Tensor:
        return self.sampler.rollout(tasks, self._act_fn(adapted)).task_returns()

    def adaptation_cost(self) -> tuple[int, int]:
        horizon = self.sampler.horizon
        return self.sampler.envs_per_task * horizon, horizon

    def meta_update(self, tasks: Sequence[Task]) -> dict[str, float]:
        cfg = self.config
        t0 = time.perf_counter()
        sampling = inner = 0.0
        meta = {k: v.detach() for k, v in self.meta_parameters().items()}
        theta = params = self.initial(tasks)
        supports: list[Batch] = []
        metrics: dict[str, float] = {}
        for step in range(cfg.num_inner_steps):
            ts = time.perf_counter()
            supports.append(self.support(tasks, params, step))
            sampling += time.perf_counter() - ts
            ti = time.perf_counter()
            if step == 0:  # before the outer step: θ's tensors are updated in place
                with torch.no_grad():
                    metrics["losses/inner_loss"] = float(self._task_losses(theta, supports[0]).mean())
            params = self._inner_step(params, supports[-1], self._lr(meta, step, True), False)
            params = {k: v.detach() for k, v in params.items()}
            inner += time.perf_counter() - ti
        ts = time.perf_counter()
        query = self.support(tasks, params, cfg.num_inner_steps)
        sampling += time.perf_counter() - ts

        to = time.perf_counter()
        outer_step = {"trpo": self._trpo_step, "ppo": self._ppo_step, "vpg": self._vpg_step}[cfg.outer]
        threads = torch.get_num_threads()
        if cfg.outer_threads:
            torch.set_num_threads(cfg.outer_threads)
        try:
            metrics.update(outer_step(supports, query, self._old_policy(params, query)))
        finally:
            torch.set_num_threads(threads)
        outer = time.perf_counter() - to

        first = supports[0] if supports else query
        metrics.update(
            {
                "env_steps": float(sum(b.episodes.num_steps for b in [*supports, query])),
                "meta_train/return_pre_adapt": float(first.episodes.task_returns().mean()),
                "meta_train/return_post_adapt": float(query.episodes.task_returns().mean()),
                "losses/policy_std": float(self.policy.log_std.detach().exp().mean()),
                "time/sampling_s": sampling,
                "time/inner_s": inner,
                "time/outer_s": outer,
            }
        )
        if self.inner_lrs:
            metrics["meta_train/inner_lr_mean"] = float(_flat(list(self.inner_lrs.values())).detach().mean())
        metrics["time/iteration_s"] = time.perf_counter() - t0
        return metrics

    # -- the outer loop -------------------------------------------------------------------------------
    def _distribution(self, params: Params, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, log σ)`` of each task's policy on its ``[T, N, E, D]`` observations."""
        return vmap(self.policy.distribution, in_dims=(0, 1), out_dims=1)(params, obs)

    def _old_policy(self, sampled: Params, query: Batch) -> OldPolicy:
        """The policies that sampled ``query`` (fast weights ``sampled``) on its data, as constants."""
        with torch.no_grad():
            mean, log_std = self._distribution(sampled, query.episodes.obs)
            return OldPolicy(mean, log_std, losses.gaussian_log_prob(mean, log_std, query.episodes.actions))

    def _query_terms(
        self, meta: Params, supports: Sequence[Batch], query: Batch, old: OldPolicy, create_graph: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-adapt from ``meta``: ``log π_{θ'(θ)}(a|s)`` on the query ``[T, N, E]`` and the mean KL."""
        ep = query.episodes
        adapted = self._adapt(meta, supports, ep.obs.shape[1], create_graph)
        mean, log_std = self._distribution(adapted, ep.obs)
        kl = _per_task(losses.gaussian_kl, old.mean, old.log_std, mean, log_std, ep.mask).mean()
        return losses.gaussian_log_prob(mean, log_std, ep.actions), kl

    def _ratio_loss(self, log_probs: torch.Tensor, old: OldPolicy, query: Batch) -> torch.Tensor:
        return _per_task(
            losses.likelihood_ratio_loss, log_probs, old.log_probs, query.advantages, query.episodes.mask
        ).mean()

    def _constraint_kl(
        self, supports: Sequence[Batch], query: Batch, old: OldPolicy, fraction: float
    ) -> Callable[[Params, bool], torch.Tensor]:
        """``(m, create_graph) ↦`` the mean KL that ``config.kl_constraint`` bounds, on the first ``fraction``
        of each task's episodes: KL(π_old ‖ π_{θ'(m)}) of the adapted policies on the query episodes, or
        KL(π_θold ‖ π_m) of the pre-update policy on the first support episodes (no inner loop)."""
        pre_update = self.config.kl_constraint == "pre_update"
        episodes = (supports[0] if supports else query).episodes if pre_update else query.episodes
        keep = max(1, math.ceil(episodes.obs.shape[2] * fraction))
        obs, mask = episodes.obs[:, :, :keep], episodes.mask[:, :, :keep]
        tasks = obs.shape[1]
        if pre_update:
            with torch.no_grad():
                meta = self.meta_parameters()
                old_mean, old_log_std = self._distribution(self._shared(meta, tasks), obs)
        else:
            old_mean, old_log_std = old.mean[:, :, :keep], old.log_std[:, :, :keep]

        def kl(m: Params, create_graph: bool) -> torch.Tensor:
            params = self._shared(m, tasks) if pre_update else self._adapt(m, supports, tasks, create_graph)
            mean, log_std = self._distribution(params, obs)
            return _per_task(losses.gaussian_kl, old_mean, old_log_std, mean, log_std, mask).mean()

        return kl

    def _shared(self, meta: Params, tasks: int) -> Params:
        """The policy parameters of ``meta`` repeated for ``tasks`` tasks (a leading dim, no copy)."""
        return {k: meta[k].expand(tasks, *meta[k].shape) for k in self.policy.params()}

    # -- Gauss-Newton Fisher-vector products ----------------------------------------------------------
    def _linearize(self, meta: Params, supports: Sequence[Batch], obs: torch.Tensor) -> _Linearization:
        """Cache the graphs of ``θ ↦ (μ, log σ)`` on ``obs [T, N, E, D]`` of the policies adapted from
        ``meta`` on ``supports`` (no inner step if empty), for the products :meth:`_jvp` and :meth:`_vjp`."""
        names = list(self.policy.params())
        constants = {k: v.detach() for k, v in meta.items()}
        params = self._shared(constants, obs.shape[1])
        steps: list[_InnerGraph] = []
        for step, batch in enumerate(supports):
            leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
            with torch.enable_grad():  # tasks are independent: the gradient of the sum is per task
                loss = self._task_losses(leaf, batch).sum()
                grads = torch.autograd.grad(
                    loss, list(leaf.values()), create_graph=not self.config.first_order
                )
            lr = self._lr(constants, step, True)
            steps.append(_InnerGraph(leaf, dict(zip(names, grads, strict=True)), lr))
            params = {k: (leaf[k] - _scaled(lr, k, g)).detach() for k, g in zip(names, grads, strict=True)}
        head = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            mean, log_std = self._distribution(head, obs)
        return self._with_transpose(_Linearization(steps, head, obs, mean, log_std, ()))

    @staticmethod
    def _with_transpose(lin: _Linearization) -> _Linearization:
        """Cache ``c ↦ J_headᵀ c`` as a graph in dummy cotangents ``c``: it is linear in ``c``, so its own
        reverse-mode product is ``J_head w``, without re-running the policy's forward pass."""
        with torch.enable_grad():
            dummies = (
                torch.zeros_like(lin.mean, requires_grad=True),
                torch.zeros_like(lin.log_std, requires_grad=True),
            )
            pulled = torch.autograd.grad(
                (lin.mean, lin.log_std), list(lin.head.values()), dummies, create_graph=True
            )
        return lin._replace(transpose=(dummies, pulled))

    def _vjp(self, lin: _Linearization, cotangents: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``Jᵀ c``: a cotangent ``c`` of ``(μ, log σ)`` pulled back through the inner steps to the
        meta-parameters (flat, in :meth:`meta_parameters` order). Per step ``θ_{k+1} = θ_k − α_k ⊙ g_k``:
        ``ū_k = ū_{k+1} − H_k (α_k ⊙ ū_{k+1})`` (``H_k`` the inner loss's Hessian, symmetric) and, with
        Meta-SGD, ``ᾱ_k = −Σ_tasks g_k ⊙ ū_{k+1}``."""
        names = list(lin.head)
        pulled = torch.autograd.grad(
            (lin.mean, lin.log_std), list(lin.head.values()), cotangents, retain_graph=True
        )
        u = dict(zip(names, pulled, strict=True))
        lr_grads: dict[str, list[torch.Tensor]] = {n: [] for n in self.inner_lrs}
        for step in reversed(lin.steps):
            for n in self.inner_lrs:
                lr_grads[n].insert(0, -(step.grads[n].detach() * u[n]).sum(0))
            if not self.config.first_order:
                hessian_u = torch.autograd.grad(
                    list(step.grads.values()),
                    list(step.params.values()),
                    [_scaled(step.lr, n, u[n]) for n in names],
                    retain_graph=True,
                )
                u = {n: u[n] - h for n, h in zip(names, hessian_u, strict=True)}
        return _flat([u[n].sum(0) for n in names] + [torch.stack(lr_grads[n]) for n in self.inner_lrs])

    def _jvp(self, lin: _Linearization, tangent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``J v``: a tangent ``v`` of the meta-parameters (flat) pushed forward through the inner steps,
        ``w_{k+1} = w_k − α_k ⊙ H_k w_k − v_{α_k} ⊙ g_k``, to ``(μ, log σ)``. Every product reuses a cached
        graph: ``H_k w`` is the reverse-mode product of the symmetric Hessian, and the policy's own
        Jacobian is the transpose of the (linear) pull-back ``c ↦ J_headᵀ c``."""
        names = list(lin.head)
        v = _unflat(tangent, self.meta_parameters())
        tasks = lin.mean.shape[1]
        w = {n: v[n].expand(tasks, *v[n].shape) for n in names}
        for k, step in enumerate(lin.steps):
            new = dict(w)
            if not self.config.first_order:
                hessian_w = torch.autograd.grad(
                    list(step.grads.values()),
                    list(step.params.values()),
                    [w[n] for n in names],
                    retain_graph=True,
                )
                new = {n: new[n] - _scaled(step.lr, n, h) for n, h in zip(names, hessian_w, strict=True)}
            for n in self.inner_lrs:
                new[n] = new[n] - v[LR_PREFIX + n][k] * step.grads[n].detach()
            w = new
        dummies, pulled = lin.transpose
        d_mean, d_log_std = torch.autograd.grad(pulled, dummies, [w[n] for n in names], retain_graph=True)
        return d_mean, d_log_std

    def _gauss_newton_terms(
        self, supports: Sequence[Batch], query: Batch, old: OldPolicy
    ) -> tuple[float, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """The surrogate at θ_old, its gradient and ``v ↦ ∇²KL v`` as the Gauss-Newton product ``Jᵀ M J v``.

        One linearization of the adapted policies on the query serves the gradient (``Jᵀ ∂L/∂(μ, log σ)``)
        and, for the adapted KL on every episode, the products as well. ``M`` is the Hessian of
        ``mean_i mean_{t,e} KL(π_old ‖ π)`` in ``(μ, log σ)`` at ``π = π_old``: ``1/σ²`` on the means and
        ``2`` on the log standard deviations, weighted by each step's share of its task's mean.
        """
        cfg = self.config
        meta = self.meta_parameters()
        tasks = query.episodes.obs.shape[1]
        chunk = cfg.fvp_task_chunk or tasks
        loss, loss_grad = 0.0, torch.zeros(())
        pieces: list[tuple[_Linearization, torch.Tensor, torch.Tensor]] = []
        for first in range(0, tasks, chunk):  # a chunk's products stay in cache (see fvp_task_chunk)
            part = slice(first, min(first + chunk, tasks))
            sub_supports = [_task_slice(b, part) for b in supports]
            sub_query = _task_slice(query, part)
            sub_old = OldPolicy(*(_task_major(t[:, part]) for t in old))
            ep = sub_query.episodes
            lin = self._linearize(meta, sub_supports, ep.obs)
            with torch.enable_grad():  # the chunk's share of the mean over tasks
                log_probs = losses.gaussian_log_prob(lin.mean, lin.log_std, ep.actions)
                sub_loss = self._ratio_loss(log_probs, sub_old, sub_query) * (ep.obs.shape[1] / tasks)
                cotangents = torch.autograd.grad(sub_loss, (lin.mean, lin.log_std), retain_graph=True)
            loss += float(sub_loss.detach())
            loss_grad = loss_grad + self._vjp(lin, (cotangents[0].detach(), cotangents[1].detach()))

            pre_update = cfg.kl_constraint == "pre_update"
            episodes = (sub_supports[0] if sub_supports else sub_query).episodes if pre_update else ep
            keep = max(1, math.ceil(episodes.obs.shape[2] * cfg.fvp_subsample))
            obs, mask = episodes.obs[:, :, :keep], episodes.mask[:, :, :keep]
            if pre_update:
                constrained = self._linearize(meta, [], obs)
            elif keep < ep.obs.shape[2]:
                with torch.enable_grad():
                    mean, log_std = self._distribution(lin.head, obs)
                constrained = self._with_transpose(lin._replace(obs=obs, mean=mean, log_std=log_std))
            else:
                constrained = lin
            weight = (mask / (mask.sum((0, 2)).clamp(min=1.0) * tasks)[None, :, None])[..., None]
            pieces.append((constrained, weight * torch.exp(-2 * constrained.log_std.detach()), 2 * weight))

        def fisher_product(v: torch.Tensor) -> torch.Tensor:
            total = torch.zeros_like(v)
            for constrained, curvature_mean, curvature_log_std in pieces:
                d_mean, d_log_std = self._jvp(constrained, v)
                total = total + self._vjp(
                    constrained, (curvature_mean * d_mean, curvature_log_std * d_log_std)
                )
            return distributed.all_reduce_mean(total)  # the meta-batch's mean over ranks' task shards

        return distributed.all_reduce_scalar(loss), distributed.all_reduce_mean(loss_grad), fisher_product

    def _trpo_step(self, supports: Sequence[Batch], query: Batch, old: OldPolicy) -> dict[str, float]:
        """One TRPO step on the meta-objective (Schulman et al. 2015, arXiv:1502.05477; MAML §5.3).

        The trust region bounds the KL of ``config.kl_constraint``; conjugate gradient's Fisher-vector
        products use the first ``config.fvp_subsample`` of each task's episodes (the gradient, the step
        length and the line search use all of them). Data-parallel (``metarl.distributed``): the surrogate,
        its gradient, every Fisher-vector product and the line search's surrogate and KL are averaged over
        the ranks' task shards, so every rank runs the same conjugate gradient and takes the same step.
        """
        cfg = self.config
        meta = self.meta_parameters()
        leaves = list(meta.values())
        adapted_kl = cfg.kl_constraint == "adapted"
        full_kl = None if adapted_kl else self._constraint_kl(supports, query, old, 1.0)

        def surrogate_and_kl(m: Params, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
            log_probs, kl = self._query_terms(m, supports, query, old, create_graph)
            return self._ratio_loss(log_probs, old, query), kl if full_kl is None else full_kl(m, False)

        start = time.perf_counter()
        if cfg.fvp == "gauss_newton":
            loss_before, loss_grad, fisher_product = self._gauss_newton_terms(supports, query, old)
            gradient_s = time.perf_counter() - start
        else:
            loss, kl = surrogate_and_kl(meta, not cfg.first_order)
            loss_before = distributed.all_reduce_scalar(loss.detach())
            loss_grad = _flat(torch.autograd.grad(loss, leaves, retain_graph=True))
            loss_grad = distributed.all_reduce_mean(loss_grad)  # over the ranks' task shards
            gradient_s = time.perf_counter() - start
            if not (adapted_kl and cfg.fvp_subsample == 1):  # else: the KL above, graph and all
                kl = self._constraint_kl(supports, query, old, cfg.fvp_subsample)(meta, not cfg.first_order)
            kl_grad = _flat(torch.autograd.grad(kl, leaves, create_graph=True))

            def fisher_product(v: torch.Tensor) -> torch.Tensor:  # ∇²KL v by double backward
                product = _flat(torch.autograd.grad(kl_grad @ v, leaves, retain_graph=True))
                return distributed.all_reduce_mean(product)  # over the ranks' task shards

        def fisher_vector(v: torch.Tensor) -> torch.Tensor:  # (∇²KL + damping·I) v
            return fisher_product(v) + cfg.cg_damping * v

        direction = optim.conjugate_gradient(fisher_vector, -loss_grad, cfg.cg_iters)
        step = optim.trust_region_step(direction, fisher_vector(direction), cfg.max_kl)
        theta_old = _flat(leaves).detach()
        search_start = time.perf_counter()

        def evaluate(fraction: float) -> tuple[float, float]:
            with torch.no_grad():
                new_loss, new_kl = surrogate_and_kl(_unflat(theta_old + fraction * step, meta), False)
                new_loss, new_kl = distributed.all_reduce_mean(torch.stack([new_loss, new_kl])).tolist()
            return new_loss, new_kl

        result = optim.backtracking_line_search(
            evaluate, loss_before, cfg.max_kl, cfg.line_search_steps, cfg.line_search_decay
        )
        with torch.no_grad():
            accepted = _unflat(theta_old + result.fraction * step, meta)
            for leaf, new in zip(leaves, accepted.values(), strict=True):
                leaf.copy_(new)
        return {
            "losses/outer_loss": loss_before,
            "losses/surrogate_improvement": loss_before - result.loss,
            "losses/kl": result.constraint,
            "losses/step_fraction": result.fraction,
            "losses/line_search_evals": float(result.evaluations),
            "time/outer_gradient_s": gradient_s,
            "time/outer_cg_s": search_start - start - gradient_s,
            "time/outer_line_search_s": time.perf_counter() - search_start,
        }

    def _ppo_step(self, supports: Sequence[Batch], query: Batch, old: OldPolicy) -> dict[str, float]:
        """``ppo_epochs`` Adam steps on the clipped meta-surrogate, re-adapting from θ each epoch (ProMP)."""
        cfg = self.config
        ep = query.episodes
        losses_seen = []
        for _ in range(cfg.ppo_epochs):
            meta = self.meta_parameters()
            log_probs, _ = self._query_terms(meta, supports, query, old, not cfg.first_order)
            loss = _per_task(
                losses.ppo_clip_loss, log_probs, old.log_probs, query.advantages, ep.mask, clip=cfg.ppo_clip
            ).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.all_reduce_grads_(self.meta_parameters().values())
            self.optimizer.step()
            losses_seen.append(float(loss.detach()))
        ratio = torch.exp(log_probs.detach() - old.log_probs)
        clipped = ((ratio - 1).abs() > cfg.ppo_clip).float()
        return {
            "losses/outer_loss": losses_seen[0],
            "losses/clip_fraction": float((clipped * ep.mask).sum() / ep.mask.sum()),
            **self._after_update(supports, query, old),
        }

    def _vpg_step(self, supports: Sequence[Batch], query: Batch, old: OldPolicy) -> dict[str, float]:
        """One Adam step on the REINFORCE meta-objective ``mean_i L_{T_i}(θ'_i(θ))``."""
        log_probs, _ = self._query_terms(
            self.meta_parameters(), supports, query, old, not self.config.first_order
        )
        ep = query.episodes
        loss = _per_task(losses.vpg_loss, log_probs, query.advantages, ep.mask).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_grads_(self.meta_parameters().values())
        self.optimizer.step()
        return {"losses/outer_loss": float(loss.detach()), **self._after_update(supports, query, old)}

    def _after_update(self, supports: Sequence[Batch], query: Batch, old: OldPolicy) -> dict[str, float]:
        """Surrogate improvement and KL of the adapted policies, measured after an Adam-based update."""
        with torch.no_grad():
            log_probs, kl = self._query_terms(self.meta_parameters(), supports, query, old, False)
            after = self._ratio_loss(log_probs, old, query)
            before = self._ratio_loss(old.log_probs, old, query)
        return {"losses/surrogate_improvement": float(before - after), "losses/kl": float(kl)}

    # -- persistence ----------------------------------------------------------------------------------
    def generators(self) -> tuple[RandomGenerator, RandomGenerator]:
        """The action noise and the environments' seeds (batched envs and gymnasium copies draw from it)."""
        return self.generator, self.sampler.env_rng

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "inner_lrs": {k: v.detach().clone() for k, v in self.inner_lrs.items()},
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "env_rng": self.sampler.env_rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        if set(state["inner_lrs"]) != set(self.inner_lrs):
            raise ValueError("checkpoint and config disagree on learn_inner_lr (learned inner step sizes)")
        with torch.no_grad():
            for name, lr in self.inner_lrs.items():
                lr.copy_(state["inner_lrs"][name])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.sampler.env_rng.bit_generator.state = state["env_rng"]


def build(config: Any, device: torch.device) -> tuple[FamilyTaskSampler, MAMLRL]:
    """The registry's builder: the task family of ``config.env``, a batched sampler and the learner.

    The sampler steps the family through :class:`metarl.rollouts.BatchedFamily`: its own ``make_batched``
    when it has one, gymnasium copies otherwise (any family that follows the contract of ``envs/base.py``).
    """
    algo, env, seed = config.algo, config.env, config.run.seed
    make_env = env_factory(env.id, env.kwargs, env.max_episode_steps)
    probe = make_env()
    sampler = RolloutSampler(make_env, horizon_of(probe), algo.rollouts_per_task, device, seed)
    return FamilyTaskSampler(probe), MAMLRL(algo, sampler, seed)
