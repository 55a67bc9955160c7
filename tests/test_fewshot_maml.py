"""Supervised MAML: the vmapped meta-gradient equals the per-task loop's; sinusoid adaptation helps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fewshot_fixtures import make_image_folder

from metarl.algorithms.maml_supervised import MAMLSupervised, MAMLSupervisedConfig
from metarl.core import adaptation_curve
from metarl.data import EpisodeSampler, EpisodeShape, SinusoidSampler, load_image_folder

CPU = torch.device("cpu")


def meta_grads(learner: MAMLSupervised, batch, vectorized: bool) -> list[torch.Tensor]:
    meta = list(learner.params.values()) + list(learner.inner_lrs.values())
    loss = learner.meta_loss(batch, vectorized)
    return torch.autograd.grad(loss, meta, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("learn_inner_lr", [False, True])
def test_vmapped_equals_looped_sinusoid(first_order: bool, learn_inner_lr: bool) -> None:
    config = MAMLSupervisedConfig(
        meta_batch_size=5,
        num_inner_steps=2,
        inner_lr=0.01,
        network="mlp",
        first_order=first_order,
        learn_inner_lr=learn_inner_lr,
    )
    tasks = SinusoidSampler()
    learner = MAMLSupervised(config, tasks, CPU, ways=0, seed=0)
    batch = tasks.batch(tasks.sample(5, split="train", rng=np.random.default_rng(0)), CPU, "train")
    for a, b in zip(meta_grads(learner, batch, True), meta_grads(learner, batch, False), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    if learn_inner_lr and not first_order:
        assert any(g.abs().sum() > 0 for g in meta_grads(learner, batch, True)[-6:])  # Meta-SGD's α learns


def test_vmapped_equals_looped_conv4_and_second_order_differs(tmp_path: Path) -> None:
    dataset, train, test = load_image_folder(make_image_folder(tmp_path, 6, 3, 4))
    tasks = EpisodeSampler(dataset, train, test, EpisodeShape(3, 1, 2), EpisodeShape(3, 1, 2))
    batch = tasks.batch(tasks.sample(4, split="train", rng=np.random.default_rng(0)), CPU)
    grads = {}
    for first_order in (False, True):
        config = MAMLSupervisedConfig(hidden_channels=8, inner_lr=0.4, first_order=first_order)
        learner = MAMLSupervised(config, tasks, CPU, ways=3, seed=0)
        vmapped, looped = meta_grads(learner, batch, True), meta_grads(learner, batch, False)
        for a, b in zip(vmapped, looped, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
        grads[first_order] = vmapped[0]
    assert not torch.allclose(grads[False], grads[True])  # the second-order term is there


def test_test_time_adaptation_loop_equals_vmap(tmp_path: Path) -> None:
    """``vectorize = false`` adapts and scores held-out tasks one by one; the curve is the vmapped one."""
    dataset, train, test = load_image_folder(make_image_folder(tmp_path, 6, 3, 4))
    tasks = EpisodeSampler(dataset, train, test, EpisodeShape(3, 1, 2), EpisodeShape(3, 1, 2))
    held = tasks.held_out(5, seed=0)
    curves = [
        adaptation_curve(
            MAMLSupervised(
                MAMLSupervisedConfig(hidden_channels=8, vectorize=v, eval_chunk=3), tasks, CPU, ways=3, seed=0
            ),
            held,
            3,
        )
        for v in (True, False)
    ]
    torch.testing.assert_close(curves[0], curves[1])
    assert (curves[0][0] != curves[0][3]).any()  # the steps change the predictions
    sine = SinusoidSampler(test_shots=5)
    for rule in ("fixed", "armijo"):  # the line search of later steps too
        sine_curves = [
            adaptation_curve(
                MAMLSupervised(
                    MAMLSupervisedConfig(inner_lr=0.1, network="mlp", vectorize=v, extra_step_rule=rule),
                    sine,
                    CPU,
                    ways=0,
                    seed=0,
                ),
                sine.held_out(10, seed=0),
                3,
            )
            for v in (True, False)
        ]
        torch.testing.assert_close(sine_curves[0], sine_curves[1])


def test_sinusoid_adaptation_beats_no_adaptation() -> None:
    torch.manual_seed(0)
    config = MAMLSupervisedConfig(meta_batch_size=25, inner_lr=0.01, network="mlp")
    tasks = SinusoidSampler(train_shots=10, test_shots=10, queries=10)
    learner = MAMLSupervised(config, tasks, CPU, ways=0, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(300):
        metrics = learner.meta_update(tasks.sample(25, split="train", rng=rng))
    assert set(metrics) >= {"env_steps", "meta_train/mse_pre_adapt", "meta_train/mse_post_adapt"}
    curve = adaptation_curve(learner, tasks.held_out(100, seed=0), 5).mean(dim=1)
    assert curve[5] < 0.8 * curve[0], curve  # five inner steps from the meta-learned init reduce the MSE


def test_meta_update_loop_and_vmap_take_the_same_step() -> None:
    tasks = SinusoidSampler()
    batch_tasks = tasks.sample(5, split="train", rng=np.random.default_rng(1))
    params = []
    for vectorize in (True, False):
        config = MAMLSupervisedConfig(meta_batch_size=5, inner_lr=0.01, network="mlp", vectorize=vectorize)
        learner = MAMLSupervised(config, tasks, CPU, ways=0, seed=0)
        metrics = learner.meta_update(batch_tasks)
        params.append((metrics, learner.state_dict()["params"]))
    (m_v, p_v), (m_l, p_l) = params
    for k in p_v:
        torch.testing.assert_close(p_v[k], p_l[k], rtol=1e-5, atol=1e-7)
    assert m_v["losses/outer_loss"] == pytest.approx(m_l["losses/outer_loss"], rel=1e-5)


def support_losses(learner: MAMLSupervised, tasks: list, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Support loss ``[steps + 1, T]`` along the test-time adaptation, and the query MSE after each step."""
    adapted = learner.initial(tasks)
    losses, query = [], []
    for step in range(steps + 1):
        fast, batch = adapted.fast, adapted.batch
        losses.append(torch.vmap(learner.loss)(fast, batch.support_x, batch.support_y))
        query.append(learner.evaluate(tasks, adapted))
        if step < steps:
            adapted = learner.adapt(adapted, learner.support(tasks, adapted, step), step)
    return torch.stack(losses), torch.stack(query)


def test_test_steps_beyond_training_do_not_diverge() -> None:
    """The 70k-iteration sinusoid run's failure in small: where θ is sharper than ``2/α``, ten plain steps
    of α diverge to nan on some tasks; the line search of later steps keeps every task finite and its
    support loss non-increasing, and leaves the trained first step untouched."""
    tasks = SinusoidSampler(test_shots=5)
    held = tasks.held_out(50, seed=0)
    runs = {}
    for rule in ("fixed", "armijo"):
        config = MAMLSupervisedConfig(inner_lr=0.1, network="mlp", extra_step_rule=rule)
        runs[rule] = support_losses(MAMLSupervised(config, tasks, CPU, ways=0, seed=0), held, 10)
    (_, fixed_query), (losses, query) = runs["fixed"], runs["armijo"]
    assert not torch.isfinite(fixed_query[-1]).all()  # the hazard is real with plain steps
    assert torch.isfinite(query).all() and torch.isfinite(losses).all()
    torch.testing.assert_close(query[:2], fixed_query[:2])  # step 1 = the meta-trained update, verbatim
    assert (losses[2:] <= losses[1:-1] + 1e-6).all()  # monotone support loss after the trained step


def test_line_search_takes_the_plain_step_where_it_descends() -> None:
    tasks = SinusoidSampler(test_shots=5)
    held = tasks.held_out(20, seed=0)
    curves = []
    for rule in ("fixed", "armijo"):
        config = MAMLSupervisedConfig(inner_lr=1e-3, network="mlp", extra_step_rule=rule)
        curves.append(adaptation_curve(MAMLSupervised(config, tasks, CPU, ways=0, seed=0), held, 4))
    torch.testing.assert_close(curves[0], curves[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="extra_step_rule"):
        MAMLSupervisedConfig(extra_step_rule="clip")  # type: ignore[arg-type]


def test_evaluation_passes_are_capped_in_images_without_changing_the_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``EVAL_IMAGES_PER_PASS`` caps a conv4 evaluation pass (large passes page-fault on every op); the
    curve is the one of a single pass over all tasks."""
    from metarl.algorithms import maml_supervised

    dataset, train, test = load_image_folder(make_image_folder(tmp_path, 6, 3, 4))
    tasks = EpisodeSampler(dataset, train, test, EpisodeShape(3, 1, 2), EpisodeShape(3, 1, 2))
    held = tasks.held_out(5, seed=0)
    learner = MAMLSupervised(
        MAMLSupervisedConfig(hidden_channels=8, eval_chunk=100), tasks, CPU, ways=3, seed=0
    )
    assert learner._eval_chunk(6) == maml_supervised.EVAL_IMAGES_PER_PASS // 6
    whole = adaptation_curve(learner, held, 2)
    monkeypatch.setattr(maml_supervised, "EVAL_IMAGES_PER_PASS", 4)  # one task per pass (6 query images)
    assert learner._eval_chunk(6) == 1 and learner._eval_chunk(3) == 1
    torch.testing.assert_close(adaptation_curve(learner, held, 2), whole)
