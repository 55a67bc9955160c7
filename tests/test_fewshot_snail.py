"""SNAIL: its blocks are causal, queries cannot see each other, it learns, it round-trips its state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fewshot_fixtures import make_image_folder
from torch import nn

from metarl.algorithms.snail import (
    SNAIL,
    AttentionBlock,
    CausalConv1d,
    DenseBlock,
    SNAILConfig,
    SNAILNet,
    SNAILState,
    TCBlock,
)
from metarl.core import adaptation_curve
from metarl.data import EpisodeSampler, EpisodeShape, FewShotBatch, load_image_folder
from metarl.errors import ConfigError

CPU = torch.device("cpu")
SMALL = SNAILConfig(
    meta_batch_size=8, lr=3e-3, hidden_channels=16, tc_filters=16, key_sizes=(16,) * 3, value_sizes=(16,) * 3
)


def perturbed_outputs(
    block: nn.Module, t: int, length: int = 10, channels: int = 6
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's outputs on a random sequence and on the same sequence with position ``t`` changed."""
    torch.manual_seed(0)
    x = torch.randn(2, length, channels)
    y = x.clone()
    y[:, t] += torch.randn(2, channels)
    with torch.no_grad():
        return block(x), block(y)


@pytest.mark.parametrize(
    "block",
    [
        CausalConv1d(6, 5, dilation=2),
        DenseBlock(6, 4, dilation=3),
        TCBlock(6, seq_len=10, filters=4),
        AttentionBlock(6, key_size=8, value_size=5),
    ],
    ids=["conv", "dense", "tc", "attention"],
)
def test_blocks_are_causal(block: nn.Module) -> None:
    for t in (0, 4, 9):
        out, changed = perturbed_outputs(block, t)
        assert torch.equal(out[:, :t], changed[:, :t])  # the past never sees position t
        assert not torch.allclose(out[:, t], changed[:, t])  # position t itself does


def test_dilation_and_receptive_field() -> None:
    conv = CausalConv1d(3, 4, dilation=3)
    out, changed = perturbed_outputs(conv, 2, channels=3)
    assert torch.equal(out[:, 3:5], changed[:, 3:5])  # t + 1, t + 2 do not read t
    assert not torch.allclose(out[:, 5], changed[:, 5])  # t + 3 = t + d does
    tc = TCBlock(6, seq_len=10, filters=4)
    assert [b.conv.dilation for b in tc.blocks] == [1, 2, 4, 8]  # ⌈log₂ 10⌉ = 4 dense blocks
    assert tc.out_channels == 6 + 4 * 4
    out, changed = perturbed_outputs(tc, 0)
    assert not torch.allclose(out[:, -1], changed[:, -1])  # the last position sees the first
    assert len(TCBlock(6, seq_len=2, filters=4).blocks) == 1


def test_extend_equals_running_each_query_as_its_own_sequence() -> None:
    torch.manual_seed(0)
    net = SNAILNet(7, seq_len=6, outputs=3, tc_filters=4, key_sizes=(5, 6, 7), value_sizes=(3, 4, 5))
    prefix, queries = torch.randn(2, 5, 7), torch.randn(2, 4, 7)
    with torch.no_grad():
        batched = net.extend(prefix, queries)
        for m in range(4):
            alone = net(torch.cat([prefix, queries[:, m : m + 1]], dim=1))[:, -1]
            torch.testing.assert_close(batched[:, m], alone)
            torch.testing.assert_close(batched[:, m : m + 1], net.extend(prefix, queries[:, m : m + 1]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[SNAIL, EpisodeSampler]:
    """SNAIL after 150 meta-iterations of 8 episodes, 3-way 1-shot, on easy generated classes (~3 s)."""
    torch.manual_seed(0)
    root = make_image_folder(tmp_path_factory.mktemp("snail_data"), 30, 6, 6)
    dataset, train, test = load_image_folder(root)
    tasks = EpisodeSampler(dataset, train, test, EpisodeShape(3, 1, 2), EpisodeShape(3, 1, 3))
    learner = SNAIL(SMALL, tasks, CPU, seed=0)
    rng = np.random.default_rng(0)
    losses = [learner.meta_update(tasks.sample(8, split="train", rng=rng))["losses/loss"] for _ in range(150)]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    return learner, tasks


def test_snail_learns_an_easy_dataset(trained: tuple[SNAIL, EpisodeSampler]) -> None:
    learner, tasks = trained
    curve = adaptation_curve(learner, tasks.held_out(30, seed=0), 2).mean(dim=1)
    assert curve[0] == pytest.approx(1 / 3)  # no support set read yet: chance
    assert curve[1] > 0.6, curve  # unseen classes, labelled only through the sequence
    assert curve[2] == curve[1]  # reading the support set again changes nothing


def test_queries_do_not_see_each_other(trained: tuple[SNAIL, EpisodeSampler]) -> None:
    learner, tasks = trained
    episodes = tasks.held_out(10, seed=0)
    adapted = learner.initial(episodes)
    adapted = learner.adapt(adapted, learner.support(episodes, adapted, 0), 0)
    batch, queries = adapted.batch, adapted.batch.query_x.shape[1]
    together = learner.evaluate(episodes, adapted)
    one_by_one = []
    for m in range(queries):
        alone = FewShotBatch(
            batch.support_x, batch.support_y, batch.query_x[:, m : m + 1], batch.query_y[:, m : m + 1]
        )
        one_by_one.append(learner.evaluate(episodes, SNAILState(alone, adapted.ways, adapted.support)))
    assert torch.equal(together, torch.stack(one_by_one).mean(0))
    assert 0 < together.mean() < 1  # not a trivial case: some queries right, some wrong


def test_state_dict_round_trip(trained: tuple[SNAIL, EpisodeSampler]) -> None:
    learner, tasks = trained
    clones = []
    for _ in range(2):
        clone = SNAIL(SMALL, tasks, CPU, seed=123)
        clone.load_state_dict(learner.state_dict())
        clones.append(clone)
    episodes = tasks.held_out(20, seed=1)
    assert torch.equal(adaptation_curve(clones[0], episodes, 1), adaptation_curve(learner, episodes, 1))
    assert clones[0].episodes_seen == learner.episodes_seen == 150 * 8
    batch = tasks.sample(4, split="train", rng=np.random.default_rng(5))
    first, second = (c.meta_update(batch) for c in clones)  # optimiser and shuffle generator restored
    assert first["losses/loss"] == second["losses/loss"]


def test_training_ways_wider_than_test_ways(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dataset, train, test = load_image_folder(make_image_folder(tmp_path, 8, 5, 4))
    tasks = EpisodeSampler(dataset, train, test, EpisodeShape(5, 1, 2), EpisodeShape(3, 2, 1))
    learner = SNAIL(SMALL, tasks, CPU)
    assert learner.max_ways == 5 and learner.seq_len == 7  # max(5·1, 3·2) support pairs + the query
    metrics = learner.meta_update(tasks.sample(2, split="train", rng=np.random.default_rng(0)))
    assert metrics["env_steps"] == 2 and metrics["meta_train/accuracy_pre_adapt"] == pytest.approx(0.2)
    assert np.isfinite(metrics["losses/loss"]) and metrics["time/iteration_s"] > 0
    curve = adaptation_curve(learner, tasks.held_out(4, seed=0), 1)
    assert curve.shape == (2, 4) and torch.allclose(curve[0], torch.full((4,), 1 / 3))
    assert torch.allclose(curve[1] * 3, (curve[1] * 3).round())  # 3 queries: accuracies in thirds


def test_config_checks_and_sinusoid_is_refused() -> None:
    from metarl.algorithms.snail import build
    from metarl.config import resolve

    with pytest.raises(ValueError, match="key_sizes and value_sizes"):
        SNAILConfig(key_sizes=(8, 8), value_sizes=(8,))
    with pytest.raises(ValueError, match="value_sizes must be > 0"):
        SNAILConfig(value_sizes=(8, 0, 8))
    with pytest.raises(ValueError, match="tc_filters must be > 0"):
        SNAILConfig(tc_filters=0)
    config = resolve({"algo": {"name": "snail"}, "data": {"dataset": "sinusoid"}})
    with pytest.raises(ConfigError, match="snail classifies images"):
        build(config, CPU)
