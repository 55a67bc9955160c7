"""Transfer baselines on sinusoid regression (MAML's "pretrained" baseline) and learning from scratch."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from fewshot_fixtures import make_image_folder
from torch.func import vmap

from metarl.algorithms.transfer import Transfer, TransferConfig, TransferState
from metarl.core import adaptation_curve
from metarl.data import EpisodeSampler, EpisodeShape, SinusoidSampler, load_image_folder

CPU = torch.device("cpu")
SINUSOID = dict(meta_batch_size=25, finetune_lr=0.01, steps_per_adapt=1, replay_examples=32)


def sinusoid_learner(mode: str = "finetune") -> tuple[SinusoidSampler, Transfer]:
    torch.manual_seed(0)
    tasks = SinusoidSampler(train_shots=10, test_shots=5, queries=10)
    return tasks, Transfer(TransferConfig(mode=mode, **SINUSOID), tasks, CPU)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pretrained() -> tuple[SinusoidSampler, Transfer, list[float]]:
    """A regression learner after 300 pretraining iterations, and its pretraining losses."""
    tasks, learner = sinusoid_learner()
    rng = np.random.default_rng(0)
    batches = (tasks.sample(25, split="train", rng=rng) for _ in range(300))
    return tasks, learner, [learner.meta_update(batch)["losses/loss"] for batch in batches]


def support_mse(learner: Transfer, state: TransferState) -> torch.Tensor:
    """Per-task MSE (or accuracy) of ``state`` on its own support set."""
    b = state.batch
    return vmap(learner.metric)(state.features, state.head, b.support_x, b.support_x, b.support_y)


def adapted(learner: Transfer, tasks: list, steps: int) -> tuple[TransferState, TransferState]:
    start = state = learner.initial(tasks)
    for step in range(steps):
        state = learner.adapt(state, learner.support(tasks, state, step), step)
    return start, state


def test_sinusoid_pretraining_lowers_the_regression_loss(
    pretrained: tuple[SinusoidSampler, Transfer, list[float]],
) -> None:
    tasks, learner, losses = pretrained
    held = tasks.held_out(100, seed=0)
    _, fresh = sinusoid_learner()
    before = float(fresh.evaluate(held, fresh.initial(held)).mean())
    after = float(learner.evaluate(held, learner.initial(held)).mean())
    assert np.mean(losses[-50:]) < 0.9 * np.mean(losses[:50]), (losses[:50], losses[-50:])
    assert after < 0.85 * before, (before, after)  # E[y²] ≈ 4.25 → towards the mean function's ≈ 3.0
    metrics = learner.meta_update(tasks.sample(25, split="train", rng=np.random.default_rng(1)))
    assert set(metrics) >= {"env_steps", "meta_train/mse_pre_adapt", "meta_train/mse_post_adapt"}


@pytest.mark.parametrize("mode", ["linear", "finetune", "regularized"])
def test_sinusoid_finetuning_lowers_the_support_mse(
    pretrained: tuple[SinusoidSampler, Transfer, list[float]], mode: str
) -> None:
    tasks, trained, _ = pretrained
    learner = copy.deepcopy(trained)
    learner.config = dataclasses.replace(learner.config, mode=mode)
    held = tasks.held_out(50, seed=0)
    start, end = adapted(learner, held, 5)
    for k, v in learner.net.head.named_parameters():  # the pretrained output layer is the starting head
        torch.testing.assert_close(start.head[k], v.detach().expand_as(start.head[k]))
    assert support_mse(learner, end).mean() < 0.8 * support_mse(learner, start).mean()
    assert torch.isfinite(adaptation_curve(learner, held, 3)).all()
    features_moved = any(not torch.equal(start.features[k], end.features[k]) for k in start.features)
    assert features_moved == (mode != "linear")  # "linear" fits the head only
    assert any(not torch.equal(start.head[k], end.head[k]) for k in start.head)
    net = dict(trained.net.named_parameters())
    assert all(torch.equal(v, net[k]) for k, v in learner.net.named_parameters())  # θ itself never moves


def test_regularized_fine_tuning_stays_closer_to_the_pretraining_fit(
    pretrained: tuple[SinusoidSampler, Transfer, list[float]],
) -> None:
    tasks, trained, _ = pretrained
    held = tasks.held_out(50, seed=0)
    replay_mse = {}
    for mode in ("finetune", "regularized"):
        learner = copy.deepcopy(trained)
        learner.config = dataclasses.replace(learner.config, mode=mode, reg_lambda=0.9)
        _, end = adapted(learner, held, 10)
        replay = vmap(learner.predict, in_dims=(0, 0, None, 0))(
            end.features, end.head, learner.replay_x, end.batch.support_x
        )
        replay_mse[mode] = float(((replay - learner.replay_y) ** 2).mean())
    assert replay_mse["regularized"] < replay_mse["finetune"], replay_mse


def test_metric_orientation_and_per_task_query_mse(tmp_path: Path) -> None:
    tasks, learner = sinusoid_learner()
    assert (learner.metric_name, learner.higher_is_better) == ("mse", False)
    assert learner.selection_score([3.0, 1.0]) == -1.0  # lower MSE is the better checkpoint
    held = tasks.held_out(7, seed=0)
    batch = tasks.batch(held, CPU, split="test")
    with torch.no_grad():
        expected = ((learner.net(batch.query_x) - batch.query_y) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(learner.evaluate(held, learner.initial(held)), expected)
    dataset, train, test = load_image_folder(make_image_folder(tmp_path, 6, 5, 4))
    images = EpisodeSampler(dataset, train, test, EpisodeShape(5, 1, 2), EpisodeShape(5, 1, 2))
    classifier = Transfer(TransferConfig(hidden_channels=8, replay_examples=4), images, CPU)
    assert (classifier.metric_name, classifier.higher_is_better) == ("accuracy", True)


def test_untrained_learner_learns_from_scratch(tmp_path: Path) -> None:
    """0 pretraining iterations, mode "finetune": a fresh network fitted on each support set."""
    tasks, learner = sinusoid_learner()
    held = tasks.held_out(50, seed=0)
    start, end = adapted(learner, held, 10)
    assert support_mse(learner, end).mean() < 0.7 * support_mse(learner, start).mean()
    assert torch.isfinite(learner.evaluate(held, end)).all()

    torch.manual_seed(0)
    dataset, train, test = load_image_folder(make_image_folder(tmp_path, 10, 6, 6))
    images = EpisodeSampler(dataset, train, test, EpisodeShape(5, 2, 2), EpisodeShape(5, 1, 3))
    config = TransferConfig(meta_batch_size=4, hidden_channels=16, replay_examples=8, mode="finetune")
    scratch = Transfer(config, images, CPU)
    counts = [int(v) for k, v in scratch.net.named_buffers() if k.endswith("num_batches_tracked")]
    assert counts and max(counts) == 0  # building conv4 must not fold a probe batch into BatchNorm
    assert scratch.support_statistics()
    episodes = images.held_out(10, seed=0)
    start, end = adapted(scratch, episodes, 3)
    assert support_mse(scratch, start).mean() == pytest.approx(0.2)  # zero head: chance
    assert support_mse(scratch, end).mean() > 0.95  # 30 SGD steps fit the 5 support images
    assert scratch.evaluate(episodes, end).mean() > 0.45  # and generalise above chance on the easy data
    scratch.meta_update(images.sample(4, split="train", rng=np.random.default_rng(0)))
    assert not scratch.support_statistics()  # pretrained: BatchNorm's running statistics from then on


def test_the_sinusoid_preset_builds_a_regression_learner() -> None:
    from metarl.algorithms import ALGORITHMS
    from metarl.config import load_toml, resolve

    path = Path(__file__).parents[1] / "experiments" / "fewshot_transfer_sinusoid.toml"
    config = resolve(load_toml(path))
    tasks, learner = ALGORITHMS[config.algo_name].build(config, CPU)
    assert isinstance(tasks, SinusoidSampler) and isinstance(learner, Transfer)
    assert learner.metric_name == "mse" and learner.config.steps_per_adapt == 1
    assert learner.config.finetune_lr == 0.01 and learner.config.hidden_sizes == (40, 40)
    metrics = learner.meta_update(tasks.sample(3, split="train", rng=np.random.default_rng(0)))
    assert np.isfinite(metrics["losses/loss"])
    with pytest.raises(ValueError, match="hidden_sizes"):
        TransferConfig(hidden_sizes=())


def test_features_lr_ratio_scales_only_the_pretrained_layers_step(pretrained) -> None:
    tasks, learner, _ = pretrained
    episodes = tasks.held_out(4, seed=3)
    start = learner.initial(episodes)
    moved = {}
    for ratio in (1.0, 0.25):
        learner.config = dataclasses.replace(learner.config, mode="finetune", features_lr_ratio=ratio)
        moved[ratio] = learner.adapt(start, start.batch, 0)  # one SGD step (steps_per_adapt = 1)
    learner.config = dataclasses.replace(learner.config, features_lr_ratio=1.0)
    for name, theta in start.features.items():
        step_full, step_scaled = moved[1.0].features[name] - theta, moved[0.25].features[name] - theta
        assert step_full.abs().max() > 0
        torch.testing.assert_close(step_scaled, 0.25 * step_full, rtol=1e-4, atol=1e-7)
    for name in start.head:  # the head takes finetune_lr whatever the ratio
        torch.testing.assert_close(moved[0.25].head[name], moved[1.0].head[name])
    with pytest.raises(ValueError, match="features_lr_ratio"):
        TransferConfig(features_lr_ratio=0.0)
