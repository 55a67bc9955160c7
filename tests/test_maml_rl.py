"""MAML-RL: the meta-gradient is exact, first order drops exactly the Hessian term, and it learns."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401
from metarl.algorithms.maml_rl import MAMLRL, Batch, MAMLRLConfig
from metarl.evaluation import evaluate_adaptation
from metarl.families import FamilyTaskSampler, env_factory
from metarl.rollouts import RolloutSampler

NAV = "metarl/Navigation2D-v0"


def make_learner(seed: int = 0, **overrides) -> tuple[MAMLRL, FamilyTaskSampler]:
    config = MAMLRLConfig(**{"hidden_sizes": (8,), "meta_batch_size": 3, "rollouts_per_task": 4, **overrides})
    make_env = env_factory(NAV, {}, 12)
    sampler = RolloutSampler(make_env, 12, config.rollouts_per_task, torch.device("cpu"), seed)
    return MAMLRL(config, sampler, seed), FamilyTaskSampler(make_env())


def double_batch(batch: Batch) -> Batch:
    ep = batch.episodes
    return Batch(type(ep)(*(t.double() for t in ep)), batch.advantages.double())


def meta_objective_setup(first_order: bool):
    """A float64 learner and fixed support/query data, so the meta-objective is a function of θ alone."""
    learner, tasks_sampler = make_learner(first_order=first_order)
    tasks = tasks_sampler.held_out(3, seed=5)
    theta = learner.initial(tasks)
    support = learner.support(tasks, theta, 0)
    query = learner.support(tasks, learner._inner_step(theta, support, 0.1, False), 1)
    support, query = double_batch(support), double_batch(query)
    learner.policy.double()
    names = list(learner.policy.params())

    def objective(*flat: torch.Tensor) -> torch.Tensor:
        params = {k: v.expand(3, *v.shape) for k, v in zip(names, flat, strict=True)}
        inner = learner._inner_step(params, support, 0.1, not first_order)
        return learner._task_losses(inner, query).mean()

    return learner, objective, [p.detach().clone() for p in learner.policy.params().values()], support, query


def test_second_order_meta_gradient_matches_finite_differences() -> None:
    _, objective, theta, _, _ = meta_objective_setup(first_order=False)
    params = [p.clone().requires_grad_(True) for p in theta]
    analytic = torch.autograd.grad(objective(*params), params)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for _ in range(6):
        i = int(rng.integers(len(theta)))
        j = int(rng.integers(theta[i].numel()))
        plus = [p.clone() for p in theta]
        minus = [p.clone() for p in theta]
        plus[i].view(-1)[j] += eps
        minus[i].view(-1)[j] -= eps
        numeric = (objective(*plus) - objective(*minus)) / (2 * eps)
        assert torch.isclose(analytic[i].view(-1)[j], numeric, rtol=1e-4, atol=1e-8), (i, j)


def test_first_order_drops_exactly_the_hessian_term() -> None:
    learner, so_objective, theta, support, query = meta_objective_setup(first_order=False)
    _, fo_objective, _, _, _ = meta_objective_setup(first_order=True)
    params = [p.clone().requires_grad_(True) for p in theta]
    g_so = torch.autograd.grad(so_objective(*params), params)
    g_fo = torch.autograd.grad(fo_objective(*params), params)
    names = list(learner.policy.params())

    # dropped term: −α Σ_i ∇²L_in,i(θ) ∇_{θ'_i} L_out / N, a Hessian-vector product per task
    expanded = {k: v.expand(3, *v.shape) for k, v in zip(names, theta, strict=True)}
    adapted = {
        k: v.detach().requires_grad_(True)
        for k, v in learner._inner_step(expanded, support, 0.1, False).items()
    }
    out_grad = torch.autograd.grad(learner._task_losses(adapted, query).mean(), list(adapted.values()))
    dropped = [torch.zeros_like(p) for p in theta]
    ep = support.episodes
    for task in range(3):

        def inner(*flat: torch.Tensor, task: int = task) -> torch.Tensor:
            p = dict(zip(names, flat, strict=True))
            return learner._surrogate(
                p, ep.obs[:, task], ep.actions[:, task], support.advantages[:, task], ep.mask[:, task]
            )

        _, hvp = torch.autograd.functional.hvp(inner, tuple(theta), tuple(g[task] for g in out_grad))
        for k in range(len(theta)):
            dropped[k] -= 0.1 * hvp[k]
    for so, fo, term in zip(g_so, g_fo, dropped, strict=True):
        assert torch.allclose(so - fo, term, atol=1e-10)
    assert any(t.abs().max() > 1e-6 for t in dropped)  # the term is not trivially zero


def test_batched_navigation_equals_gymnasium_step_for_step() -> None:
    env = gym.make(NAV).unwrapped
    tasks = env.sample_tasks(3, split="test", seed=1)
    batched = env.make_batched(tasks, 2, horizon=100)
    obs_b = batched.reset()
    gyms = [gym.make(NAV) for _ in range(6)]
    obs_g = [e.reset(options={"task": tasks[i // 2]})[0] for i, e in enumerate(gyms)]
    assert np.array_equal(obs_b.reshape(6, 2).numpy(), np.stack(obs_g))
    rng = np.random.default_rng(0)
    done = np.zeros(6, dtype=bool)
    for _ in range(100):
        actions = rng.normal(0, 0.08, size=(3, 2, 2)).astype(np.float32)
        obs_b, rew_b, term_b, _ = batched.step(torch.from_numpy(actions))
        for i, e in enumerate(gyms):
            if done[i]:
                continue
            o, r, term, _, _ = e.step(actions.reshape(6, 2)[i])
            assert np.array_equal(o, obs_b.reshape(6, 2)[i].numpy())
            assert r == float(rew_b.reshape(6)[i])
            assert term == bool(term_b.reshape(6)[i])
            done[i] = term


def test_same_seed_same_meta_update() -> None:
    a, tasks = make_learner(seed=4)
    b, _ = make_learner(seed=4)
    batch = tasks.held_out(3, seed=2)
    ma, mb = a.meta_update(batch), b.meta_update(batch)
    keys = [k for k in ma if not k.startswith("time/")]
    assert [ma[k] for k in keys] == [mb[k] for k in keys]


def test_adaptation_beats_no_adaptation_on_held_out_tasks() -> None:
    """A short meta-training run: one inner step must improve the held-out return beyond both 95% CIs."""
    torch.manual_seed(0)
    config = MAMLRLConfig(
        meta_batch_size=10, rollouts_per_task=10, hidden_sizes=(64, 64), outer="vpg", outer_lr=1e-2
    )
    make_env = env_factory(NAV, {}, None)
    sampler = RolloutSampler(make_env, 100, config.rollouts_per_task, torch.device("cpu"), 0)
    learner, family = MAMLRL(config, sampler, 0), FamilyTaskSampler(make_env())
    rng = np.random.default_rng(0)
    for _ in range(60):
        learner.meta_update(family.sample(config.meta_batch_size, split="train", rng=rng))
    curve = evaluate_adaptation(learner, family.held_out(40, seed=0), steps=1)
    (pre, post), (ci_pre, ci_post) = curve.mean, curve.ci95
    assert post - pre > ci_pre + ci_post, curve


@pytest.mark.parametrize(
    "bad",
    [
        {"meta_batch_size": 0},
        {"gae_lambda": 2.0},
        {"test_inner_lrs": ()},
        {"fvp": "exact"},
        {"fvp_task_chunk": -1},
    ],
)
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        MAMLRLConfig(**bad)
