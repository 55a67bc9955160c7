"""Matching Networks: the attention can become confident, one BatchNorm batch per meta-step, the learned
inverse temperature, and old checkpoints still load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fewshot_fixtures import make_image_folder

from metarl.algorithms.matching_nets import (
    MatchingNets,
    MatchingNetsConfig,
    cosine_attention,
    similarities,
)
from metarl.data import EpisodeSampler, EpisodeShape, load_image_folder

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> EpisodeSampler:
    dataset, train, test = load_image_folder(make_image_folder(tmp_path_factory.mktemp("mn"), 10, 6, 6))
    return EpisodeSampler(dataset, train, test, EpisodeShape(5, 1, 3), EpisodeShape(5, 1, 3))


def test_similarities_by_hand() -> None:
    query = torch.tensor([[[3.0, 4.0]]])
    support = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    torch.testing.assert_close(similarities(query, support, "cosine"), torch.tensor([[[0.6, 0.8]]]))
    # support-only normalisation: q·s/|s| = |q| cos(q, s)
    torch.testing.assert_close(similarities(query, support, "support_cosine"), torch.tensor([[[3.0, 4.0]]]))


def test_literal_eq2_is_capped_and_both_cures_exceed_0_9() -> None:
    """Non-negative (ReLU → max-pool) embeddings: with plain cosines the right one of 5 support items gets
    at most e/(e+4) = 0.405; a query norm (support-only normalisation) or an inverse temperature of 10 lets
    the attention exceed 0.9 on it."""
    support = torch.eye(5).unsqueeze(0)  # five orthogonal non-negative embeddings
    query = 4.0 * support[:, :1]  # the first item, with norm 4
    cap = math.e / (math.e + 4)
    literal = cosine_attention(query, support, 1.0, "cosine")[0, 0]
    assert literal[0] == pytest.approx(cap)
    noisy = torch.rand(1, 200, 5) + 10 * support[:, :1]  # any non-negative query: never above the cap
    assert cosine_attention(noisy, support, 1.0, "cosine")[..., 0].max() <= cap + 1e-6
    assert cosine_attention(query, support, 1.0, "support_cosine")[0, 0, 0] > 0.9
    assert cosine_attention(query, support, 10.0, "cosine")[0, 0, 0] > 0.9


@pytest.mark.parametrize(
    ("similarity", "scale"), [("support_cosine", 1.0), ("cosine", 10.0), ("cosine", 1.0)]
)
def test_training_attention_exceeds_0_9_unless_literal(
    tasks: EpisodeSampler, similarity: str, scale: float
) -> None:
    """The query NLL of eq. 1 is −log of the attention on the right item: both cures train it below
    −log 0.9 within 20 meta-steps; the literal eq. 2 cannot pass −log(e/(e+4)) = 0.905."""
    torch.manual_seed(0)
    config = MatchingNetsConfig(
        meta_batch_size=4, hidden_channels=16, lr=1e-2, similarity=similarity, attention_scale=scale
    )
    learner = MatchingNets(config, tasks, CPU)
    rng = np.random.default_rng(0)
    losses = [learner.meta_update(tasks.sample(4, split="train", rng=rng))["losses/loss"] for _ in range(20)]
    if scale == 1.0 and similarity == "cosine":
        assert min(losses) > -math.log(math.e / (math.e + 4)) - 1e-4
    else:
        assert np.mean(losses[-3:]) < -math.log(0.9), losses


def test_support_and_query_share_one_batchnorm_batch(tasks: EpisodeSampler) -> None:
    learner = MatchingNets(MatchingNetsConfig(meta_batch_size=3, hidden_channels=8), tasks, CPU)
    sizes: list[int] = []
    handle = learner.net.register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[0]))
    learner.meta_update(tasks.sample(3, split="train", rng=np.random.default_rng(0)))
    handle.remove()
    assert sizes == [3 * (5 * 1 + 5 * 3)]  # one pass: every episode's support and query images together


def test_learned_scale_schedule_and_old_checkpoints(tasks: EpisodeSampler) -> None:
    config = MatchingNetsConfig(
        meta_batch_size=2,
        hidden_channels=8,
        similarity="cosine",
        attention_scale=10.0,
        learn_scale=True,
        lr=1e-2,
        lr_halve_every=4,
    )
    learner = MatchingNets(config, tasks, CPU)
    rng = np.random.default_rng(0)
    metrics = [learner.meta_update(tasks.sample(2, split="train", rng=rng)) for _ in range(3)]
    assert [m["losses/lr"] for m in metrics] == [1e-2, 1e-2, 5e-3]  # halved after 4 episodes
    assert metrics[-1]["meta_train/attention_scale"] != pytest.approx(10.0, abs=1e-4)  # it learns
    restored = MatchingNets(config, tasks, CPU)
    restored.load_state_dict(learner.state_dict())
    assert torch.equal(restored.log_scale, learner.log_scale) and restored.episodes_seen == 6
    old = {k: v for k, v in learner.state_dict().items() if k not in ("log_scale", "episodes_seen")}
    fresh = MatchingNets(config, tasks, CPU)
    fresh.load_state_dict(old)  # a checkpoint written before these keys existed
    assert float(fresh.log_scale.detach().exp()) == pytest.approx(10.0) and fresh.episodes_seen == 0
    with pytest.raises(ValueError, match="similarity"):
        MatchingNetsConfig(similarity="euclidean")  # type: ignore[arg-type]
