"""MAML, FOMAML, Meta-SGD and MAML++ for supervised few-shot learning (classification, sinusoid regression).

Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
arXiv:1703.03400, Algorithm 2. For each task ``T_i`` of a meta-batch, adapt the meta-parameters θ with
``K`` gradient steps on the support loss, ``θ'_i = θ − α ∇_θ L^{support}_{T_i}(θ)``, then update θ with Adam
on the query loss of the adapted parameters, ``Σ_i L^{query}_{T_i}(θ'_i(θ))``. The gradient flows through the
inner update (second order); ``first_order`` stops it at ``∇L`` (FOMAML, §5.2). ``learn_inner_lr`` makes α a
per-parameter meta-parameter (Meta-SGD: Li et al. 2017, arXiv:1707.09835).

The inner loops of all tasks are one ``torch.func.vmap`` over the task dimension of
``torch.func.grad`` of a ``functional_call`` — no per-task Python loop; ``experiments/
benchmark_maml_supervised.py`` compares it with the per-task loop of learn2learn/higher: 8–12× faster for
the sinusoid MLP on CPU; for conv4 on CPU 1.2–1.3× faster on the reference code's training episodes (1 query
per class) but slower on 15-query episodes, where the per-task weights of the query pass become one large
grouped convolution — ``vectorize = false`` selects the loop there, with identical gradients.

Networks (§5.2): the conv4 of Vinyals et al. (64 filters 3×3, BatchNorm, ReLU, 2×2 max-pool; ×4) with a
linear head for Omniglot, and a 2×40 ReLU MLP for sinusoids. **BatchNorm as in the MAML paper**: batch
statistics in training *and* at test, no running averages (``track_running_stats=False``, the reference
code's ``tf.contrib.layers.batch_norm`` with ``is_training`` left on). Each task's statistics come from its
own support (inner loop) or query (outer loss) batch — ``vmap`` keeps tasks separate — so the evaluation is
transductive over a query set, exactly as in the paper's numbers.

**Test-time steps beyond the trained ones.** Meta-training takes ``num_inner_steps`` steps of size α and
nothing rewards the steps after them being stable: the meta-learned θ of the sinusoid MLP sits where the
support loss is sharper than plain gradient descent with α tolerates (largest Hessian eigenvalue λ above
``2/α``: 81% of 5-shot held-out tasks, median λ = 236 against ``2/α = 200``, after the paper's 70 000
iterations), so ten test steps at α = 0.01 oscillate and, on a few tasks, diverge to inf/nan (see
``experiments/fewshot_report.md``). With ``extra_step_rule = "armijo"`` the first ``num_inner_steps`` test
steps are taken exactly as in training, and every later one is a backtracking line search on the
support loss (Armijo 1966; Nocedal & Wright, *Numerical Optimization*, Alg. 3.1): the step
``θ − s·α ⊙ ∇L`` with the largest ``s ∈ {1, ½, …, 2^−max_backtracks}`` that satisfies
``L(θ − s·α ⊙ ∇L) ≤ L(θ) − c·s·Σ α ⊙ (∇L)²`` (``c = 1e-4``), per task, or no step when none does. Where the
plain step already decreases the support loss enough it is taken unchanged; only support data is used.
``extra_step_rule = "fixed"`` (the default) is the paper's literal protocol (plain steps of α throughout).

**MAML++** (Antoniou, Edwards & Storkey 2019, "How to train your MAML", arXiv:1810.09502, §4), each an
option whose default is plain MAML (the defaults reproduce plain MAML bit for bit, tested):

- *MSL* (``multi_step_loss``): the outer loss is ``Σ_j w_j L^{query}(θ_j)`` over the inner steps ``j``, the
  weights annealed from uniform onto the last step (:func:`msl_weights`) over ``msl_iterations``.
- *BNWB* (``per_step_bn``): each BatchNorm layer has a weight and bias row per inner step, meta-learned and
  not adapted in the inner loop (the reference configs' ``enable_inner_loop_optimizable_bn_params =
  false``). *BNRS* is not implemented: the reference code (AntreasAntoniou/HowToTrainYourMAMLPytorch,
  ``MetaBatchNormLayer``) collects per-step running statistics but normalises with ``training=True``, i.e.
  with batch statistics, at test too — which is what this module does throughout.
- *LSLR* (``lslr``): a learned step size per parameter tensor and inner step.
- *DA* (``first_order_iterations``): first-order meta-gradients for the first iterations, then second order.
- *CA* (``cosine_lr_iterations``, ``min_outer_lr``): cosine annealing of Adam's step size.

The query pass after inner step ``j`` uses step ``j``'s BatchNorm row, as in the reference code; test-time
steps beyond ``num_inner_steps`` reuse the last row and the last LSLR step size.

Logged metrics (TensorBoard tags, x-axis = training tasks seen):

- ``meta_train/<metric>_pre_adapt``: query accuracy (or MSE) of θ, before adaptation.
- ``meta_train/<metric>_post_adapt``: query accuracy (or MSE) of the adapted θ'.
- ``meta_train/inner_lr_mean``: mean learned inner step size (Meta-SGD and LSLR only).
- ``meta_train/second_order``: 1 once DA switches to second-order meta-gradients (DA only).
- ``losses/msl_final_weight``: MSL's weight on the last step's query loss (MSL only).
- ``losses/outer_lr``: Adam's step size (CA only).
- ``losses/inner_loss``: the support loss at θ, averaged over tasks.
- ``losses/outer_loss``: the query loss at θ' (MSL: the weighted sum over steps), averaged over tasks (what
  Adam minimises).
- ``time/iteration_s``: the whole meta-iteration.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap

from envs.base import Task
from metarl import checks, distributed
from metarl.core import MetaLearner, TaskSampler
from metarl.data import FewShotBatch
from metarl.seeding import seeded

Params = dict[str, torch.Tensor]

#: Armijo's sufficient-decrease constant of the test-time line search (Nocedal & Wright's usual 1e-4).
ARMIJO_C = 1e-4
#: images of one conv4 evaluation pass at most. A 28×28 image's first activation is 200 KB (64 channels,
#: float32): 128 images keep every activation under glibc's 32 MB ceiling for reusing freed heap memory;
#: larger ones are fresh ``mmap`` pages that fault in on every op. Measured on 100 held-out 5-way 1-shot
#: episodes (75 queries each), one step, one CPU thread: 100 tasks per pass 84 s wall (32 s of it in the
#: kernel), capped at 128 images per pass 37 s (0.5 s); the accuracies are identical.
EVAL_IMAGES_PER_PASS = 128


@dataclasses.dataclass(frozen=True)
class MAMLSupervisedConfig:
    """Hyperparameters of supervised MAML; defaults are the paper's Omniglot 5-way settings (§5.2, App. A.1).

    Attributes:
        meta_batch_size: tasks per meta-iteration (32 for 5-way, 16 for 20-way; 25 for sinusoid).
        num_inner_steps: inner gradient steps during meta-training (1 for 5-way, 5 for 20-way and sinusoid 1).
        inner_lr: inner step size α (0.4 for 5-way Omniglot, 0.1 for 20-way, 0.01 for sinusoid).
        outer_lr: Adam step size of the meta-update (1e-3).
        first_order: FOMAML: drop the second-order term of the meta-gradient.
        learn_inner_lr: Meta-SGD: per-parameter inner step sizes learned by the outer loop (initialised to
            ``inner_lr``).
        network: ``"conv4"`` (images) or ``"mlp"`` (sinusoid, ``hidden_sizes``).
        hidden_channels: filters of each conv4 block (64).
        hidden_sizes: hidden layers of the MLP (2×40 ReLU).
        eval_chunk: at most this many tasks adapted at once at evaluation (memory and speed only: the numbers
            do not depend on it). Fewer are taken when the tasks' images would exceed
            :data:`EVAL_IMAGES_PER_PASS` per forward pass.
        vectorize: ``vmap`` the meta-step and the test-time adaptation over tasks (default); ``False``
            loops over tasks (same numbers, tested). The MLP is many times faster vmapped; the conv4
            meta-step on CPU is faster vmapped with 1 query per class and faster as a loop with 15
            (per-task weights become a grouped convolution under ``vmap``; see
            ``experiments/fewshot_report.md`` §4).
        extra_step_rule: how test-time adaptation steps after the first ``num_inner_steps`` are taken:
            ``"armijo"`` (backtracking line search on the support loss, see the module docstring) or
            ``"fixed"`` (plain steps of α, the paper's protocol; may diverge where θ is sharp).
        max_backtracks: halvings of the step the line search tries (down to ``2^−max_backtracks · α``).
        multi_step_loss: MAML++ MSL: the outer loss weighs the query loss after every inner step
            (:func:`msl_weights`), annealed onto the last step over ``msl_iterations``, then the last only.
        msl_iterations: meta-iterations of the MSL annealing (the reference configs: 20 epochs × 500).
        per_step_bn: MAML++ BNWB: BatchNorm weights and biases per inner step, meta-learned and left out of
            the inner loop (conv4 only; normalisation still uses batch statistics, see the module docstring).
        lslr: MAML++ LSLR: a learned inner step size per parameter tensor and inner step (initialised to
            ``inner_lr``); excludes ``learn_inner_lr``.
        first_order_iterations: MAML++ DA: first-order meta-gradients for the first this many
            meta-iterations, second order after (0: off; ``first_order`` keeps first order throughout).
        cosine_lr_iterations: MAML++ CA: Adam's step size follows a cosine from ``outer_lr`` to
            ``min_outer_lr`` over this many meta-iterations (0: constant ``outer_lr``).
        min_outer_lr: the floor of the cosine annealing (1e-5 in the reference configs).
    """

    meta_batch_size: int = 32
    num_inner_steps: int = 1
    inner_lr: float = 0.4
    outer_lr: float = 1e-3
    first_order: bool = False
    learn_inner_lr: bool = False
    network: Literal["conv4", "mlp"] = "conv4"
    hidden_channels: int = 64
    hidden_sizes: tuple[int, ...] = (40, 40)
    eval_chunk: int = 100
    vectorize: bool = True
    extra_step_rule: Literal["armijo", "fixed"] = "fixed"
    max_backtracks: int = 8
    multi_step_loss: bool = False
    msl_iterations: int = 10000
    per_step_bn: bool = False
    lslr: bool = False
    first_order_iterations: int = 0
    cosine_lr_iterations: int = 0
    min_outer_lr: float = 1e-5

    def __post_init__(self) -> None:
        checks.positive(self, "meta_batch_size", "inner_lr", "outer_lr", "hidden_channels", "eval_chunk")
        checks.positive(self, "msl_iterations", "min_outer_lr")
        checks.at_least(self, 0, "max_backtracks", "first_order_iterations", "cosine_lr_iterations")
        if self.lslr and self.learn_inner_lr:
            raise ValueError("lslr and learn_inner_lr are exclusive: per-step (LSLR) or Meta-SGD step sizes")
        if self.per_step_bn and self.network != "conv4":
            raise ValueError(f"per_step_bn needs network 'conv4' (BatchNorm), got {self.network!r}")
        if self.num_inner_steps < 1:
            raise ValueError(f"num_inner_steps must be >= 1, got {self.num_inner_steps}")
        if self.extra_step_rule not in ("armijo", "fixed"):
            raise ValueError(f"extra_step_rule must be 'armijo' or 'fixed', got {self.extra_step_rule!r}")


# -- networks --------------------------------------------------------------------------------------------
class BatchStatNorm(nn.Module):
    """BatchNorm that always normalises with the statistics of the batch it sees (MAML's BatchNorm).

    Written with plain tensor ops rather than ``nn.BatchNorm2d(track_running_stats=False)``: in torch 2.13
    the second-order gradient of ``F.batch_norm`` under ``vmap`` is wrong (off from the per-task
    loop by up to 7e-2; ``tests/test_fewshot_maml.py`` checks the two agree with this module).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)


class Conv4(nn.Module):
    """Four blocks of conv 3×3 (``hidden`` filters) → BatchNorm → ReLU → 2×2 max-pool, flattened
    (Vinyals et al. 2016; 28×28 → 64 features), then a linear head when ``out_features > 0``.

    ``track_running_stats=False`` gives MAML's BatchNorm (:class:`BatchStatNorm`: batch statistics always);
    ``True`` the usual running averages used in ``eval()`` mode (Prototypical / Matching Networks).
    """

    def __init__(
        self,
        image_shape: tuple[int, ...],
        hidden: int = 64,
        out_features: int = 0,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = image_shape[0]
        for _ in range(4):
            layers += [
                nn.Conv2d(channels, hidden, 3, padding=1),
                nn.BatchNorm2d(hidden) if track_running_stats else BatchStatNorm(hidden),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = hidden
        self.features = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():  # probe in eval mode: in training mode it would fold the statistics of this
            self.features.eval()  # batch of zeros into BatchNorm's running averages (and count it)
            self.feature_dim = self.features(torch.zeros(2, *image_shape)).shape[-1]
            self.features.train()
        self.head = nn.Linear(self.feature_dim, out_features) if out_features else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """ReLU MLP through ``sizes`` (input, hidden…, output)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# -- the learner -----------------------------------------------------------------------------------------
class MAMLState(NamedTuple):
    """Tasks being adapted: their batch, the fast weights of each (``[T, *shape]`` per adapted parameter)
    and the number of inner steps taken (it picks the per-step BatchNorm weights and step sizes)."""

    batch: FewShotBatch
    fast: Params
    steps: int = 0


def msl_weights(steps: int, iteration: int, anneal_iterations: int) -> torch.Tensor:
    """MAML++'s multi-step loss weights (Antoniou et al. 2019, arXiv:1810.09502, §4 "MSL"): one weight per
    inner step's query loss, ``[steps]``.

    They start uniform (``1/K``); every iteration the non-final weights lose ``1/(K·T)`` down to a floor of
    ``0.03/K`` and the final one gains what they lose, up to ``1 − (K−1)·0.03/K``, so after
    ``T = anneal_iterations`` nearly all the weight is on the last step (the reference code's schedule, there
    in epochs of 500 iterations).
    """
    decay = iteration / (steps * anneal_iterations)
    floor = 0.03 / steps
    weights = torch.full((steps,), max(1.0 / steps - decay, floor))
    weights[-1] = min(1.0 / steps + (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return weights


class MAMLSupervised(MetaLearner[FewShotBatch, MAMLState]):
    """MAML / FOMAML / Meta-SGD / MAML++ for classification (``accuracy``) or regression (``mse``).

    Args:
        config: the hyperparameters.
        tasks: an :class:`~metarl.data.EpisodeSampler` or :class:`~metarl.data.SinusoidSampler` (it turns
            tasks into :class:`~metarl.data.FewShotBatch` es).
        device: where the parameters live.
        ways: output classes (the head's width); 0 for regression.
        seed: initialisation seed.
    """

    step_unit = "gradient steps on the support set"

    def __init__(
        self, config: MAMLSupervisedConfig, tasks: TaskSampler, device: torch.device, ways: int, seed: int = 0
    ) -> None:
        self.config, self.tasks, self.device = config, tasks, device
        self.regression = ways == 0
        self.metric_name, self.higher_is_better = ("mse", False) if self.regression else ("accuracy", True)
        with seeded(seed):
            if config.network == "mlp":
                self.net: nn.Module = mlp((1, *config.hidden_sizes, 1 if self.regression else ways))
            else:
                shape = tuple(tasks.dataset.images.shape[1:])  # type: ignore[attr-defined]
                self.net = Conv4(shape, config.hidden_channels, ways or 1, track_running_stats=False)
        self.net.to(device)
        steps = config.num_inner_steps
        # BNWB: BatchNorm weights and biases get one row per inner step and are meta-learned only
        self.bn_keys = frozenset(
            f"{name}.{p}"
            for name, module in self.net.named_modules()
            if isinstance(module, BatchStatNorm) and config.per_step_bn
            for p in ("weight", "bias")
        )
        self.params: Params = {
            k: (v.detach().repeat(steps, 1) if k in self.bn_keys else v.detach()).requires_grad_()
            for k, v in self.net.named_parameters()
        }
        self.adapted_keys = [k for k in self.params if k not in self.bn_keys]
        self.inner_lrs: Params = {
            k: torch.full_like(self.params[k], config.inner_lr).requires_grad_() for k in self.adapted_keys
        }
        # LSLR: one step size per adapted parameter tensor and inner step
        self.step_lrs: Params = {
            k: torch.full((steps,), config.inner_lr, device=device).requires_grad_()
            for k in self.adapted_keys
        }
        meta = list(self.params.values())
        meta += list(self.inner_lrs.values()) if config.learn_inner_lr else []
        meta += list(self.step_lrs.values()) if config.lslr else []
        self.optimizer = torch.optim.Adam(meta, lr=config.outer_lr)
        self.iteration = 0  # meta-iterations taken: the clock of MSL, DA and CA

    # -- the per-task math, vmapped over tasks ----------------------------------------------------------
    def weights(self, fast: Params, step: int) -> Params:
        """All network parameters at inner step ``step``: the fast weights, plus (``per_step_bn``) that
        step's BatchNorm weights and biases (the last step's beyond ``num_inner_steps``)."""
        if not self.bn_keys:
            return fast
        row = min(step, self.config.num_inner_steps - 1)
        return {**fast, **{k: self.params[k][row] for k in self.bn_keys}}

    def loss(self, params: Params, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> torch.Tensor:
        """Loss of one task's examples at inner step ``step``: cross-entropy, or MSE for regression."""
        out = functional_call(self.net, self.weights(params, step), (x,))
        return F.mse_loss(out, y) if self.regression else F.cross_entropy(out, y)

    def metric(self, params: Params, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> torch.Tensor:
        out = functional_call(self.net, self.weights(params, step), (x,))
        return F.mse_loss(out, y) if self.regression else (out.argmax(-1) == y).float().mean()

    def inner_step(
        self,
        params: Params,
        lrs: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        step: int = 0,
        first_order: bool = False,
    ) -> Params:
        """``θ' = θ − α ⊙ ∇_θ L(θ)`` for one task (``α`` per parameter, per tensor and step with LSLR, a
        constant by default); ``first_order`` stops the gradient through ``∇L`` (FOMAML)."""
        grads = grad(self.loss)(params, x, y, step)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        return {k: p - lrs[k] * grads[k] for k, p in params.items()}

    def line_search_step(
        self, params: Params, lrs: Params, x: torch.Tensor, y: torch.Tensor, step: int = 0
    ) -> Params:
        """``θ − s·α ⊙ ∇L(θ)`` for one task with the largest ``s = 2^−j`` (``j ≤ max_backtracks``) meeting
        Armijo's sufficient decrease on the support loss, and ``s = 0`` (no step) when none does.

        Every trial step is evaluated (a loop over the few step sizes, not over tasks or samples) and the
        largest passing one kept with ``torch.where``, so the rule vmaps over tasks; a non-finite trial
        loss never passes.
        """
        grads, loss = grad_and_value(self.loss)(params, x, y, step)
        decrease = sum((lrs[k] * grads[k] * grads[k]).sum() for k in grads).clamp_min(0.0)  # −∇L·d at s = 1
        scale = torch.zeros_like(loss)
        for j in range(self.config.max_backtracks, -1, -1):  # smallest step first: the largest passing wins
            s = 0.5**j
            trial = {k: p - s * lrs[k] * grads[k] for k, p in params.items()}
            scale = torch.where(self.loss(trial, x, y, step) <= loss - ARMIJO_C * s * decrease, s, scale)
        return {k: p - scale * lrs[k] * grads[k] for k, p in params.items()}

    def adapt_task(
        self, params: Params, lrs: Sequence[Params], x: torch.Tensor, y: torch.Tensor, first_order: bool
    ) -> list[Params]:
        """One task's fast weights after each of ``len(lrs)`` inner steps (step ``j`` uses ``lrs[j]``)."""
        trajectory = []
        for step, step_lrs in enumerate(lrs):
            params = self.inner_step(params, step_lrs, x, y, step, first_order)
            trajectory.append(params)
        return trajectory

    def step_sizes(self, step: int, detach: bool = False) -> Params:
        """The inner step sizes of step ``step``: LSLR's per-tensor scalars (the last step's beyond
        ``num_inner_steps``), Meta-SGD's per-parameter ones, or the constant ``inner_lr`` tensors."""
        c = self.config
        if c.lslr:
            row = min(step, c.num_inner_steps - 1)
            lrs = {k: v[row] for k, v in self.step_lrs.items()}
        else:
            lrs = self.inner_lrs
        learned = c.lslr or c.learn_inner_lr
        return {k: v.detach() for k, v in lrs.items()} if detach or not learned else lrs

    def lrs(self) -> Params:
        """The first inner step's step sizes (all steps' without LSLR)."""
        return self.step_sizes(0)

    def outer_weights(self) -> torch.Tensor | None:
        """MSL's per-step query-loss weights (on the CPU) while they are annealed, else ``None`` (final
        step only)."""
        c = self.config
        if not c.multi_step_loss or self.iteration >= c.msl_iterations:
            return None
        return msl_weights(c.num_inner_steps, self.iteration, c.msl_iterations)

    def first_order_now(self) -> bool:
        """FOMAML, or DA's first-order phase (the first ``first_order_iterations`` meta-iterations)."""
        return self.config.first_order or self.iteration < self.config.first_order_iterations

    def adapted_query_losses(
        self, batch: FewShotBatch, vectorized: bool = True
    ) -> tuple[torch.Tensor, Params]:
        """Outer loss ``[T]`` of each task and its adapted parameters (``[T, *shape]``): the query loss after
        the last inner step, or with MSL the weighted sum of the query losses after every step.

        ``vectorized=False`` runs the same computation as a per-task Python loop (the learn2learn/higher
        style); the benchmark and the tests compare the two.
        """
        lrs = [self.step_sizes(step) for step in range(self.config.num_inner_steps)]
        first_order, weights = self.first_order_now(), self.outer_weights()
        weights = None if weights is None else weights.to(self.device)

        def task(
            params: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
        ) -> tuple[torch.Tensor, Params]:
            trajectory = self.adapt_task(params, lrs, sx, sy, first_order)
            if weights is None:
                return self.loss(trajectory[-1], qx, qy, len(lrs) - 1), trajectory[-1]
            losses = torch.stack([self.loss(fast, qx, qy, step) for step, fast in enumerate(trajectory)])
            return (weights * losses).sum(), trajectory[-1]

        theta = {k: self.params[k] for k in self.adapted_keys}
        data = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        if vectorized:
            return vmap(task, in_dims=(None, 0, 0, 0, 0))(theta, *data)
        per_task = [task(theta, *(d[i] for d in data)) for i in range(batch.num_tasks)]
        fast = {k: torch.stack([f[k] for _, f in per_task]) for k in theta}
        return torch.stack([loss for loss, _ in per_task]), fast

    def meta_loss(self, batch: FewShotBatch, vectorized: bool = True) -> torch.Tensor:
        """The meta-objective: mean outer loss of the adapted parameters over the tasks of ``batch``."""
        return self.adapted_query_losses(batch, vectorized)[0].mean()

    # -- inner loop of the interface ---------------------------------------------------------------------
    def _batch(self, tasks: Sequence[Task], split: str) -> FewShotBatch:
        if self.regression:
            return self.tasks.batch(tasks, self.device, split)  # type: ignore[attr-defined]
        return self.tasks.batch(tasks, self.device)  # type: ignore[attr-defined]

    def initial(self, tasks: Sequence[Task]) -> MAMLState:
        n = len(tasks)
        fast = {k: self.params[k].detach().expand(n, *self.params[k].shape) for k in self.adapted_keys}
        return MAMLState(self._batch(tasks, "test"), fast)

    def support(self, tasks: Sequence[Task], adapted: MAMLState, step: int) -> FewShotBatch:
        return adapted.batch

    def _per_task(self, fn: Callable[..., Any], fast: Params, *data: torch.Tensor) -> Any:
        """``fn(params_i, *data_i)`` for every task ``i`` of ``fast`` (``[T, *shape]``) and ``data``
        (``[T, ...]``), stacked: one ``vmap`` when ``config.vectorize``, else a loop over tasks, whose
        per-task weights stay dense convolutions (faster for conv4 on CPU; see ``vectorize``)."""
        if self.config.vectorize:
            return vmap(fn)(fast, *data)
        outs = [fn({k: v[i] for k, v in fast.items()}, *(d[i] for d in data)) for i in range(len(data[0]))]
        if isinstance(outs[0], dict):
            return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}
        return torch.stack(outs)

    def _eval_chunk(self, images_per_task: int) -> int:
        """Tasks per evaluation pass: ``eval_chunk``, capped so that a pass holds at most
        :data:`EVAL_IMAGES_PER_PASS` images (at least one task)."""
        if self.config.network != "conv4":
            return self.config.eval_chunk
        return max(1, min(self.config.eval_chunk, EVAL_IMAGES_PER_PASS // max(images_per_task, 1)))

    def adapt(self, adapted: MAMLState, support: FewShotBatch, step: int) -> MAMLState:
        """Adaptation step ``step``: the trained update for the first ``num_inner_steps``, then the
        ``extra_step_rule`` (see the module docstring)."""
        lrs = self.step_sizes(step, detach=True)
        chunk = self._eval_chunk(support.support_x.shape[1])
        trained = step < self.config.num_inner_steps or self.config.extra_step_rule == "fixed"
        rule = self.inner_step if trained else self.line_search_step

        def step_fn(params: Params, x: torch.Tensor, y: torch.Tensor) -> Params:
            return rule(params, lrs, x, y, step)

        pieces = []
        with torch.no_grad():  # torch.func.grad still differentiates inside; no graph is kept outside
            for i in range(0, support.num_tasks, chunk):
                fast = {k: v[i : i + chunk] for k, v in adapted.fast.items()}
                x, y = support.support_x[i : i + chunk], support.support_y[i : i + chunk]
                pieces.append(self._per_task(step_fn, fast, x, y))
        fast = {k: torch.cat([p[k] for p in pieces]) for k in adapted.fast}
        return adapted._replace(fast=fast, steps=step + 1)

    @torch.no_grad()
    def evaluate(self, tasks: Sequence[Task], adapted: MAMLState) -> torch.Tensor:
        batch = adapted.batch
        chunk = self._eval_chunk(batch.query_x.shape[1])
        step = max(adapted.steps - 1, 0)  # the query pass uses the BatchNorm row of the last step taken

        def metric(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.metric(params, x, y, step)

        return torch.cat(
            [
                self._per_task(
                    metric,
                    {k: v[i : i + chunk] for k, v in adapted.fast.items()},
                    batch.query_x[i : i + chunk],
                    batch.query_y[i : i + chunk],
                )
                for i in range(0, batch.num_tasks, chunk)
            ]
        )

    # -- outer loop --------------------------------------------------------------------------------------
    def outer_lr(self) -> float:
        """Adam's step size now: ``outer_lr``, or CA's cosine from it to ``min_outer_lr`` over
        ``cosine_lr_iterations`` (then held at ``min_outer_lr``)."""
        c = self.config
        if not c.cosine_lr_iterations:
            return c.outer_lr
        progress = min(self.iteration, c.cosine_lr_iterations) / c.cosine_lr_iterations
        return c.min_outer_lr + 0.5 * (c.outer_lr - c.min_outer_lr) * (1.0 + math.cos(math.pi * progress))

    def meta_update(self, tasks: Sequence[Task]) -> dict[str, float]:
        start = time.perf_counter()
        c = self.config
        if c.cosine_lr_iterations:
            for group in self.optimizer.param_groups:
                group["lr"] = self.outer_lr()
        batch = self._batch(tasks, "train")
        with torch.no_grad():
            theta = {k: self.params[k].detach() for k in self.adapted_keys}
            inner_loss = vmap(self.loss, in_dims=(None, 0, 0))(theta, batch.support_x, batch.support_y)
            pre = vmap(self.metric, in_dims=(None, 0, 0))(theta, batch.query_x, batch.query_y)
        weights = self.outer_weights()
        query_losses, fast = self.adapted_query_losses(batch, c.vectorize)
        outer_loss = query_losses.mean()
        self.optimizer.zero_grad(set_to_none=True)
        outer_loss.backward()
        distributed.all_reduce_grads_(self.optimizer)  # data-parallel: the meta-batch's mean gradient
        self.optimizer.step()
        last = c.num_inner_steps - 1

        def final_metric(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.metric(params, x, y, last)

        with torch.no_grad():
            post = vmap(final_metric)({k: v.detach() for k, v in fast.items()}, batch.query_x, batch.query_y)
        m = self.metric_name
        metrics = {
            "env_steps": float(len(tasks)),
            f"meta_train/{m}_pre_adapt": float(pre.mean()),
            f"meta_train/{m}_post_adapt": float(post.mean()),
            "losses/inner_loss": float(inner_loss.mean()),
            "losses/outer_loss": float(outer_loss.detach()),
            "time/iteration_s": time.perf_counter() - start,
        }
        if c.learn_inner_lr or c.lslr:
            lrs = self.step_lrs if c.lslr else self.inner_lrs
            total = sum(v.numel() for v in lrs.values())
            metrics["meta_train/inner_lr_mean"] = float(sum(v.detach().sum() for v in lrs.values()) / total)
        if c.multi_step_loss:
            metrics["losses/msl_final_weight"] = 1.0 if weights is None else float(weights[-1])
        if c.first_order_iterations:
            metrics["meta_train/second_order"] = float(not self.first_order_now())
        if c.cosine_lr_iterations:
            metrics["losses/outer_lr"] = self.optimizer.param_groups[0]["lr"]
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(
                f"non-finite MAML metrics {metrics}; lower algo.inner_lr or algo.outer_lr"
            )
        self.iteration += 1
        return metrics

    def generators(self) -> tuple[()]:
        """None: episodes carry their data and the learner draws no random numbers."""
        return ()

    def state_dict(self) -> dict[str, Any]:
        return {
            "params": {k: v.detach().clone() for k, v in self.params.items()},
            "inner_lrs": {k: v.detach().clone() for k, v in self.inner_lrs.items()},
            "step_lrs": {k: v.detach().clone() for k, v in self.step_lrs.items()},
            "optimizer": self.optimizer.state_dict(),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; keys written by later versions (``step_lrs``, ``iteration``) take
        their initial values when missing, so plain-MAML checkpoints from before MAML++ still load."""
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v)
            for k, v in state["inner_lrs"].items():
                self.inner_lrs[k].copy_(v)
            for k, v in state.get("step_lrs", {}).items():
                self.step_lrs[k].copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state.get("iteration", 0))


def build(config: Any, device: torch.device) -> tuple[TaskSampler, MAMLSupervised]:
    """The registry's builder: tasks of ``config.data``, a learner of ``config.algo``."""
    from metarl.data import build_sampler
    from metarl.errors import ConfigError

    data, algo = config.data, config.algo
    regression = data.dataset == "sinusoid"
    if regression != (algo.network == "mlp"):
        raise ConfigError("algo.network must be 'mlp' for data.dataset 'sinusoid' and 'conv4' for images")
    if not regression and (data.train_ways or data.ways) != data.ways:
        raise ConfigError(
            "maml_supervised's head has data.ways outputs: data.train_ways must equal data.ways"
        )
    tasks = build_sampler(data)
    return tasks, MAMLSupervised(algo, tasks, device, 0 if regression else data.ways, config.run.seed)
