"""SNAIL: a causal sequence model reads the support set as labelled pairs and labels the query that follows.

Mishra, Rohaninejad, Chen & Abbeel (2018), "A Simple Neural Attentive Meta-Learner", ICLR,
arXiv:1707.03141. A *black-box* (memory-based) meta-learner in the lineage of Santoro et al. (2016, MANN,
arXiv:1605.06065): no gradient step and no hand-made metric at test time; a sequence model receives the
support set as a sequence of pairs ``(x_t, y_t)`` (image embedding ⊕ one-hot label), then the query with
an all-zero label, and must output the query's label. Whatever "learning" happens on a new task happens in
its activations. SNAIL's sequence model interleaves two causal building blocks (§3): *temporal
convolutions* (stacks of dilated causal convolutions with gated activations, whose outputs are
concatenated to their inputs, :class:`TCBlock`) that aggregate the past at high bandwidth, and *causal
soft attention* (:class:`AttentionBlock`) that pinpoints single past elements. For N-way K-shot Omniglot
the sequence has ``T = N·K + 1`` elements and the paper's network is::

    embedding → Attention(64, 32) → TC(T, 128) → Attention(256, 128) → TC(T, 128)
              → Attention(512, 256) → 1×1 convolution (a per-position linear layer) to N logits

Training minimises the cross-entropy of the query's logits (the sequence's last position) over episodes,
with Adam. The support pairs are shuffled (the paper presents them in random order), here with one random
permutation per training episode drawn from the learner's own generator.

Choices of this implementation (documented where they differ from the paper):

- **Embedding.** The conv4 of Vinyals et al. (:class:`~metarl.algorithms.maml_supervised.Conv4`: 4 × {3×3
  conv 64, BatchNorm, ReLU, 2×2 max-pool}, 64 features on 28×28 images) shared with ProtoNets and Matching
  Networks; the paper's Omniglot embedding has leaky ReLUs and one more linear layer to 64 features.
- **Dilations.** A TC block holds ``⌈log₂ T⌉`` dense blocks with dilations ``1, 2, 4, …`` (kernel size 2):
  the receptive field ``2^⌈log₂ T⌉ ≥ T`` covers the whole sequence (the paper's pseudocode starts at
  dilation 2; either covers it). ``T`` is the longest sequence the sampler produces (train or test split),
  fixed when the network is built; shorter or longer sequences still run (attention sees everything).
- **Ways.** The one-hot label input and the output layer are ``max_ways`` wide, the largest ``ways`` of the
  sampler's two shapes (``tasks.shapes["train"]`` / ``["test"]``, i.e. ``data.train_ways`` and
  ``data.ways``), and the logits are cut to the episode's ``N``: training may use more ways than testing.
- **Queries share the support prefix.** Every query of an episode is its own sequence ``[support…, query]``:
  queries never see each other. Because every block is causal, the activations of the support positions
  do not depend on the query, so they are computed once per episode and each query only adds its last
  position (``extend`` of each block). This equals running one sequence of length ``N·K + 1`` per query
  (the tests check it against the full-sequence ``forward``) at the cost of ``N·K + M`` positions per
  episode of ``M`` queries instead of ``M·(N·K + 1)``.

In the meta-learner interface (like ProtoNets) the adaptation is *reading the support set*: ``initial``
has read nothing (the accuracy of step 0 is chance, ``1/N``), ``adapt`` embeds the support set once and
stores the input sequence (embeddings ⊕ one-hot labels, in the episode's class-major order), later steps
change nothing, and ``evaluate`` appends each query as the final element of its own sequence. BatchNorm
keeps running statistics during training and uses them at test (``eval()`` mode), so a test query's
embedding does not depend on the other images of its episode either.

Logged metrics (TensorBoard tags, x-axis = training episodes seen):

- ``meta_train/accuracy_pre_adapt``: chance, ``1/N`` (no support set read yet).
- ``meta_train/accuracy_post_adapt``: query accuracy of the training episodes.
- ``losses/loss``: the query cross-entropy.
- ``time/iteration_s``: the whole meta-iteration.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from metarl import checks, distributed
from metarl.algorithms.maml_supervised import Conv4
from metarl.core import MetaLearner
from metarl.data import Episode, EpisodeSampler, FewShotBatch
from metarl.seeding import seeded


@dataclasses.dataclass(frozen=True)
class SNAILConfig:
    """Hyperparameters of SNAIL; architecture defaults from Mishra et al. (2018) for Omniglot.

    The optimiser defaults (Adam 1e-3, 32 episodes per step) are the usual few-shot choices, as for Matching
    Networks here; they are not checked against the paper's appendix.

    Attributes:
        meta_batch_size: episodes per meta-iteration (32). Every query of an episode is one training
            sequence, so a meta-batch holds ``meta_batch_size × N·Q`` sequences.
        lr: Adam step size (1e-3).
        hidden_channels: filters of each conv4 block of the embedding (64).
        tc_filters: filters ``D`` of each dense block of a TC block (128).
        key_sizes: key (and query) size of each attention block ((64, 256, 512)).
        value_sizes: value size of each attention block ((32, 128, 256)); one per key size. A TC block sits
            between consecutive attention blocks (two TC blocks for three attention blocks).
        eval_chunk: episodes run through the network at once at evaluation (memory only).
    """

    meta_batch_size: int = 32
    lr: float = 1e-3
    hidden_channels: int = 64
    tc_filters: int = 128
    key_sizes: tuple[int, ...] = (64, 256, 512)
    value_sizes: tuple[int, ...] = (32, 128, 256)
    eval_chunk: int = 50

    def __post_init__(self) -> None:
        checks.positive(self, "meta_batch_size", "lr", "hidden_channels", "tc_filters", "eval_chunk")
        if not self.key_sizes or len(self.key_sizes) != len(self.value_sizes):
            raise ValueError(
                f"key_sizes and value_sizes must be non-empty and of one length (one pair per attention "
                f"block), got {list(self.key_sizes)} and {list(self.value_sizes)}"
            )
        for name in ("key_sizes", "value_sizes"):
            if min(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0, got {list(getattr(self, name))}")


# -- the building blocks (Mishra et al. §3); every tensor is [batch B, time T, channels C] ------------------
#
# Each block has two entry points: ``forward(x)`` runs whole sequences, and ``extend(prefix, x)`` runs M
# one-element continuations of one shared prefix: ``prefix [B, P, C]`` and ``x [B, M, C]`` (element ``m`` is
# a candidate for position ``P``) give ``(forward(prefix), out [B, M, C'])`` with ``out[:, m]`` the output
# at position ``P`` of the sequence ``[prefix, x[:, m]]``. Causality makes the two agree.
class CausalConv1d(nn.Module):
    """A dilated causal convolution: the output at ``t`` sees inputs ``t, t − d, …, t − (k − 1)·d`` only
    (zero left padding of ``(k − 1)·d``, nothing on the right). ``[B, T, C_in] → [B, T, C_out]``."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int, kernel_size: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)
        self.dilation, self.kernel_size = dilation, kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x.transpose(1, 2), ((self.kernel_size - 1) * self.dilation, 0))
        return self.conv(padded).transpose(1, 2)

    def extend(self, prefix: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight, length = self.conv.weight, prefix.shape[1]  # weight [C_out, C_in, k]; tap k − 1 is "now"
        out = x @ weight[:, :, -1].T + self.conv.bias
        for tap in range(self.kernel_size - 1):  # tap j reads position P − (k − 1 − j)·d of the prefix
            t = length - (self.kernel_size - 1 - tap) * self.dilation
            if t >= 0:  # before the sequence: the zero padding
                out = out + (prefix[:, t] @ weight[:, :, tap].T).unsqueeze(1)
        return self(prefix), out


class DenseBlock(nn.Module):
    """``concat(x, tanh(conv_f(x)) ⊙ σ(conv_g(x)))`` with causal convolutions of dilation ``d`` (§3):
    ``[B, T, C] → [B, T, C + filters]``. Both convolutions are one of ``2·filters`` outputs."""

    def __init__(self, in_channels: int, filters: int, dilation: int) -> None:
        super().__init__()
        self.conv = CausalConv1d(in_channels, 2 * filters, dilation)
        self.out_channels = in_channels + filters

    @staticmethod
    def gate(h: torch.Tensor) -> torch.Tensor:
        f, g = h.chunk(2, dim=-1)
        return torch.tanh(f) * torch.sigmoid(g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.gate(self.conv(x))], dim=-1)

    def extend(self, prefix: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        conv_prefix, conv_x = self.conv.extend(prefix, x)
        return (
            torch.cat([prefix, self.gate(conv_prefix)], dim=-1),
            torch.cat([x, self.gate(conv_x)], dim=-1),
        )


class TCBlock(nn.Module):
    """``⌈log₂ seq_len⌉`` dense blocks of dilations ``1, 2, 4, …``: a receptive field of at least
    ``seq_len`` (§3). ``[B, T, C] → [B, T, C + ⌈log₂ seq_len⌉·filters]``."""

    def __init__(self, in_channels: int, seq_len: int, filters: int) -> None:
        super().__init__()
        blocks, channels = [], in_channels
        for i in range(max(1, math.ceil(math.log2(seq_len)))):
            blocks.append(DenseBlock(channels, filters, 2**i))
            channels = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def extend(self, prefix: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            prefix, x = block.extend(prefix, x)
        return prefix, x


class AttentionBlock(nn.Module):
    """Single-head causal soft attention, its read-out concatenated to the input (§3):
    ``read_t = Σ_{s ≤ t} softmax_s(q_t·k_s / √key_size) v_s``; ``[B, T, C] → [B, T, C + value_size]``."""

    def __init__(self, in_channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.query = nn.Linear(in_channels, key_size)
        self.key = nn.Linear(in_channels, key_size)
        self.value = nn.Linear(in_channels, value_size)
        self.scale = key_size**-0.5
        self.out_channels = in_channels + value_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        logits = self.query(x) @ self.key(x).transpose(1, 2) * self.scale  # [B, T (reader), T (read)]
        future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        probs = torch.softmax(logits.masked_fill(future, float("-inf")), dim=-1)
        return torch.cat([x, probs @ self.value(x)], dim=-1)

    def extend(self, prefix: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.query(x)  # [B, M, K]: each continuation reads the whole prefix and itself
        logits = torch.cat(
            [q @ self.key(prefix).transpose(1, 2), (q * self.key(x)).sum(-1, keepdim=True)], dim=-1
        )
        probs = torch.softmax(logits * self.scale, dim=-1)  # [B, M, P + 1]
        read = probs[..., :-1] @ self.value(prefix) + probs[..., -1:] * self.value(x)
        return self(prefix), torch.cat([x, read], dim=-1)


class SNAILNet(nn.Module):
    """The sequence model: attention blocks with a TC block between consecutive ones, then a per-position
    linear layer (the paper's 1×1 convolution) to ``outputs`` logits: ``[B, T, C] → [B, T, outputs]``."""

    def __init__(
        self,
        in_channels: int,
        seq_len: int,
        outputs: int,
        tc_filters: int,
        key_sizes: Sequence[int],
        value_sizes: Sequence[int],
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        channels = in_channels
        for i, (key_size, value_size) in enumerate(zip(key_sizes, value_sizes, strict=True)):
            if i:
                blocks.append(TCBlock(channels, seq_len, tc_filters))
                channels = blocks[-1].out_channels
            blocks.append(AttentionBlock(channels, key_size, value_size))
            channels = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(channels, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def extend(self, prefix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, M, outputs]`` at the last position of each sequence ``[prefix, x[:, m]]``."""
        for block in self.blocks[:-1]:
            prefix, x = block.extend(prefix, x)
        _, x = self.blocks[-1].extend(prefix, x)  # (the prefix's last outputs are not needed)
        return self.head(x)


# -- the learner -----------------------------------------------------------------------------------------
class SNAILState(NamedTuple):
    """Episodes being adapted to: their batch and, once read, the support sequences
    ``[T, N·K, D + max_ways]`` (embeddings ⊕ one-hot labels)."""

    batch: FewShotBatch
    ways: int
    support: torch.Tensor | None


class SNAIL(MetaLearner[FewShotBatch, SNAILState]):
    """SNAIL behind the meta-learner interface (see the module docstring).

    Args:
        config: the hyperparameters.
        tasks: the episodes; its train and test shapes fix ``max_ways`` and the TC blocks' sequence length.
        device: where the networks live.
        seed: seeds the generator of the support-set shuffles.
    """

    metric_name = "accuracy"
    higher_is_better = True
    step_unit = ""  # no adaptation steps: the support set is read once

    def __init__(
        self, config: SNAILConfig, tasks: EpisodeSampler, device: torch.device, seed: int = 0
    ) -> None:
        self.config, self.tasks, self.device = config, tasks, device
        shapes = tasks.shapes.values()
        self.max_ways = max(s.ways for s in shapes)
        self.seq_len = max(s.ways * s.shots for s in shapes) + 1
        embedding = Conv4(tuple(tasks.dataset.images.shape[1:]), config.hidden_channels, out_features=0)
        sequence = SNAILNet(
            embedding.feature_dim + self.max_ways,
            self.seq_len,
            self.max_ways,
            config.tc_filters,
            config.key_sizes,
            config.value_sizes,
        )
        self.net = nn.ModuleDict({"embedding": embedding, "sequence": sequence}).to(device)
        distributed.sync_batch_norm_(self.net)  # one BatchNorm batch: the meta-batch of every rank
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.episodes_seen = 0

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[T, M, C, H, W]`` → ``[T, M, D]`` (all tasks' images through the network in one batch)."""
        tasks, m = images.shape[:2]
        return self.net["embedding"](images.flatten(0, 1)).reshape(tasks, m, -1)

    def with_labels(self, features: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Sequence inputs: ``features [T, S, D]`` ⊕ one-hot ``labels [T, S]`` (all zeros for ``None``)."""
        if labels is None:
            onehot = features.new_zeros(*features.shape[:2], self.max_ways)
        else:
            onehot = F.one_hot(labels, self.max_ways).to(features.dtype)
        return torch.cat([features, onehot], dim=-1)

    def query_logits(self, support: torch.Tensor, query_x: torch.Tensor, ways: int) -> torch.Tensor:
        """Logits ``[T, M, N]``: each query ``[T, M, …]`` as the last element after its support sequence."""
        query = self.with_labels(self.embed(query_x), None)
        return self.net["sequence"].extend(support, query)[..., :ways]

    # -- inner loop ----------------------------------------------------------------------------------
    def initial(self, tasks: Sequence[Episode]) -> SNAILState:
        return SNAILState(self.tasks.batch(tasks, self.device), tasks[0].ways, None)

    def support(self, tasks: Sequence[Episode], adapted: SNAILState, step: int) -> FewShotBatch:
        return adapted.batch

    @torch.no_grad()
    def adapt(self, adapted: SNAILState, support: FewShotBatch, step: int) -> SNAILState:
        if adapted.support is not None:
            return adapted  # the memory is the support set: nothing more to read
        self.net.eval()
        chunk = self.config.eval_chunk
        sequences = [
            self.with_labels(self.embed(support.support_x[i : i + chunk]), support.support_y[i : i + chunk])
            for i in range(0, support.num_tasks, chunk)
        ]
        return adapted._replace(support=torch.cat(sequences))

    @torch.no_grad()
    def evaluate(self, tasks: Sequence[Episode], adapted: SNAILState) -> torch.Tensor:
        batch = adapted.batch
        if adapted.support is None:
            return torch.full((batch.num_tasks,), 1.0 / adapted.ways, device=self.device)
        self.net.eval()
        chunk, out = self.config.eval_chunk, []
        for i in range(0, batch.num_tasks, chunk):
            support, query_x = adapted.support[i : i + chunk], batch.query_x[i : i + chunk]
            scores = self.query_logits(support, query_x, adapted.ways)
            out.append((scores.argmax(-1) == batch.query_y[i : i + chunk]).float().mean(-1))
        return torch.cat(out)

    # -- outer loop ----------------------------------------------------------------------------------
    def meta_update(self, tasks: Sequence[Episode]) -> dict[str, float]:
        start = time.perf_counter()
        self.net.train()
        batch, ways = self.tasks.batch(tasks, self.device), tasks[0].ways
        num_tasks, n_support = batch.support_x.shape[:2]
        features = self.embed(torch.cat([batch.support_x, batch.query_x], dim=1))
        support = self.with_labels(features[:, :n_support], batch.support_y)
        order = torch.rand(num_tasks, n_support, generator=self.generator, device=self.device).argsort(dim=1)
        support = support.gather(1, order.unsqueeze(-1).expand_as(support))  # one shuffle per episode
        query = self.with_labels(features[:, n_support:], None)
        scores = self.net["sequence"].extend(support, query)[..., :ways]
        loss = F.cross_entropy(scores.flatten(0, 1), batch.query_y.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_grads_(self.optimizer)  # data-parallel: the meta-batch's mean gradient
        self.optimizer.step()
        self.episodes_seen += len(tasks) * distributed.world_size()  # the whole meta-batch's episodes
        return {
            "env_steps": float(len(tasks)),
            "meta_train/accuracy_pre_adapt": 1.0 / ways,
            "meta_train/accuracy_post_adapt": float((scores.argmax(-1) == batch.query_y).float().mean()),
            "losses/loss": float(loss.detach()),
            "time/iteration_s": time.perf_counter() - start,
        }

    def generators(self) -> tuple[torch.Generator]:
        """The support-set shuffles of training episodes."""
        return (self.generator,)

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "episodes_seen": self.episodes_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.episodes_seen = int(state["episodes_seen"])


def build(config: Any, device: torch.device) -> tuple[EpisodeSampler, SNAIL]:
    """The registry's builder: episodes of ``config.data``, a learner of ``config.algo``."""
    from metarl.data import build_image_sampler

    tasks = build_image_sampler(config.data, "snail")
    with seeded(config.run.seed):
        return tasks, SNAIL(config.algo, tasks, device, config.run.seed)
