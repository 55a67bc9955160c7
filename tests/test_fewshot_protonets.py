"""Prototypical Networks: distances and prototypes against hand-computed values; it learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fewshot_fixtures import make_image_folder

from metarl.algorithms.protonets import (
    ProtoNets,
    ProtoNetsConfig,
    accuracy,
    logits,
    prototypes,
    squared_euclidean,
)
from metarl.core import adaptation_curve
from metarl.data import EpisodeSampler, EpisodeShape, load_image_folder


def test_prototypes_and_distances_by_hand() -> None:
    support = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [1.0, 1.0], [1.0, 3.0]]])  # 2 ways × 2 shots
    protos = prototypes(support, ways=2)
    torch.testing.assert_close(protos, torch.tensor([[[1.0, 0.0], [1.0, 2.0]]]))
    query = torch.tensor([[[1.0, 0.0], [4.0, 2.0], [0.0, 1.0]]])
    expected = torch.tensor([[[0.0, 4.0], [13.0, 9.0], [2.0, 2.0]]])  # ‖q − c‖²
    torch.testing.assert_close(squared_euclidean(query, protos), expected)
    torch.testing.assert_close(logits(query, protos, "sqeuclidean", 1.0), -expected)
    cos = logits(query, protos, "cosine", 10.0)
    torch.testing.assert_close(cos[0, 0], torch.tensor([10.0, 10.0 / 5**0.5]))
    assert accuracy(-expected, torch.tensor([[0, 1, 0]])).tolist() == [1.0]
    with pytest.raises(ValueError, match="not 3 classes"):
        prototypes(support, ways=3)


@pytest.mark.parametrize("distance", ["sqeuclidean", "cosine"])
def test_protonets_learns_an_easy_dataset(tmp_path: Path, distance: str) -> None:
    torch.manual_seed(0)
    dataset, train, test = load_image_folder(make_image_folder(tmp_path, 10, 6, 6))
    tasks = EpisodeSampler(dataset, train, test, EpisodeShape(8, 1, 3), EpisodeShape(5, 1, 3))
    learner = ProtoNets(ProtoNetsConfig(hidden_channels=16, distance=distance), tasks, torch.device("cpu"))
    rng = np.random.default_rng(0)
    losses = [learner.meta_update(tasks.sample(1, split="train", rng=rng))["losses/loss"] for _ in range(25)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    curve = adaptation_curve(learner, tasks.held_out(20, seed=0), 2).mean(dim=1)
    assert curve[0] == pytest.approx(0.2)  # no prototypes yet: chance
    assert curve[1] > 0.8 and curve[2] == curve[1]  # prototypes of unseen classes separate them
    state = learner.state_dict()
    clone = ProtoNets(ProtoNetsConfig(hidden_channels=16, distance=distance), tasks, torch.device("cpu"))
    clone.load_state_dict(state)
    assert torch.equal(
        adaptation_curve(clone, tasks.held_out(20, seed=0), 1),
        adaptation_curve(learner, tasks.held_out(20, seed=0), 1),
    )


@pytest.mark.parametrize("fce", [False, True])
def test_matching_nets_attention_and_learning(tmp_path: Path, fce: bool) -> None:
    from metarl.algorithms.matching_nets import (
        MatchingNets,
        MatchingNetsConfig,
        cosine_attention,
        label_mixture,
    )

    query = torch.tensor([[[1.0, 0.0]]])
    support = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])
    a = cosine_attention(query, support, 1.0)
    e = torch.tensor([np.e, 1.0])
    torch.testing.assert_close(a[0, 0], e / e.sum())  # softmax(cos) = softmax([1, 0])
    torch.testing.assert_close(label_mixture(a, torch.tensor([[1, 0]]), 2)[0, 0], (e / e.sum()).flip(0))

    torch.manual_seed(0)
    dataset, train, test = load_image_folder(make_image_folder(tmp_path, 10, 6, 6))
    tasks = EpisodeSampler(dataset, train, test, EpisodeShape(5, 1, 3), EpisodeShape(5, 1, 3))
    config = MatchingNetsConfig(
        meta_batch_size=2, hidden_channels=16, fce=fce, similarity="cosine", attention_scale=5.0
    )
    learner = MatchingNets(config, tasks, torch.device("cpu"))
    rng = np.random.default_rng(0)
    losses = [learner.meta_update(tasks.sample(2, split="train", rng=rng))["losses/loss"] for _ in range(40)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    curve = adaptation_curve(learner, tasks.held_out(20, seed=0), 1).mean(dim=1)
    assert curve[0] == pytest.approx(0.2) and curve[1] > 0.7


def test_transfer_baselines_adapt(tmp_path: Path) -> None:
    import dataclasses

    from metarl.algorithms.transfer import Transfer, TransferConfig

    torch.manual_seed(0)
    dataset, train, test = load_image_folder(make_image_folder(tmp_path, 10, 6, 6))
    tasks = EpisodeSampler(dataset, train, test, EpisodeShape(5, 2, 2), EpisodeShape(5, 1, 3))
    config = TransferConfig(meta_batch_size=4, hidden_channels=16, replay_examples=8)
    learner = Transfer(config, tasks, torch.device("cpu"))
    rng = np.random.default_rng(0)
    losses = [learner.meta_update(tasks.sample(4, split="train", rng=rng))["losses/loss"] for _ in range(15)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    for mode in ("linear", "finetune", "regularized"):  # (a), (b), (c) from the same pretrained network
        # full fine-tuning moves the pretrained layers at a tenth of the head's step, as the Omniglot presets
        # do: at the head's step, 5-image BatchNorm batches make it overshoot after its first step (0.66 ->
        # 0.45 with one thread); the λ-regularized loss is its own brake and keeps the full step
        ratio = 0.1 if mode == "finetune" else 1.0
        learner.config = dataclasses.replace(config, mode=mode, features_lr_ratio=ratio)
        curve = adaptation_curve(learner, tasks.held_out(10, seed=0), 2).mean(dim=1)
        assert curve[0] == pytest.approx(0.2)  # zero head: every class ties, argmax picks class 0
        assert curve[2] > 0.45, (mode, curve)  # well above chance after 20 steps on the support set
        assert curve[2] >= curve[1] - 0.05, (mode, curve)  # and a second step does not undo the first
