"""MAML-RL's outer loops: CG and line search on closed-form quadratics, TRPO/PPO, Meta-SGD, baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metarl import losses, optim
from metarl.algorithms import ALGORITHMS
from metarl.algorithms.maml_rl import LR_PREFIX, MAMLRL, MAMLRLConfig, PretrainedRLConfig
from metarl.evaluation import evaluate_adaptation
from metarl.families import FamilyTaskSampler, env_factory
from metarl.rollouts import RolloutSampler

NAV = "metarl/Navigation2D-v0"


def make_learner(seed: int = 0, horizon: int = 12, **overrides) -> tuple[MAMLRL, FamilyTaskSampler]:
    config = MAMLRLConfig(**{"hidden_sizes": (8,), "meta_batch_size": 3, "rollouts_per_task": 4, **overrides})
    make_env = env_factory(NAV, {}, horizon)
    sampler = RolloutSampler(make_env, horizon, config.rollouts_per_task, torch.device("cpu"), seed)
    return MAMLRL(config, sampler, seed), FamilyTaskSampler(make_env())


# -- conjugate gradient and line search -------------------------------------------------------------------
def test_conjugate_gradient_solves_spd_system() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    a = q @ q.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    x = optim.conjugate_gradient(lambda v: a @ v, b, iters=6, residual_tol=1e-30)
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-9)
    # few iterations on a well-conditioned system are already close; zero rhs gives zero
    well = torch.eye(6, dtype=torch.float64) * 2 + 0.01 * (q + q.T)
    x = optim.conjugate_gradient(lambda v: well @ v, b, 10)
    assert torch.allclose(x, torch.linalg.solve(well, b), atol=1e-8)
    assert not optim.conjugate_gradient(lambda v: a @ v, torch.zeros(6, dtype=torch.float64)).any()


def test_trust_region_step_has_model_kl_max_kl() -> None:
    f = torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64))
    s = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    step = optim.trust_region_step(s, f @ s, max_kl=0.01)
    assert math.isclose(float(0.5 * step @ f @ step), 0.01, rel_tol=1e-12)
    assert torch.allclose(step / step.norm(), s / s.norm())


def test_line_search_returns_the_first_admissible_fraction() -> None:
    # loss(t) = (t − 0.3)² − 0.09 < 0 = loss(0) for t ∈ (0, 0.6); constraint t² ≤ 0.25 holds for t ≤ 0.5:
    # 1, 0.8, 0.64 do not improve, 0.512 violates the constraint, 0.4096 is accepted.
    result = optim.backtracking_line_search(lambda t: ((t - 0.3) ** 2 - 0.09, t * t), 0.0, 0.25, 15, 0.8)
    assert result.fraction == pytest.approx(0.8**4) and result.evaluations == 5
    assert result.loss == pytest.approx((0.8**4 - 0.3) ** 2 - 0.09)
    assert result.constraint == pytest.approx(0.8**8)


def test_line_search_rejects_when_the_constraint_is_always_violated() -> None:
    result = optim.backtracking_line_search(lambda t: (-t, 1.0 + t), 0.0, 0.5, 15, 0.8)
    assert (result.fraction, result.loss, result.constraint, result.evaluations) == (0.0, 0.0, 0.0, 15)
    # improving never happens either: rejected
    assert optim.backtracking_line_search(lambda t: (t, 0.0), 0.0, 0.5).fraction == 0.0


# -- pure losses --------------------------------------------------------------------------------------
def test_ppo_clip_loss_hand_computed() -> None:
    old = torch.zeros(2, 2)
    log_probs = torch.log(torch.tensor([[1.5, 0.5], [1.1, 0.9]]))  # ratios
    adv = torch.tensor([[1.0, -1.0], [2.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # clip 0.2: min(1.5·1, 1.2·1) = 1.2; min(0.5·−1, 0.8·−1) = −0.8; min(1.1·2, 1.1·2) = 2.2; masked
    expected = -(1.2 - 0.8 + 2.2) / 3
    assert losses.ppo_clip_loss(log_probs, old, adv, mask, 0.2).item() == pytest.approx(expected)
    # the likelihood-ratio (TRPO) surrogate is the unclipped version
    trpo = losses.likelihood_ratio_loss(log_probs, old, adv, mask)
    assert trpo.item() == pytest.approx(-(1.5 - 0.5 + 2.2) / 3)


def test_gaussian_kl_matches_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(1)
    mp, mq, lp, lq = (torch.randn(4, 3, 2, generator=gen) * 0.5 for _ in range(4))
    mask = torch.ones(4, 3)
    p = torch.distributions.Normal(mp, lp.exp())
    q = torch.distributions.Normal(mq, lq.exp())
    expected = torch.distributions.kl_divergence(p, q).sum(-1).mean()
    assert losses.gaussian_kl(mp, lp, mq, lq, mask).item() == pytest.approx(expected.item(), rel=1e-5)


# -- the outer loops ------------------------------------------------------------------------------------
def tiny_meta_batch(learner: MAMLRL, family: FamilyTaskSampler):
    tasks = family.held_out(3, seed=1)
    theta = learner.initial(tasks)
    support = learner.support(tasks, theta, 0)
    adapted = learner._inner_step(theta, support, 0.1, False)
    query = learner.support(tasks, adapted, 1)
    return support, query, learner._old_policy(adapted, query)


@pytest.mark.parametrize("fvp", ["gauss_newton", "hessian"])
def test_trpo_step_satisfies_the_trust_region_and_improves_the_surrogate(fvp: str) -> None:
    learner, family = make_learner(fvp=fvp)
    support, query, old = tiny_meta_batch(learner, family)
    before = {k: v.detach().clone() for k, v in learner.meta_parameters().items()}
    metrics = learner._trpo_step([support], query, old)
    assert metrics["losses/step_fraction"] > 0
    with torch.no_grad():  # re-check independently from the new θ, re-adapting through the inner loop
        log_probs, kl = learner._query_terms(learner.meta_parameters(), [support], query, old, False)
        loss_before = learner._ratio_loss(old.log_probs, old, query)
        loss_after = learner._ratio_loss(log_probs, old, query)
    assert 0 < kl.item() <= learner.config.max_kl
    assert loss_after < loss_before
    assert metrics["losses/kl"] == pytest.approx(kl.item(), rel=1e-4)
    assert any(not torch.equal(before[k], v) for k, v in learner.meta_parameters().items())


def _meta_batch(learner: MAMLRL, family: FamilyTaskSampler, tasks: int = 4):
    """Support batches of every inner step, the query and the sampling-time adapted policies."""
    held_out = family.held_out(tasks, seed=1)
    params, supports = learner.initial(held_out), []
    meta = {k: v.detach() for k, v in learner.meta_parameters().items()}
    for step in range(learner.config.num_inner_steps):
        supports.append(learner.support(held_out, params, step))
        params = learner._inner_step(params, supports[-1], learner._lr(meta, step, True), False)
    query = learner.support(held_out, params, learner.config.num_inner_steps)
    return supports, query, learner._old_policy(params, query)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"fvp_task_chunk": 1},
        {"num_inner_steps": 2, "inner_lrs": (0.1, 0.05), "learn_inner_lr": True, "fvp_task_chunk": 3},
        {"first_order": True},
        {"fvp_subsample": 0.5},
        {"kl_constraint": "pre_update", "fvp_subsample": 0.5},
        {"num_inner_steps": 0},
    ],
)
def test_gauss_newton_products_equal_the_kl_hessian_at_theta_old(overrides: dict) -> None:
    """At θ_old the KL's gradient in (μ, log σ) is zero, so ``Jᵀ M J v`` is its Hessian-vector product: the
    chained reverse-mode products match the double backward of ``∇KL`` (and the gradient matches too)."""
    learner, family = make_learner(hidden_sizes=(16, 16), **overrides)
    supports, query, old = _meta_batch(learner, family)
    meta = learner.meta_parameters()
    leaves = list(meta.values())
    cfg = learner.config
    log_probs, _ = learner._query_terms(meta, supports, query, old, not cfg.first_order)
    loss = learner._ratio_loss(log_probs, old, query)
    gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, leaves)])
    kl = learner._constraint_kl(supports, query, old, cfg.fvp_subsample)(meta, not cfg.first_order)
    kl_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(kl, leaves, create_graph=True)])
    loss_gn, gradient_gn, product = learner._gauss_newton_terms(supports, query, old)
    assert loss_gn == pytest.approx(loss.item(), abs=1e-6)
    torch.testing.assert_close(gradient_gn, gradient, rtol=0, atol=1e-5 * gradient.abs().max().item())
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        v = torch.randn(kl_grad.numel(), generator=gen)
        exact = torch.cat(
            [g.reshape(-1) for g in torch.autograd.grad(kl_grad @ v, leaves, retain_graph=True)]
        )
        torch.testing.assert_close(product(v), exact, rtol=0, atol=1e-5 * exact.abs().max().item())
        assert v @ exact > 0


def test_pre_update_trust_region_bounds_the_meta_policy_kl() -> None:
    # cbfinn/maml_rl's kl_constrain_step = 0: the KL of θ's own policy on the support episodes
    learner, family = make_learner(kl_constraint="pre_update", fvp_subsample=0.5)
    support, query, old = tiny_meta_batch(learner, family)
    kl_of = learner._constraint_kl([support], query, old, 1.0)  # built at θ_old
    metrics = learner._trpo_step([support], query, old)
    assert metrics["losses/step_fraction"] > 0
    with torch.no_grad():
        kl = kl_of(learner.meta_parameters(), False).item()
        log_probs, adapted_kl = learner._query_terms(learner.meta_parameters(), [support], query, old, False)
        improved = learner._ratio_loss(log_probs, old, query) < learner._ratio_loss(old.log_probs, old, query)
    assert 0 < kl <= learner.config.max_kl
    assert metrics["losses/kl"] == pytest.approx(kl, rel=1e-4)
    assert adapted_kl.item() != pytest.approx(kl, rel=1e-3)  # a different constraint from "adapted"
    assert improved


def test_subsampled_fisher_products_keep_the_full_data_trust_region() -> None:
    learner, family = make_learner(fvp_subsample=0.25)
    support, query, old = tiny_meta_batch(learner, family)
    metrics = learner._trpo_step([support], query, old)
    with torch.no_grad():  # the line search checked the KL on every episode, not only on the subsample
        _, kl = learner._query_terms(learner.meta_parameters(), [support], query, old, False)
    assert metrics["losses/step_fraction"] > 0
    assert 0 < kl.item() <= learner.config.max_kl
    assert metrics["losses/kl"] == pytest.approx(kl.item(), rel=1e-4)
    # the Fisher of one episode in four: another curvature estimate, still positive definite
    meta = learner.meta_parameters()
    v = torch.randn(sum(p.numel() for p in meta.values()), generator=torch.Generator().manual_seed(0))

    def fvp(fraction: float) -> torch.Tensor:
        kl = learner._constraint_kl([support], query, old, fraction)(meta, True)
        g = torch.cat(
            [x.reshape(-1) for x in torch.autograd.grad(kl, list(meta.values()), create_graph=True)]
        )
        return torch.cat([x.reshape(-1) for x in torch.autograd.grad(g @ v, list(meta.values()))])

    full, quarter = fvp(1.0), fvp(0.25)
    assert v @ full > 0 and v @ quarter > 0
    assert not torch.allclose(full, quarter, rtol=1e-3)
    with pytest.raises(ValueError, match="fvp_subsample"):
        MAMLRLConfig(fvp_subsample=0.0)
    with pytest.raises(ValueError, match="learn_inner_lr"):
        MAMLRLConfig(kl_constraint="pre_update", learn_inner_lr=True)


def test_trpo_rejects_a_step_that_breaks_the_trust_region(monkeypatch: pytest.MonkeyPatch) -> None:
    learner, family = make_learner(line_search_steps=3)
    support, query, old = tiny_meta_batch(learner, family)
    scale = optim.trust_region_step  # a step 100× past the boundary: 1, 0.8, 0.64 of it all break the KL
    monkeypatch.setattr(optim, "trust_region_step", lambda d, fd, kl: 100 * scale(d, fd, kl))
    before = {k: v.detach().clone() for k, v in learner.meta_parameters().items()}
    metrics = learner._trpo_step([support], query, old)
    assert metrics["losses/step_fraction"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in learner.meta_parameters().items())


@pytest.mark.parametrize("outer", ["trpo", "ppo", "vpg"])
def test_every_outer_loop_updates_and_logs(outer: str) -> None:
    learner, family = make_learner(outer=outer, num_inner_steps=2, inner_lrs=(0.1, 0.05))
    metrics = learner.meta_update(family.held_out(3, seed=2))
    for key in ("losses/outer_loss", "losses/kl", "losses/surrogate_improvement", "time/outer_s"):
        assert math.isfinite(metrics[key]), key
    split = metrics["time/sampling_s"] + metrics["time/inner_s"] + metrics["time/outer_s"]
    assert split <= metrics["time/iteration_s"]
    if outer == "ppo":
        assert 0 <= metrics["losses/clip_fraction"] <= 1


def test_outer_threads_apply_to_the_outer_update_only(monkeypatch: pytest.MonkeyPatch) -> None:
    learner, family = make_learner(outer_threads=2)
    seen: list[int] = []
    trpo_step = learner._trpo_step

    def spy(*args: object) -> dict[str, float]:
        seen.append(torch.get_num_threads())
        return trpo_step(*args)

    monkeypatch.setattr(learner, "_trpo_step", spy)
    before = torch.get_num_threads()
    learner.meta_update(family.held_out(3, seed=2))
    assert seen == [2] and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="outer_threads"):
        MAMLRLConfig(outer_threads=-1)


def test_inner_lrs_give_one_step_size_per_step() -> None:
    assert MAMLRLConfig(num_inner_steps=2, inner_lrs=(0.1, 0.05)).step_lrs == (0.1, 0.05)
    assert MAMLRLConfig(num_inner_steps=3, inner_lr=0.2).step_lrs == (0.2, 0.2, 0.2)
    with pytest.raises(ValueError, match="one step size per inner step"):
        MAMLRLConfig(num_inner_steps=2, inner_lrs=(0.1,))
    with pytest.raises(ValueError, match="outer"):
        MAMLRLConfig(outer="adam")


# -- Meta-SGD ---------------------------------------------------------------------------------------------
def test_meta_sgd_learning_rates_get_gradients_and_are_saved() -> None:
    learner, family = make_learner(learn_inner_lr=True, outer="vpg", outer_lr=1e-2)
    lrs = {k: v for k, v in learner.meta_parameters().items() if k.startswith(LR_PREFIX)}
    assert set(lrs) == {LR_PREFIX + k for k in learner.policy.params()}
    assert all(torch.all(v == 0.1) for v in lrs.values())
    # the meta-gradient reaches the step sizes (through θ' = θ − α ⊙ ∇L)
    support, query, old = tiny_meta_batch(learner, family)
    log_probs, _ = learner._query_terms(learner.meta_parameters(), [support], query, old, True)
    loss = learner._ratio_loss(log_probs, old, query)
    grads = torch.autograd.grad(loss, list(lrs.values()))
    assert all(g.abs().sum() > 0 for g in grads)
    metrics = learner.meta_update(family.held_out(3, seed=2))
    assert metrics["meta_train/inner_lr_mean"] != 0.1
    assert any(not torch.all(v == 0.1) for v in lrs.values())
    # saved and restored (also through torch.save, as checkpoints are)
    state = learner.state_dict()
    restored, _ = make_learner(seed=7, learn_inner_lr=True, outer="vpg", outer_lr=1e-2)
    restored.load_state_dict(state)
    for name, value in restored.inner_lrs.items():
        assert torch.equal(value, learner.inner_lrs[name])
    # used at test time: adapt() takes the learned per-parameter rates
    tasks = family.held_out(3, seed=3)
    theta = learner.initial(tasks)
    batch = learner.support(tasks, theta, 0)
    expected = learner._inner_step(theta, batch, {k: v[0] for k, v in learner.inner_lrs.items()}, False)
    adapted = learner.adapt(theta, batch, 0)
    assert all(torch.allclose(adapted[k], expected[k]) for k in adapted)


def test_meta_sgd_trpo_updates_the_learning_rates() -> None:
    learner, family = make_learner(learn_inner_lr=True)
    before = {k: v.detach().clone() for k, v in learner.inner_lrs.items()}
    metrics = learner.meta_update(family.held_out(3, seed=2))
    assert metrics["losses/step_fraction"] > 0
    assert any(not torch.equal(before[k], v) for k, v in learner.inner_lrs.items())


# -- baselines ------------------------------------------------------------------------------------------
def test_pretrained_baseline_is_maml_without_inner_steps() -> None:
    assert ALGORITHMS["pretrained_rl"].config_type is PretrainedRLConfig
    assert PretrainedRLConfig().num_inner_steps == 0 and PretrainedRLConfig().test_inner_lrs == (0.1, 0.05)
    learner, family = make_learner(num_inner_steps=0)
    metrics = learner.meta_update(family.held_out(3, seed=2))
    assert metrics["meta_train/return_pre_adapt"] == metrics["meta_train/return_post_adapt"]
    assert "losses/inner_loss" not in metrics and metrics["time/inner_s"] == 0.0
    assert metrics["env_steps"] == 3 * 4 * 12  # only the query rollouts
    curve = evaluate_adaptation(learner, family.held_out(3, seed=0), steps=2)  # fine-tuned at test time
    assert len(curve.mean) == 3


# -- learning ---------------------------------------------------------------------------------------------
def test_trpo_outer_loop_learns_to_adapt_on_navigation() -> None:
    """A short MAML-TRPO run: on 40 held-out tasks one inner step beats no inner step, and the adapted
    return beats that of the untrained policy, both beyond the 95% confidence intervals."""
    config = MAMLRLConfig(meta_batch_size=10, rollouts_per_task=10, hidden_sizes=(32, 32), max_kl=0.05)
    make_env = env_factory(NAV, {}, None)
    sampler = RolloutSampler(make_env, 100, config.rollouts_per_task, torch.device("cpu"), 0)
    learner, family = MAMLRL(config, sampler, 0), FamilyTaskSampler(make_env())
    held_out = family.held_out(40, seed=0)
    untrained = evaluate_adaptation(learner, held_out, steps=1)
    rng = np.random.default_rng(0)
    for _ in range(12):
        learner.meta_update(family.sample(config.meta_batch_size, split="train", rng=rng))
    curve = evaluate_adaptation(learner, held_out, steps=1)
    (pre, post), (ci_pre, ci_post) = curve.mean, curve.ci95
    assert post - pre > ci_pre + ci_post, curve
    assert post - untrained.mean[1] > ci_post + untrained.ci95[1], (curve, untrained)
