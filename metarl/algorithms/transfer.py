"""Transfer-learning baselines: pretrain one network on all training data, then fine-tune it per task.

The course material's comparison point for meta-learning (and the "pretrained" baselines of Finn et al.
2017 §5 and Chen et al. 2019, "A Closer Look at Few-shot Classification", arXiv:1904.04232). Meta-training
is ordinary supervised learning: the support and query images of each training episode, labelled with
their *data-set* class (one softmax over every training class), train a conv4 + linear classifier. At test,
each episode gets a fresh zero-initialised ``N``-way head on top of the pretrained features, and every
adaptation step is ``steps_per_adapt`` full-batch gradient steps on the support set, for all episodes at once
(``vmap`` over episodes):

- ``mode = "linear"`` — (a) frozen features, only the new head is fitted (Chen et al.'s *Baseline*);
- ``mode = "finetune"`` — (b) features and head are fine-tuned together;
- ``mode = "regularized"`` — (c) fine-tune everything on ``L = λ·L_pretrain + (1 − λ)·L_target``, where
  ``L_pretrain`` is the pretrained head's loss on a fixed batch of training-class images (a replay term that
  keeps the features close to what they were pretrained for).

BatchNorm uses the running statistics of pretraining during fine-tuning (``eval`` mode), so an episode's
prediction does not depend on its other queries (a never-pretrained network: see below).

**Sinusoid regression** (``data.dataset = "sinusoid"``) is the "pretrained" baseline of Finn et al. (2017,
arXiv:1703.03400) §5.1 and Fig. 2: one MLP ``1 → hidden_sizes (ReLU) → 1`` regresses the support and query
points of every sampled training task jointly (MSE, Adam), i.e. it learns the mean function of the task
distribution. The features are the hidden layers and the head is the last linear layer; at test the head is
the *pretrained* output layer (regression keeps the output space, so it is not reset), fine-tuned per task
in the same three modes, with ``L_pretrain`` the MSE of the fine-tuned network (features and head) on a
fixed replay batch of training-task points. ``evaluate`` returns the query MSE (lower is better).

**Learning from scratch.** A learner that never ran ``meta_update`` (0 pretraining iterations) in mode
``"finetune"`` fits a freshly initialised network on each support set: the MLP with its initial output
layer, or conv4 with a zero head. Such a conv4 has no running statistics (only BatchNorm's placeholders,
under which its features shrink to ≈ 0.04 and 100 SGD steps cannot fit 5 support images), so every
BatchNorm layer normalises with the statistics of the task's support set at the current weights — the batch
statistics a fresh network trained on that support set uses; the queries never enter them
(:meth:`Transfer.support_statistics`).

Logged metrics (TensorBoard tags, x-axis = training tasks seen):

- ``meta_train/accuracy_pre_adapt``: chance, ``1/N`` (a new head knows nothing); for sinusoids
  ``meta_train/mse_pre_adapt``, the query MSE of the pretrained network on the training tasks.
- ``meta_train/accuracy_post_adapt``: the pretraining classifier's accuracy over its training batch; for
  sinusoids ``meta_train/mse_post_adapt``, the query MSE after one adaptation step on each task's support.
- ``losses/loss``: the pretraining cross-entropy (MSE for sinusoids).
- ``time/iteration_s``: the whole meta-iteration.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from envs.base import Task
from metarl import checks, distributed
from metarl.algorithms.maml_supervised import Conv4
from metarl.core import MetaLearner
from metarl.data import EpisodeSampler, FewShotBatch, SinusoidSampler
from metarl.seeding import seeded

Params = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """Hyperparameters of the transfer baselines (Chen et al. 2019 §3 use Adam 1e-3 to pretrain and
    100 fine-tuning steps on the support set). The fine-tuning defaults are for images; the sinusoid preset
    takes MAML's α = 0.01 and one SGD step per adaptation step.

    Attributes:
        meta_batch_size: training episodes pooled into one pretraining mini-batch.
        lr: Adam step size of pretraining (1e-3).
        mode: ``"linear"`` (a), ``"finetune"`` (b) or ``"regularized"`` (c).
        finetune_lr: SGD step size of test-time fine-tuning (of the new head, and of everything by default).
        features_lr_ratio: step size of the pretrained feature layers as a fraction of ``finetune_lr`` in
            modes (b) and (c) (1: one step size for all). Fine-tuning pretrained layers with a smaller
            step than a fresh head is the usual discriminative fine-tuning (Howard & Ruder 2018,
            arXiv:1801.06146 §3.2): on Omniglot conv4, 10 SGD steps at 0.1 on every layer wreck the
            pretrained features (the running BatchNorm statistics no longer match them), while the fresh
            head needs 0.1 to move.
        steps_per_adapt: SGD steps per adaptation step of the interface.
        reg_lambda: λ of the regularized loss (``"regularized"`` only).
        replay_examples: training-class images in the fixed ``L_pretrain`` batch (for sinusoids: points,
            one from each of as many training tasks).
        hidden_channels: filters of each conv4 block (64), for images.
        hidden_sizes: hidden layers of the regression MLP (2×40 ReLU, as MAML's), for sinusoids.
        eval_chunk: episodes fine-tuned at once at evaluation (memory only).
    """

    meta_batch_size: int = 8
    lr: float = 1e-3
    mode: Literal["linear", "finetune", "regularized"] = "linear"
    finetune_lr: float = 0.1
    features_lr_ratio: float = 1.0
    steps_per_adapt: int = 10
    reg_lambda: float = 0.5
    replay_examples: int = 64
    hidden_channels: int = 64
    hidden_sizes: tuple[int, ...] = (40, 40)
    eval_chunk: int = 50

    def __post_init__(self) -> None:
        checks.positive(
            self,
            "meta_batch_size",
            "lr",
            "finetune_lr",
            "features_lr_ratio",
            "steps_per_adapt",
            "replay_examples",
            "eval_chunk",
        )
        if not 0.0 <= self.reg_lambda < 1.0:
            raise ValueError(f"reg_lambda must be in [0, 1), got {self.reg_lambda}")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes must be a non-empty list of sizes >= 1, got {self.hidden_sizes}")


class RegressionMLP(nn.Module):
    """``1 → hidden_sizes (ReLU) → 1``, split like :class:`Conv4`: ``features`` (the hidden layers, ending in
    a ReLU) and ``head`` (the output layer)."""

    def __init__(self, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 1
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.features = nn.Sequential(*layers)
        self.feature_dim = width
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TransferState(NamedTuple):
    """Tasks being fine-tuned: their batch, ``ways`` (0 for regression), the per-task features ``[T, …]``
    and heads."""

    batch: FewShotBatch
    ways: int
    features: Params
    head: Params


class Transfer(MetaLearner[FewShotBatch, TransferState]):
    """Pretrain-then-fine-tune baselines behind the meta-learner interface (see the module docstring).

    Args:
        config: the hyperparameters.
        tasks: an :class:`~metarl.data.EpisodeSampler` (images: conv4, ``accuracy``) or a
            :class:`~metarl.data.SinusoidSampler` (regression: the MLP, ``mse``).
        device: where the parameters live.
        seed: draws the fixed replay batch of the regularised loss.
    """

    step_unit = "fine-tuning steps on the support set"

    def __init__(
        self,
        config: TransferConfig,
        tasks: EpisodeSampler | SinusoidSampler,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        self.config, self.tasks, self.device = config, tasks, device
        self.regression = isinstance(tasks, SinusoidSampler)
        self.metric_name, self.higher_is_better = ("mse", False) if self.regression else ("accuracy", True)
        rng = np.random.default_rng(seed)  # the replay batch of the regularised loss
        self.net: Conv4 | RegressionMLP
        if isinstance(tasks, SinusoidSampler):
            self.net = RegressionMLP(config.hidden_sizes).to(device)
            replay_tasks = tasks.sample(config.replay_examples, split="train", rng=rng)
            replay = tasks.batch(replay_tasks, device, split="train")
            self.replay_x, self.replay_y = replay.support_x[:, 0], replay.support_y[:, 0]  # [R, 1] each
        else:
            self.class_to_label = {int(c): i for i, c in enumerate(tasks.classes["train"])}
            shape = tuple(tasks.dataset.images.shape[1:])
            self.net = Conv4(shape, config.hidden_channels, out_features=len(self.class_to_label)).to(device)
            classes = rng.choice(tasks.classes["train"], size=config.replay_examples)
            idx = [int(rng.choice(tasks.dataset.class_examples[int(c)])) for c in classes]
            self.replay_x = tasks.dataset.images[idx].to(device=device, dtype=torch.float32) / 255.0
            self.replay_y = torch.as_tensor([self.class_to_label[int(c)] for c in classes], device=device)
        distributed.sync_batch_norm_(self.net)  # pretraining's BatchNorm batch: the meta-batch of every rank
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)

    # -- per-task fine-tuning, vmapped ----------------------------------------------------------------
    def predict(self, features: Params, head: Params, x: torch.Tensor, x_stats: torch.Tensor) -> torch.Tensor:
        """Logits (images) or regression outputs of one task's fine-tuned network on ``x``; ``x_stats`` (the
        task's support inputs) only matters for a never-pretrained conv4 (see :meth:`support_statistics`)."""
        if not self.support_statistics():
            z = functional_call(self.net.features, {**features, **self._buffers()}, (x,))
            return F.linear(z, head["weight"], head["bias"])
        h, hs = x, x_stats
        for name, module in self.net.features.named_children():
            own = {k[len(name) + 1 :]: v for k, v in features.items() if k.startswith(f"{name}.")}
            if isinstance(module, nn.BatchNorm2d):
                mean = hs.mean((0, 2, 3), keepdim=True)
                inv_std = torch.rsqrt(hs.var((0, 2, 3), unbiased=False, keepdim=True) + module.eps)
                scale, shift = own["weight"].view(1, -1, 1, 1), own["bias"].view(1, -1, 1, 1)
                h, hs = [(t - mean) * inv_std * scale + shift for t in (h, hs)]
            else:
                h, hs = functional_call(module, own, (h,)), functional_call(module, own, (hs,))
        return F.linear(h, head["weight"], head["bias"])

    def support_statistics(self) -> bool:
        """Whether BatchNorm normalises with each task's support statistics rather than its running ones.

        Pretraining leaves running statistics of the training images, used at fine-tuning and test
        (``eval`` mode). A conv4 that was never pretrained holds only the placeholders mean 0, variance 1,
        under which its activations shrink block after block (mean |feature| ≈ 0.04 at 16 channels) and
        100 SGD steps do not fit 5 support images; it normalises every BatchNorm layer with the statistics of
        the task's support set at its current weights instead — the batch statistics of a fresh network
        trained on that support set, never those of the queries. Always ``False`` for the MLP.
        """
        counts = [int(v) for k, v in self.net.features.named_buffers() if k.endswith("num_batches_tracked")]
        return bool(counts) and max(counts) == 0

    def _buffers(self) -> Params:
        return {k: v for k, v in self.net.features.named_buffers()}

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of logits, or MSE of regression outputs."""
        return F.mse_loss(out, y) if self.regression else F.cross_entropy(out, y)

    def metric(
        self, features: Params, head: Params, x_support: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Query accuracy, or query MSE, of one task."""
        out = self.predict(features, head, x, x_support)
        return F.mse_loss(out, y) if self.regression else (out.argmax(-1) == y).float().mean()

    def target_loss(self, features: Params, head: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.loss(self.predict(features, head, x, x), y)
        if self.config.mode == "regularized":
            # images: the pretraining softmax head (the new N-way head has another output space);
            # regression: the fine-tuned network itself, whose head *is* the pretraining head
            old_head = (
                head if self.regression else {k: v.detach() for k, v in self.net.head.named_parameters()}
            )
            replay = self.loss(self.predict(features, old_head, self.replay_x, x), self.replay_y)
            loss = self.config.reg_lambda * replay + (1 - self.config.reg_lambda) * loss
        return loss

    def finetune(
        self, features: Params, head: Params, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[Params, Params]:
        lr = self.config.finetune_lr
        for _ in range(self.config.steps_per_adapt):
            if self.config.mode == "linear":
                g_head = grad(self.target_loss, argnums=1)(features, head, x, y)
            else:
                g_feat, g_head = grad(self.target_loss, argnums=(0, 1))(features, head, x, y)
                lr_features = lr * self.config.features_lr_ratio
                features = {k: v - lr_features * g_feat[k] for k, v in features.items()}
            head = {k: v - lr * g_head[k] for k, v in head.items()}
        return features, head

    # -- inner loop ----------------------------------------------------------------------------------
    def _batch(self, tasks: Sequence[Task], split: str) -> FewShotBatch:
        if isinstance(self.tasks, SinusoidSampler):
            return self.tasks.batch(tasks, self.device, split=split)  # type: ignore[arg-type]
        return self.tasks.batch(tasks, self.device)  # type: ignore[arg-type]

    def _state(self, batch: FewShotBatch, ways: int) -> TransferState:
        """Every task of ``batch`` at the pretrained features; the pretrained output layer (regression,
        ``ways = 0``) or a zero ``ways``-way head (classification)."""
        n, dim = batch.num_tasks, self.net.feature_dim
        features = {k: v.detach().expand(n, *v.shape) for k, v in self.net.features.named_parameters()}
        if self.regression:
            head = {k: v.detach().expand(n, *v.shape) for k, v in self.net.head.named_parameters()}
        else:
            head = {
                "weight": torch.zeros(n, ways, dim, device=self.device),
                "bias": torch.zeros(n, ways, device=self.device),
            }
        return TransferState(batch, ways, features, head)

    def initial(self, tasks: Sequence[Task]) -> TransferState:
        ways = 0 if self.regression else tasks[0].ways  # type: ignore[attr-defined]
        return self._state(self._batch(tasks, "test"), ways)

    def support(self, tasks: Sequence[Task], adapted: TransferState, step: int) -> FewShotBatch:
        return adapted.batch

    def adapt(self, adapted: TransferState, support: FewShotBatch, step: int) -> TransferState:
        self.net.eval()
        chunk, feats, heads = self.config.eval_chunk, [], []
        with torch.no_grad():  # torch.func.grad still differentiates inside
            for i in range(0, support.num_tasks, chunk):
                f = {k: v[i : i + chunk] for k, v in adapted.features.items()}
                h = {k: v[i : i + chunk] for k, v in adapted.head.items()}
                x, y = support.support_x[i : i + chunk], support.support_y[i : i + chunk]
                f, h = vmap(self.finetune)(f, h, x, y)
                feats.append(f)
                heads.append(h)
        return adapted._replace(
            features={k: torch.cat([f[k] for f in feats]) for k in adapted.features},
            head={k: torch.cat([h[k] for h in heads]) for k in adapted.head},
        )

    @torch.no_grad()
    def evaluate(self, tasks: Sequence[Task], adapted: TransferState) -> torch.Tensor:
        """Query accuracy (or MSE) of each task's fine-tuned network: ``[num_tasks]``."""
        self.net.eval()
        batch, chunk, out = adapted.batch, self.config.eval_chunk, []
        for i in range(0, batch.num_tasks, chunk):
            f = {k: v[i : i + chunk] for k, v in adapted.features.items()}
            h = {k: v[i : i + chunk] for k, v in adapted.head.items()}
            x_support, x, y = (t[i : i + chunk] for t in (batch.support_x, batch.query_x, batch.query_y))
            out.append(vmap(self.metric)(f, h, x_support, x, y))
        return torch.cat(out)

    # -- outer loop: plain supervised pretraining ----------------------------------------------------
    def meta_update(self, tasks: Sequence[Task]) -> dict[str, float]:
        start = time.perf_counter()
        self.net.train()
        batch = self._batch(tasks, "train")
        x = torch.cat([batch.support_x, batch.query_x], dim=1).flatten(0, 1)
        if self.regression:
            y = torch.cat([batch.support_y, batch.query_y], dim=1).flatten(0, 1)  # [T·(K + Q), 1]
        else:
            episode_labels = torch.cat([batch.support_y, batch.query_y], dim=1)  # [T, S + Q], 0..N-1
            to_global = torch.as_tensor(
                [[self.class_to_label[c] for c in e.classes] for e in tasks],  # type: ignore[attr-defined]
                device=self.device,
            )
            y = torch.gather(to_global, 1, episode_labels).flatten()
        scores = self.net(x)
        loss = self.loss(scores, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_grads_(self.optimizer)  # data-parallel: the meta-batch's mean gradient
        self.optimizer.step()
        if self.regression:
            with torch.no_grad():  # the updated network on these tasks, before and after one adaptation step
                state = self._state(batch, 0)
                pre, post = self.evaluate(tasks, state), self.evaluate(tasks, self.adapt(state, batch, 0))
            adapt_metrics = {
                "meta_train/mse_pre_adapt": float(pre.mean()),
                "meta_train/mse_post_adapt": float(post.mean()),
            }
        else:
            adapt_metrics = {
                "meta_train/accuracy_pre_adapt": 1.0 / tasks[0].ways,  # type: ignore[attr-defined]
                "meta_train/accuracy_post_adapt": float((scores.argmax(-1) == y).float().mean()),
            }
        return {
            "env_steps": float(len(tasks)),
            **adapt_metrics,
            "losses/loss": float(loss.detach()),
            "time/iteration_s": time.perf_counter() - start,
        }

    def generators(self) -> tuple[()]:
        """None: episodes carry their data and the learner draws no random numbers."""
        return ()

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])


def build(config: Any, device: torch.device) -> tuple[EpisodeSampler | SinusoidSampler, Transfer]:
    """The registry's builder: episodes or sinusoid tasks of ``config.data``, a learner of ``config.algo``."""
    from metarl.data import build_sampler

    tasks = build_sampler(config.data)
    with seeded(config.run.seed):
        return tasks, Transfer(config.algo, tasks, device, config.run.seed)
