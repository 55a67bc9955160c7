"""Matching Networks: label a query by attention over the embedded support set.

Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra (2016), "Matching Networks for One Shot Learning",
arXiv:1606.04080. The prediction for a query ``x̂`` is a mixture of the support labels (eq. 1),
``P(ŷ | x̂, S) = Σ_i a(x̂, x_i) y_i``, with the attention a softmax over cosine similarities of embeddings,
``a(x̂, x_i) = softmax_i(c(f(x̂), g(x_i)))`` (eq. 2). Both embeddings are the conv4 of the paper (§4.1.1).

**The similarity ``c`` and its temperature** (``similarity``, ``attention_scale``, ``learn_scale``). Conv4's
embeddings end in ReLU → max-pool, so they are non-negative and every cosine lies in ``[0, 1]``: with the
literal eq. 2 (``softmax`` of plain cosines) the right support item of a 5-way 1-shot episode can never get
more than ``e/(e+4) = 0.405`` of the attention (``e/(e+19) = 0.125`` at 20-way), the loss cannot fall below
0.905 and its gradient never vanishes. Two cures, both here:

- ``"support_cosine"`` (the default): ``c(f, g) = f·g / |g|`` — only the support side is normalised, as in the
  public reimplementations (e.g. gitabcworld/MatchingNetworks' ``DistanceNetwork``); the query's norm ``|f|``
  acts as a learned, per-query inverse temperature, so the attention can become as sharp as the data allow.
- ``"cosine"``: the paper's cosine times an inverse temperature ``attention_scale`` (fixed, or learned from
  that starting value with ``learn_scale``; ~10 works, 1 is the literal eq. 2 and its 0.405 ceiling).

Short Omniglot runs (``experiments/fewshot_report.md``) put ``"support_cosine"`` ahead; the presets use it.
In training the support and query images of the meta-batch go through the network as **one batch**, so both
see the same BatchNorm statistics (as Prototypical Networks do); ``lr_halve_every`` halves Adam's step size on
a fixed schedule of episodes (Snell et al.'s schedule; the Matching Networks paper gives none).
With **full context embeddings** (FCE, §2.1.2 and App. A) the support embeddings are re-read by a
bidirectional LSTM over the support set, ``g(x_i) = h⃗_i + h⃖_i + g'(x_i)``, and each query embedding is refined
by an attention LSTM that attends over them for ``fce_steps`` steps:
``ĥ_k, c_k = LSTM(f'(x̂), [h_{k−1}, r_{k−1}], c_{k−1})``, ``h_k = ĥ_k + f'(x̂)``,
``r_k = Σ_i softmax(h_k^T g(x_i)) g(x_i)`` (here the read-out ``r`` enters the cell as input, a common
simplification). All tasks of a meta-batch run together: the LSTMs' batch dimension is the task (and query).

In the meta-learner interface the adaptation is *reading the support set* (step 0: no memory, chance
``1/N``; step 1: the embedded support set; later steps change nothing). BatchNorm keeps running statistics
and uses them at test, as in the reference implementations.

Logged metrics (TensorBoard tags, x-axis = training episodes seen):

- ``meta_train/accuracy_pre_adapt``: chance, ``1/N`` (no support set read yet).
- ``meta_train/accuracy_post_adapt``: query accuracy of the training episodes.
- ``losses/loss``: the query negative log-likelihood of eq. 1.
- ``losses/lr``: Adam's step size (``lr_halve_every``).
- ``meta_train/attention_scale``: the inverse temperature (learned with ``learn_scale``).
- ``time/iteration_s``: the whole meta-iteration.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from metarl import checks, distributed
from metarl.algorithms.maml_supervised import Conv4
from metarl.core import MetaLearner
from metarl.data import Episode, EpisodeSampler, FewShotBatch
from metarl.seeding import seeded


@dataclasses.dataclass(frozen=True)
class MatchingNetsConfig:
    """Hyperparameters of Matching Networks; defaults from Vinyals et al. (2016) §4.1 (Omniglot).

    Attributes:
        meta_batch_size: episodes per meta-iteration (32 in common reimplementations; the paper does not say).
        lr: Adam step size (1e-3).
        fce: full context embeddings (off for Omniglot in the paper's best numbers; on for miniImageNet).
        fce_steps: unrolling steps of the attention LSTM (the paper's K; 0: the support-set size).
        similarity: ``"support_cosine"`` (``f·g/|g|``; the query norm is a learned inverse temperature) or
            ``"cosine"`` (eq. 2's cosine times ``attention_scale``); see the module docstring.
        attention_scale: inverse temperature multiplying the similarities inside the softmax (with
            ``"cosine"``: 1 is the literal eq. 2, capped at ``e/(e+N−1)``; ~10 lets it reach 1).
        learn_scale: learn the inverse temperature (its log) with Adam, starting from ``attention_scale``.
        lr_halve_every: episodes between halvings of Adam's step size (0: a constant step size).
        hidden_channels: filters of each conv4 block (64).
        eval_chunk: episodes embedded at once at evaluation (memory only).
    """

    meta_batch_size: int = 32
    lr: float = 1e-3
    fce: bool = False
    fce_steps: int = 0
    similarity: Literal["support_cosine", "cosine"] = "support_cosine"
    attention_scale: float = 1.0
    learn_scale: bool = False
    lr_halve_every: int = 0
    hidden_channels: int = 64
    eval_chunk: int = 50

    def __post_init__(self) -> None:
        checks.positive(self, "meta_batch_size", "lr", "attention_scale", "hidden_channels", "eval_chunk")
        checks.at_least(self, 0, "fce_steps", "lr_halve_every")
        if self.similarity not in ("support_cosine", "cosine"):
            raise ValueError(f"similarity must be 'support_cosine' or 'cosine', got {self.similarity!r}")


# -- the math ------------------------------------------------------------------------------------------
def similarities(query: torch.Tensor, support: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """``c(q_m, s_i)``: ``cos(q_m, s_i)`` for ``"cosine"``, ``q_m·s_i/|s_i|`` for ``"support_cosine"``;
    ``query [T, M, D]``, ``support [T, S, D]`` → ``[T, M, S]``."""
    s = F.normalize(support, dim=-1)
    q = F.normalize(query, dim=-1) if kind == "cosine" else query
    return q @ s.transpose(1, 2)


def cosine_attention(
    query: torch.Tensor, support: torch.Tensor, scale: float | torch.Tensor, kind: str = "cosine"
) -> torch.Tensor:
    """Eq. 2 with an inverse temperature: ``softmax_i(scale · c(q_m, s_i))`` → ``[T, M, S]``."""
    return torch.softmax(scale * similarities(query, support, kind), dim=-1)


def label_mixture(attention: torch.Tensor, support_y: torch.Tensor, ways: int) -> torch.Tensor:
    """Eq. 1, ``Σ_i a_i y_i``: ``attention [T, M, S]``, ``support_y [T, S]`` → probabilities ``[T, M, N]``."""
    return attention @ F.one_hot(support_y, ways).to(attention.dtype)


class FullContextEmbedding(nn.Module):
    """The FCE of Vinyals et al. App. A: a bidirectional LSTM over the support set (``g``) and an attention
    LSTM for the queries (``f``); both batched over tasks."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.query_cell = nn.LSTMCell(2 * dim, dim)

    def support(self, g: torch.Tensor) -> torch.Tensor:
        """``g(x_i) = h⃗_i + h⃖_i + g'(x_i)`` for ``g [T, S, D]``."""
        out, _ = self.support_lstm(g)
        forward, backward = out.chunk(2, dim=-1)
        return g + forward + backward

    def query(self, f: torch.Tensor, g: torch.Tensor, steps: int) -> torch.Tensor:
        """``steps`` attention-LSTM steps for queries ``f [T, M, D]`` over the context ``g [T, S, D]``."""
        tasks, m, dim = f.shape
        flat = f.reshape(tasks * m, dim)
        h, c = torch.zeros_like(flat), torch.zeros_like(flat)
        r = torch.zeros_like(flat)
        for _ in range(steps):
            h_hat, c = self.query_cell(torch.cat([flat, r], dim=-1), (h, c))
            h = h_hat + flat
            attention = torch.softmax(h.reshape(tasks, m, dim) @ g.transpose(1, 2), dim=-1)
            r = (attention @ g).reshape(tasks * m, dim)
        return h.reshape(tasks, m, dim)


# -- the learner -----------------------------------------------------------------------------------------
class MatchingState(NamedTuple):
    """Episodes being adapted to: their batch and, once read, the support embeddings ``[T, S, D]``."""

    batch: FewShotBatch
    ways: int
    memory: torch.Tensor | None


class MatchingNets(MetaLearner[FewShotBatch, MatchingState]):
    """Matching Networks behind the meta-learner interface (see the module docstring)."""

    metric_name = "accuracy"
    higher_is_better = True
    step_unit = ""  # no adaptation steps: the support set is read once

    def __init__(self, config: MatchingNetsConfig, tasks: EpisodeSampler, device: torch.device) -> None:
        self.config, self.tasks, self.device = config, tasks, device
        self.net = Conv4(tuple(tasks.dataset.images.shape[1:]), config.hidden_channels).to(device)
        distributed.sync_batch_norm_(self.net)  # one BatchNorm batch: the meta-batch of every rank
        self.fce = FullContextEmbedding(self.net.feature_dim).to(device) if config.fce else None
        # the inverse temperature, as a log so that a learned one stays positive
        self.log_scale = torch.tensor(math.log(config.attention_scale), device=device)
        self.log_scale.requires_grad_(config.learn_scale)
        params = list(self.net.parameters()) + (list(self.fce.parameters()) if self.fce else [])
        if config.learn_scale:
            params.append(self.log_scale)
        self.optimizer = torch.optim.Adam(params, lr=config.lr)
        self.episodes_seen = 0

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        tasks, m = images.shape[:2]
        return self.net(images.flatten(0, 1)).reshape(tasks, m, -1)

    def read_support(self, support_x: torch.Tensor) -> torch.Tensor:
        return self.context(self.embed(support_x))

    def context(self, g: torch.Tensor) -> torch.Tensor:
        """The support memory ``g(x_i)`` from the conv4 embeddings ``[T, S, D]`` (FCE's BiLSTM, if on)."""
        return self.fce.support(g) if self.fce else g

    def attend(
        self, f: torch.Tensor, memory: torch.Tensor, support_y: torch.Tensor, ways: int
    ) -> torch.Tensor:
        """Class probabilities ``[T, M, N]`` of query embeddings ``f [T, M, D]`` given the support memory."""
        if self.fce:
            f = self.fce.query(f, memory, self.config.fce_steps or memory.shape[1])
        attention = cosine_attention(f, memory, self.log_scale.exp(), self.config.similarity)
        return label_mixture(attention, support_y, ways)

    def predict(
        self, query_x: torch.Tensor, memory: torch.Tensor, support_y: torch.Tensor, ways: int
    ) -> torch.Tensor:
        """Class probabilities ``[T, M, N]`` of the queries given the read support set."""
        return self.attend(self.embed(query_x), memory, support_y, ways)

    # -- inner loop ----------------------------------------------------------------------------------
    def initial(self, tasks: Sequence[Episode]) -> MatchingState:
        return MatchingState(self.tasks.batch(tasks, self.device), tasks[0].ways, None)

    def support(self, tasks: Sequence[Episode], adapted: MatchingState, step: int) -> FewShotBatch:
        return adapted.batch

    @torch.no_grad()
    def adapt(self, adapted: MatchingState, support: FewShotBatch, step: int) -> MatchingState:
        if adapted.memory is not None:
            return adapted
        self._eval_mode()
        chunk = self.config.eval_chunk
        memory = [
            self.read_support(support.support_x[i : i + chunk]) for i in range(0, support.num_tasks, chunk)
        ]
        return adapted._replace(memory=torch.cat(memory))

    @torch.no_grad()
    def evaluate(self, tasks: Sequence[Episode], adapted: MatchingState) -> torch.Tensor:
        batch = adapted.batch
        if adapted.memory is None:
            return torch.full((batch.num_tasks,), 1.0 / adapted.ways, device=self.device)
        self._eval_mode()
        chunk, out = self.config.eval_chunk, []
        for i in range(0, batch.num_tasks, chunk):
            probs = self.predict(
                batch.query_x[i : i + chunk],
                adapted.memory[i : i + chunk],
                batch.support_y[i : i + chunk],
                adapted.ways,
            )
            out.append((probs.argmax(-1) == batch.query_y[i : i + chunk]).float().mean(-1))
        return torch.cat(out)

    def _eval_mode(self) -> None:
        self.net.eval()
        if self.fce:
            self.fce.eval()

    # -- outer loop ----------------------------------------------------------------------------------
    def meta_update(self, tasks: Sequence[Episode]) -> dict[str, float]:
        start = time.perf_counter()
        c = self.config
        lr = c.lr * 0.5 ** (self.episodes_seen // c.lr_halve_every) if c.lr_halve_every else c.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.net.train()
        batch, ways = self.tasks.batch(tasks, self.device), tasks[0].ways
        n_support = batch.support_x.shape[1]
        emb = self.embed(torch.cat([batch.support_x, batch.query_x], dim=1))  # one BatchNorm batch
        probs = self.attend(emb[:, n_support:], self.context(emb[:, :n_support]), batch.support_y, ways)
        loss = F.nll_loss(probs.clamp_min(1e-8).log().flatten(0, 1), batch.query_y.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_grads_(self.optimizer)  # data-parallel: the meta-batch's mean gradient
        self.optimizer.step()
        self.episodes_seen += len(tasks) * distributed.world_size()  # the whole meta-batch's episodes
        return {
            "env_steps": float(len(tasks)),
            "meta_train/accuracy_pre_adapt": 1.0 / ways,
            "meta_train/accuracy_post_adapt": float((probs.argmax(-1) == batch.query_y).float().mean()),
            "meta_train/attention_scale": float(self.log_scale.detach().exp()),
            "losses/loss": float(loss.detach()),
            "losses/lr": lr,
            "time/iteration_s": time.perf_counter() - start,
        }

    def generators(self) -> tuple[()]:
        """None: episodes carry their data and the learner draws no random numbers."""
        return ()

    def state_dict(self) -> dict[str, Any]:
        state = {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "log_scale": self.log_scale.detach().clone(),
            "episodes_seen": self.episodes_seen,
        }
        if self.fce:
            state["fce"] = self.fce.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; one written before ``log_scale``/``episodes_seen`` existed keeps the
        configured scale and a count of 0."""
        self.net.load_state_dict(state["net"])
        if self.fce:
            self.fce.load_state_dict(state["fce"])
        self.optimizer.load_state_dict(state["optimizer"])
        with torch.no_grad():
            self.log_scale.copy_(state.get("log_scale", self.log_scale))
        self.episodes_seen = int(state.get("episodes_seen", 0))


def build(config: Any, device: torch.device) -> tuple[EpisodeSampler, MatchingNets]:
    """The registry's builder: episodes of ``config.data``, a learner of ``config.algo``."""
    from metarl.data import build_image_sampler

    tasks = build_image_sampler(config.data, "matching_nets")
    with seeded(config.run.seed):
        return tasks, MatchingNets(config.algo, tasks, device)
