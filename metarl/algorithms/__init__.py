"""The algorithm registry: ``algo.name`` in a config → its config dataclass and how to build it.

Each algorithm is one module that reads top to bottom (config dataclass first, then the learner). A
builder turns the experiment's config into ``(TaskSampler, MetaLearner)``; it is the only place that knows
how an algorithm meets its data (rollouts of a task family, or episodes of a data set).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from metarl.algorithms import maml_rl, maml_supervised, matching_nets, protonets, rl2, snail, transfer
from metarl.core import MetaLearner, TaskSampler

#: ``(experiment config, device) -> (task sampler, learner)``; the config's ``algo`` is the spec's type.
Builder = Callable[[Any, torch.device], tuple[TaskSampler, MetaLearner]]


@dataclass(frozen=True)
class AlgorithmSpec:
    """An entry of the registry: its config type, a one-line summary and its builder."""

    config_type: type
    summary: str
    build: Builder
    source: str = "env"  # the config section the algorithm reads its tasks from: "env" or "data"


ALGORITHMS: dict[str, AlgorithmSpec] = {
    "maml_rl": AlgorithmSpec(
        maml_rl.MAMLRLConfig,
        "MAML with a second-order VPG inner loop and a TRPO, PPO or Adam-VPG outer loop (Finn et al. 2017)",
        maml_rl.build,
    ),
    "pretrained_rl": AlgorithmSpec(
        maml_rl.PretrainedRLConfig,
        "MAML-RL's pretrained baseline: one policy trained on all tasks, fine-tuned at test time",
        maml_rl.build,
    ),
    "maml_supervised": AlgorithmSpec(
        maml_supervised.MAMLSupervisedConfig,
        "MAML / FOMAML / Meta-SGD on few-shot episodes or sinusoids, vmapped over tasks (Finn et al. 2017)",
        maml_supervised.build,
        source="data",
    ),
    "protonets": AlgorithmSpec(
        protonets.ProtoNetsConfig,
        "Prototypical Networks: nearest class mean in a conv4 embedding (Snell et al. 2017)",
        protonets.build,
        source="data",
    ),
    "matching_nets": AlgorithmSpec(
        matching_nets.MatchingNetsConfig,
        "Matching Networks: cosine attention over the support set, optional FCE (Vinyals et al. 2016)",
        matching_nets.build,
        source="data",
    ),
    "snail": AlgorithmSpec(
        snail.SNAILConfig,
        "SNAIL: a causal attention + temporal-convolution sequence model reads the support set "
        "(Mishra et al. 2018)",
        snail.build,
        source="data",
    ),
    "transfer": AlgorithmSpec(
        transfer.TransferConfig,
        "Transfer baselines: pretrain on all training classes / tasks, fine-tune on the support set",
        transfer.build,
        source="data",
    ),
    "rl2": AlgorithmSpec(
        rl2.RL2Config,
        "RL²: a GRU whose hidden state persists across a trial's episodes, trained by PPO (Duan et al. 2016)",
        rl2.build,
    ),
}
