"""Transfer-learning baselines: pretrain one classifier on all training classes, then fine-tune per episode.

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
prediction does not depend on its other queries.

Logged metrics (TensorBoard tags, x-axis = training episodes seen):

- ``meta_train/accuracy_pre_adapt``: chance, ``1/N`` (a new head knows nothing).
- ``meta_train/accuracy_post_adapt``: the pretraining classifier's accuracy over its training batch.
- ``losses/loss``: the pretraining cross-entropy.
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
from torch.func import functional_call, grad, vmap

from metarl import checks
from metarl.algorithms.maml_supervised import Conv4
from metarl.core import MetaLearner
from metarl.data import Episode, EpisodeSampler, FewShotBatch
from metarl.seeding import seeded

Params = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """Hyperparameters of the transfer baselines (Chen et al. 2019 §3 use Adam 1e-3 to pretrain and
    100 fine-tuning steps on the support set).

    Attributes:
        meta_batch_size: training episodes pooled into one pretraining mini-batch.
        lr: Adam step size of pretraining (1e-3).
        mode: ``"linear"`` (a), ``"finetune"`` (b) or ``"regularized"`` (c).
        finetune_lr: SGD step size of test-time fine-tuning.
        steps_per_adapt: SGD steps per adaptation step of the interface.
        reg_lambda: λ of the regularized loss (``"regularized"`` only).
        replay_examples: training-class images in the fixed ``L_pretrain`` batch.
        hidden_channels: filters of each conv4 block (64).
        eval_chunk: episodes fine-tuned at once at evaluation (memory only).
    """

    meta_batch_size: int = 8
    lr: float = 1e-3
    mode: Literal["linear", "finetune", "regularized"] = "linear"
    finetune_lr: float = 0.1
    steps_per_adapt: int = 10
    reg_lambda: float = 0.5
    replay_examples: int = 64
    hidden_channels: int = 64
    eval_chunk: int = 50

    def __post_init__(self) -> None:
        checks.positive(
            self, "meta_batch_size", "lr", "finetune_lr", "steps_per_adapt", "replay_examples", "eval_chunk"
        )
        if not 0.0 <= self.reg_lambda < 1.0:
            raise ValueError(f"reg_lambda must be in [0, 1), got {self.reg_lambda}")


class TransferState(NamedTuple):
    """Episodes being fine-tuned: their batch, the per-episode features ``[T, …]`` and new heads."""

    batch: FewShotBatch
    ways: int
    features: Params
    head: Params


class Transfer(MetaLearner[FewShotBatch, TransferState]):
    """Pretrain-then-fine-tune baselines behind the meta-learner interface (see the module docstring)."""

    metric_name = "accuracy"
    higher_is_better = True

    def __init__(
        self, config: TransferConfig, tasks: EpisodeSampler, device: torch.device, seed: int = 0
    ) -> None:
        self.config, self.tasks, self.device = config, tasks, device
        self.class_to_label = {int(c): i for i, c in enumerate(tasks.classes["train"])}
        shape = tuple(tasks.dataset.images.shape[1:])
        self.net = Conv4(shape, config.hidden_channels, out_features=len(self.class_to_label)).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        rng = np.random.default_rng(seed)  # the replay batch of the regularised loss
        classes = rng.choice(tasks.classes["train"], size=config.replay_examples)
        idx = [int(rng.choice(tasks.dataset.class_examples[int(c)])) for c in classes]
        self.replay_x = tasks.dataset.images[idx].to(device=device, dtype=torch.float32) / 255.0
        self.replay_y = torch.as_tensor([self.class_to_label[int(c)] for c in classes], device=device)

    # -- per-episode fine-tuning, vmapped -------------------------------------------------------------
    def logits(self, features: Params, head: Params, x: torch.Tensor) -> torch.Tensor:
        z = functional_call(self.net.features, {**features, **self._buffers()}, (x,))
        return F.linear(z, head["weight"], head["bias"])

    def _buffers(self) -> Params:
        return {k: v for k, v in self.net.features.named_buffers()}

    def target_loss(self, features: Params, head: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(self.logits(features, head, x), y)
        if self.config.mode == "regularized":
            old_head = {k: v.detach() for k, v in self.net.head.named_parameters()}
            replay = F.cross_entropy(self.logits(features, old_head, self.replay_x), self.replay_y)
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
                features = {k: v - lr * g_feat[k] for k, v in features.items()}
            head = {k: v - lr * g_head[k] for k, v in head.items()}
        return features, head

    # -- inner loop ----------------------------------------------------------------------------------
    def initial(self, tasks: Sequence[Episode]) -> TransferState:
        n, ways = len(tasks), tasks[0].ways
        dim = self.net.feature_dim
        features = {k: v.detach().expand(n, *v.shape) for k, v in self.net.features.named_parameters()}
        head = {
            "weight": torch.zeros(n, ways, dim, device=self.device),
            "bias": torch.zeros(n, ways, device=self.device),
        }
        return TransferState(self.tasks.batch(tasks, self.device), ways, features, head)

    def support(self, tasks: Sequence[Episode], adapted: TransferState, step: int) -> FewShotBatch:
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
    def evaluate(self, tasks: Sequence[Episode], adapted: TransferState) -> torch.Tensor:
        self.net.eval()
        batch, chunk, out = adapted.batch, self.config.eval_chunk, []
        for i in range(0, batch.num_tasks, chunk):
            f = {k: v[i : i + chunk] for k, v in adapted.features.items()}
            h = {k: v[i : i + chunk] for k, v in adapted.head.items()}
            scores = vmap(self.logits)(f, h, batch.query_x[i : i + chunk])
            out.append((scores.argmax(-1) == batch.query_y[i : i + chunk]).float().mean(-1))
        return torch.cat(out)

    # -- outer loop: plain supervised pretraining ----------------------------------------------------
    def meta_update(self, tasks: Sequence[Episode]) -> dict[str, float]:
        start = time.perf_counter()
        self.net.train()
        batch = self.tasks.batch(tasks, self.device)
        x = torch.cat([batch.support_x, batch.query_x], dim=1).flatten(0, 1)
        episode_labels = torch.cat([batch.support_y, batch.query_y], dim=1)  # [T, S + Q], 0..N-1
        to_global = torch.as_tensor(
            [[self.class_to_label[c] for c in e.classes] for e in tasks], device=self.device
        )
        y = torch.gather(to_global, 1, episode_labels).flatten()
        scores = self.net(x)
        loss = F.cross_entropy(scores, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {
            "env_steps": float(len(tasks)),
            "meta_train/accuracy_pre_adapt": 1.0 / tasks[0].ways,
            "meta_train/accuracy_post_adapt": float((scores.argmax(-1) == y).float().mean()),
            "losses/loss": float(loss.detach()),
            "time/iteration_s": time.perf_counter() - start,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])


def build(config: Any, device: torch.device) -> tuple[EpisodeSampler, Transfer]:
    """The registry's builder: episodes of ``config.data``, a learner of ``config.algo``."""
    from metarl.data import build_image_sampler

    tasks = build_image_sampler(config.data, "transfer")
    with seeded(config.run.seed):
        return tasks, Transfer(config.algo, tasks, device, config.run.seed)
