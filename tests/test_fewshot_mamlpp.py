"""MAML++ options of supervised MAML (Antoniou et al. 2019, arXiv:1810.09502): each behaves as described,
and with every option at its default a meta-step is the plain-MAML one computed before they existed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fewshot_fixtures import make_image_folder

from metarl.algorithms.maml_supervised import MAMLSupervised, MAMLSupervisedConfig, msl_weights
from metarl.core import adaptation_curve
from metarl.data import EpisodeSampler, EpisodeShape, FewShotBatch, SinusoidSampler, load_image_folder

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> EpisodeSampler:
    dataset, train, test = load_image_folder(make_image_folder(tmp_path_factory.mktemp("mamlpp"), 6, 3, 4))
    return EpisodeSampler(dataset, train, test, EpisodeShape(3, 1, 2), EpisodeShape(3, 1, 2))


@pytest.fixture(scope="module")
def batch(tasks: EpisodeSampler) -> FewShotBatch:
    return tasks.batch(tasks.sample(4, split="train", rng=np.random.default_rng(0)), CPU)


def learner(tasks: EpisodeSampler, **options: object) -> MAMLSupervised:
    config = MAMLSupervisedConfig(
        meta_batch_size=4, hidden_channels=8, num_inner_steps=2, inner_lr=0.4, **options
    )
    return MAMLSupervised(config, tasks, CPU, ways=3, seed=0)


def grads(model: MAMLSupervised, batch: FewShotBatch, vectorized: bool = True) -> list[torch.Tensor]:
    meta = list(model.params.values()) + list(model.step_lrs.values())
    loss = model.meta_loss(batch, vectorized)
    return list(torch.autograd.grad(loss, meta, allow_unused=True, materialize_grads=True))


@pytest.mark.parametrize("first_order", [False, True])
def test_plain_maml_meta_steps_are_maml(tasks: EpisodeSampler, first_order: bool) -> None:
    """With every MAML++ option off, three conv4 meta-steps are MAML's (Finn et al. 2017, Algorithm 2; FOMAML
    with ``first_order``): at each step the outer loss and the meta-gradient equal those of a plain per-task
    loop of ``torch.autograd.grad`` on the learner's loss, written here, and the first outer loss is the one
    recorded with commit dcb083f, before the options existed (to float rounding: conv kernels differ between
    CPUs)."""
    model = MAMLSupervised(
        MAMLSupervisedConfig(
            meta_batch_size=4, hidden_channels=8, num_inner_steps=2, first_order=first_order
        ),
        tasks,
        CPU,
        ways=3,
        seed=0,
    )
    alpha, rng = model.config.inner_lr, np.random.default_rng(0)
    for step in range(3):
        episodes = tasks.sample(4, split="train", rng=rng)
        batch = tasks.batch(episodes, CPU)
        theta = {k: v.detach().clone().requires_grad_() for k, v in model.params.items()}
        outer = []
        for t in range(batch.num_tasks):
            fast = dict(theta)
            for _ in range(model.config.num_inner_steps):
                g = torch.autograd.grad(
                    model.loss(fast, batch.support_x[t], batch.support_y[t]),
                    list(fast.values()),
                    create_graph=not first_order,
                )
                fast = {k: p - alpha * gk for (k, p), gk in zip(fast.items(), g, strict=True)}
            outer.append(model.loss(fast, batch.query_x[t], batch.query_y[t]))
        reference = torch.stack(outer).mean()
        reference_grads = torch.autograd.grad(reference, list(theta.values()))

        got = model.meta_update(episodes)["losses/outer_loss"]
        assert got == pytest.approx(reference.item(), rel=1e-5)
        # one tolerance for the whole gradient: a conv bias before BatchNorm has a zero gradient (to rounding)
        flat = torch.cat([p.grad.flatten() for p in model.params.values()])
        expected = torch.cat([g.flatten() for g in reference_grads])
        torch.testing.assert_close(flat, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
        if step == 0:
            assert got == pytest.approx(1.2546789646148682, rel=1e-5)


def test_plain_meta_sgd_sinusoid_is_unchanged() -> None:
    config = MAMLSupervisedConfig(
        meta_batch_size=5, num_inner_steps=2, inner_lr=0.01, network="mlp", learn_inner_lr=True
    )
    sine = SinusoidSampler()
    model = MAMLSupervised(config, sine, CPU, ways=0, seed=0)
    rng = np.random.default_rng(0)
    losses = [model.meta_update(sine.sample(5, split="train", rng=rng))["losses/outer_loss"] for _ in "abc"]
    assert losses == pytest.approx([3.050100803375244, 4.652945041656494, 7.722431182861328], rel=1e-6)


def test_msl_weights_anneal_onto_the_last_step() -> None:
    torch.testing.assert_close(msl_weights(5, 0, 100), torch.full((5,), 0.2))
    half = msl_weights(5, 50, 100)  # non-final 0.2 − 50/500 = 0.1, final 0.2 + 4·0.1 = 0.6
    torch.testing.assert_close(half, torch.tensor([0.1, 0.1, 0.1, 0.1, 0.6]))
    end = msl_weights(5, 100, 100)
    torch.testing.assert_close(end, torch.tensor([0.006, 0.006, 0.006, 0.006, 0.976]))
    for t in (0, 10, 50, 99, 100, 500):
        assert float(msl_weights(5, t, 100).sum()) == pytest.approx(1.0)


def test_multi_step_loss_weighs_every_steps_query_loss(tasks: EpisodeSampler, batch: FewShotBatch) -> None:
    model = learner(tasks, multi_step_loss=True, msl_iterations=10)
    by_hand = []
    for i in range(batch.num_tasks):
        lrs = [model.step_sizes(j) for j in range(2)]
        theta = {k: model.params[k] for k in model.adapted_keys}
        trajectory = model.adapt_task(theta, lrs, batch.support_x[i], batch.support_y[i], False)
        query = (batch.query_x[i], batch.query_y[i])
        by_hand.append([model.loss(f, *query, j) for j, f in enumerate(trajectory)])
    losses = torch.tensor([[float(x.detach()) for x in task] for task in by_hand])  # [T, steps]
    with torch.no_grad():
        weighted = float(losses.mean(0) @ msl_weights(2, 0, 10))
        assert float(model.meta_loss(batch)) == pytest.approx(weighted, rel=1e-5)
        model.iteration = 10  # annealing over: the last step's query loss only, as plain MAML
        assert float(model.meta_loss(batch)) == pytest.approx(float(losses[:, -1].mean()), rel=1e-5)
        assert float(learner(tasks).meta_loss(batch)) == pytest.approx(float(losses[:, -1].mean()), rel=1e-5)


def test_per_step_batchnorm_weights_are_meta_learned_per_step(tasks: EpisodeSampler) -> None:
    model = learner(tasks, per_step_bn=True)
    bn = sorted(model.bn_keys)
    assert len(bn) == 8 and all(model.params[k].shape == (2, 8) for k in bn)
    assert not set(bn) & set(model.adapted_keys)  # left out of the inner loop
    assert set(model.initial(tasks.held_out(3, seed=0)).fast) == set(model.adapted_keys)
    model.meta_update(tasks.sample(4, split="train", rng=np.random.default_rng(0)))
    for k in bn:  # each step's row got its own gradient
        assert not torch.equal(model.params[k][0], model.params[k][1]), k
    curve = adaptation_curve(model, tasks.held_out(6, seed=0), 4)  # test steps beyond the trained 2
    assert torch.isfinite(curve).all()


def test_lslr_learns_a_step_size_per_tensor_and_step(tasks: EpisodeSampler) -> None:
    model = learner(tasks, lslr=True)
    assert len(model.step_lrs) == len(model.params)
    assert all(v.shape == (2,) for v in model.step_lrs.values())
    conv_biases = {f"features.{i}.bias" for i in (0, 4, 8, 12)}  # BatchNorm cancels them: zero gradient
    inner_before = {k: v.clone() for k, v in model.inner_lrs.items()}
    metrics = model.meta_update(tasks.sample(4, split="train", rng=np.random.default_rng(0)))
    assert "meta_train/inner_lr_mean" in metrics
    for k, v in model.step_lrs.items():
        assert torch.equal(v, torch.full((2,), 0.4)) == (k in conv_biases), k  # learned
        assert torch.equal(model.inner_lrs[k], inner_before[k])  # Meta-SGD's are not
    # test-time adaptation uses step j's sizes: a zero step size at step 1 leaves the weights there
    with torch.no_grad():
        for v in model.step_lrs.values():
            v[1] = 0.0
    held = tasks.held_out(3, seed=0)
    state = model.initial(held)
    one = model.adapt(state, state.batch, 0)
    two = model.adapt(one, one.batch, 1)
    assert all(torch.equal(one.fast[k], two.fast[k]) for k in one.fast)
    assert not all(torch.equal(state.fast[k], one.fast[k]) for k in one.fast)
    with pytest.raises(ValueError, match="lslr and learn_inner_lr"):
        MAMLSupervisedConfig(lslr=True, learn_inner_lr=True)


def test_derivative_order_annealing(tasks: EpisodeSampler, batch: FewShotBatch) -> None:
    first, second = grads(learner(tasks, first_order=True), batch), grads(learner(tasks), batch)
    assert not torch.allclose(first[0], second[0])
    model = learner(tasks, first_order_iterations=3)
    for a, b in zip(grads(model, batch), first, strict=True):
        torch.testing.assert_close(a, b)  # first order while iteration < 3
    model.iteration = 3
    for a, b in zip(grads(model, batch), second, strict=True):
        torch.testing.assert_close(a, b)
    da = learner(tasks, first_order_iterations=1)
    rng = np.random.default_rng(0)
    phases = [da.meta_update(tasks.sample(4, split="train", rng=rng)) for _ in "ab"]
    assert [m["meta_train/second_order"] for m in phases] == [0.0, 1.0]


def test_cosine_annealed_outer_lr(tasks: EpisodeSampler) -> None:
    model = learner(tasks, cosine_lr_iterations=4, outer_lr=1e-3, min_outer_lr=1e-5)
    rng = np.random.default_rng(0)
    lrs = [model.meta_update(tasks.sample(4, split="train", rng=rng))["losses/outer_lr"] for _ in range(6)]
    expected = [1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * min(t, 4) / 4)) for t in range(6)]
    assert lrs == pytest.approx(expected)
    assert lrs[0] == pytest.approx(1e-3) and lrs[2] == pytest.approx(0.505e-3)
    assert lrs[5] == pytest.approx(1e-5)
    assert "losses/outer_lr" not in learner(tasks).meta_update(tasks.sample(4, split="train", rng=rng))


def test_all_options_vmapped_equals_looped_and_checkpoints(
    tasks: EpisodeSampler, batch: FewShotBatch
) -> None:
    options = dict(
        multi_step_loss=True, per_step_bn=True, lslr=True, first_order_iterations=1, cosine_lr_iterations=9
    )
    model = learner(tasks, **options)
    model.iteration = 1  # second order, MSL annealing under way
    for a, b in zip(grads(model, batch, True), grads(model, batch, False), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    model.meta_update(tasks.sample(4, split="train", rng=np.random.default_rng(1)))
    restored = learner(tasks, **options)
    restored.load_state_dict(model.state_dict())
    assert restored.iteration == 2
    assert all(torch.equal(restored.step_lrs[k], v) for k, v in model.step_lrs.items())
    assert all(torch.equal(restored.params[k], v) for k, v in model.params.items())


def test_plain_checkpoints_written_before_mamlpp_load(tasks: EpisodeSampler) -> None:
    """A plain-MAML state dict as written before MAML++ (no ``step_lrs``, no ``iteration``) loads; the
    learner resumes with the same parameters and takes the same next step as one that never stopped."""
    model = learner(tasks)
    rng = np.random.default_rng(0)
    model.meta_update(tasks.sample(4, split="train", rng=rng))
    old = {k: v for k, v in model.state_dict().items() if k not in ("step_lrs", "iteration")}
    assert set(old) == {"params", "inner_lrs", "optimizer"}
    restored = learner(tasks)
    restored.load_state_dict(old)
    episodes = tasks.sample(4, split="train", rng=rng)
    resumed, continued = restored.meta_update(episodes), model.meta_update(episodes)
    assert resumed["losses/outer_loss"] == continued["losses/outer_loss"]
    with pytest.raises(ValueError, match="per_step_bn"):
        MAMLSupervisedConfig(network="mlp", per_step_bn=True)
