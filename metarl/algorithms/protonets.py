"""Prototypical Networks: classify a query by its distance to the mean embedding of each class.

Snell, Swersky & Zemel (2017), "Prototypical Networks for Few-shot Learning", arXiv:1703.05175. An
embedding ``f_φ`` (the conv4 of Vinyals et al. 2016) maps the support set of an episode to one *prototype*
per class, ``c_n = 1/K Σ_k f_φ(x_{n,k})`` (eq. 1), and a query to ``p(y = n | x) ∝ exp(−d(f_φ(x), c_n))``
with the squared Euclidean distance ``d`` (eq. 2; a Bregman divergence, §2.3) or, as an option, a scaled
cosine similarity. Training minimises the query cross-entropy over episodes with more ways than at test
(60-way for Omniglot, §3.1; ``data.train_ways``), Adam 1e-3 halved every 2000 episodes.

In the meta-learner interface the adaptation is *computing the prototypes*: ``initial`` has none (the
accuracy of step 0 is chance, ``1/N``), ``adapt`` embeds the support set once, and later steps change
nothing. BatchNorm keeps running statistics during training and uses them at test (the reference code's
``model.eval()``), so a test query never sees the other queries of its episode.

Logged metrics (TensorBoard tags, x-axis = training episodes seen):

- ``meta_train/accuracy_pre_adapt``: chance, ``1/N`` (no prototypes yet).
- ``meta_train/accuracy_post_adapt``: query accuracy of the training episodes.
- ``losses/loss``: the query cross-entropy.
- ``losses/lr``: the current Adam step size.
- ``time/iteration_s``: the whole meta-iteration.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F

from metarl import checks, distributed
from metarl.algorithms.maml_supervised import Conv4
from metarl.core import MetaLearner
from metarl.data import Episode, EpisodeSampler, FewShotBatch
from metarl.seeding import seeded


@dataclasses.dataclass(frozen=True)
class ProtoNetsConfig:
    """Hyperparameters of Prototypical Networks; defaults from Snell et al. (2017) §3.1 (Omniglot).

    Attributes:
        meta_batch_size: episodes per meta-iteration (1 in the paper).
        lr: Adam step size (1e-3).
        lr_halve_every: episodes between halvings of the step size (2000).
        distance: ``"sqeuclidean"`` (the paper's) or ``"cosine"`` (scaled cosine similarity).
        cosine_scale: logits multiplier of the cosine option (a temperature; cosine lies in [−1, 1]).
        hidden_channels: filters of each conv4 block (64).
        eval_chunk: episodes embedded at once at evaluation (memory only).
    """

    meta_batch_size: int = 1
    lr: float = 1e-3
    lr_halve_every: int = 2000
    distance: Literal["sqeuclidean", "cosine"] = "sqeuclidean"
    cosine_scale: float = 10.0
    hidden_channels: int = 64
    eval_chunk: int = 50

    def __post_init__(self) -> None:
        checks.positive(
            self, "meta_batch_size", "lr", "lr_halve_every", "cosine_scale", "hidden_channels", "eval_chunk"
        )


# -- the math: pure functions ----------------------------------------------------------------------------
def prototypes(support: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means (Snell et al. eq. 1): ``support [T, N·K, D]`` (class-major) → ``[T, N, D]``."""
    tasks, n_k, dim = support.shape
    if n_k % ways:
        raise ValueError(f"support of {n_k} examples is not {ways} classes × K shots")
    return support.reshape(tasks, ways, n_k // ways, dim).mean(dim=2)


def squared_euclidean(query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """``‖q_m − c_n‖²`` for ``query [T, M, D]`` and ``protos [T, N, D]`` → ``[T, M, N]``."""
    if query.shape[-1] != protos.shape[-1] or query.shape[0] != protos.shape[0]:
        raise ValueError(f"query {tuple(query.shape)} and prototypes {tuple(protos.shape)} do not match")
    return (query.unsqueeze(2) - protos.unsqueeze(1)).pow(2).sum(-1)


def logits(query: torch.Tensor, protos: torch.Tensor, distance: str, cosine_scale: float) -> torch.Tensor:
    """Class scores ``[T, M, N]``: ``−‖q − c‖²`` or ``scale · cos(q, c)``."""
    if distance == "sqeuclidean":
        return -squared_euclidean(query, protos)
    q, p = F.normalize(query, dim=-1), F.normalize(protos, dim=-1)
    return cosine_scale * q @ p.transpose(1, 2)


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of correct argmax predictions per task: ``scores [T, M, N]``, ``labels [T, M]`` → ``[T]``."""
    return (scores.argmax(-1) == labels).float().mean(-1)


# -- the learner -----------------------------------------------------------------------------------------
class ProtoState(NamedTuple):
    """Episodes being adapted to: their batch and, once adapted, the prototypes ``[T, N, D]``."""

    batch: FewShotBatch
    ways: int
    protos: torch.Tensor | None


class ProtoNets(MetaLearner[FewShotBatch, ProtoState]):
    """Prototypical Networks behind the meta-learner interface (see the module docstring)."""

    metric_name = "accuracy"
    higher_is_better = True
    step_unit = ""  # no adaptation steps: the support set is read once

    def __init__(self, config: ProtoNetsConfig, tasks: EpisodeSampler, device: torch.device) -> None:
        self.config, self.tasks, self.device = config, tasks, device
        image_shape = tuple(tasks.dataset.images.shape[1:])
        self.net = Conv4(image_shape, config.hidden_channels, out_features=0).to(device)
        distributed.sync_batch_norm_(self.net)  # one BatchNorm batch: the meta-batch of every rank
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.episodes_seen = 0

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[T, M, C, H, W]`` → ``[T, M, D]`` (all tasks' images through the network in one batch)."""
        tasks, m = images.shape[:2]
        return self.net(images.flatten(0, 1)).reshape(tasks, m, -1)

    # -- inner loop ----------------------------------------------------------------------------------
    def initial(self, tasks: Sequence[Episode]) -> ProtoState:
        return ProtoState(self.tasks.batch(tasks, self.device), tasks[0].ways, None)

    def support(self, tasks: Sequence[Episode], adapted: ProtoState, step: int) -> FewShotBatch:
        return adapted.batch

    @torch.no_grad()
    def adapt(self, adapted: ProtoState, support: FewShotBatch, step: int) -> ProtoState:
        if adapted.protos is not None:
            return adapted  # the prototypes are a function of the support set alone
        self.net.eval()
        chunk = self.config.eval_chunk
        protos = [
            prototypes(self.embed(support.support_x[i : i + chunk]), adapted.ways)
            for i in range(0, support.num_tasks, chunk)
        ]
        return adapted._replace(protos=torch.cat(protos))

    @torch.no_grad()
    def evaluate(self, tasks: Sequence[Episode], adapted: ProtoState) -> torch.Tensor:
        batch = adapted.batch
        if adapted.protos is None:
            return torch.full((batch.num_tasks,), 1.0 / adapted.ways, device=self.device)
        self.net.eval()
        chunk, c = self.config.eval_chunk, self.config
        acc = [
            accuracy(
                logits(
                    self.embed(batch.query_x[i : i + chunk]),
                    adapted.protos[i : i + chunk],
                    c.distance,
                    c.cosine_scale,
                ),
                batch.query_y[i : i + chunk],
            )
            for i in range(0, batch.num_tasks, chunk)
        ]
        return torch.cat(acc)

    # -- outer loop ----------------------------------------------------------------------------------
    def meta_update(self, tasks: Sequence[Episode]) -> dict[str, float]:
        start = time.perf_counter()
        c = self.config
        lr = c.lr * 0.5 ** (self.episodes_seen // c.lr_halve_every)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.net.train()
        batch = self.tasks.batch(tasks, self.device)
        ways, n_support = tasks[0].ways, batch.support_x.shape[1]
        emb = self.embed(torch.cat([batch.support_x, batch.query_x], dim=1))
        scores = logits(emb[:, n_support:], prototypes(emb[:, :n_support], ways), c.distance, c.cosine_scale)
        loss = F.cross_entropy(scores.flatten(0, 1), batch.query_y.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_grads_(self.optimizer)  # data-parallel: the meta-batch's mean gradient
        self.optimizer.step()
        self.episodes_seen += len(tasks) * distributed.world_size()  # the whole meta-batch's episodes
        return {
            "env_steps": float(len(tasks)),
            "meta_train/accuracy_pre_adapt": 1.0 / ways,
            "meta_train/accuracy_post_adapt": float(accuracy(scores.detach(), batch.query_y).mean()),
            "losses/loss": float(loss.detach()),
            "losses/lr": lr,
            "time/iteration_s": time.perf_counter() - start,
        }

    def generators(self) -> tuple[()]:
        """None: episodes carry their data and the learner draws no random numbers."""
        return ()

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "episodes_seen": self.episodes_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.episodes_seen = int(state["episodes_seen"])


def build(config: Any, device: torch.device) -> tuple[EpisodeSampler, ProtoNets]:
    """The registry's builder: episodes of ``config.data``, a learner of ``config.algo``."""
    from metarl.data import build_image_sampler

    tasks = build_image_sampler(config.data, "protonets")
    with seeded(config.run.seed):
        return tasks, ProtoNets(config.algo, tasks, device)
