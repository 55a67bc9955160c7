"""SB3 PPO baselines: curves' shape and seeding, budget checks, the three fine-tuning modes, learning."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the metarl/ ids)
from envs.bandit import BanditTask
from metarl.baselines.sb3_ppo import (
    EVAL_PARALLEL,
    DistillationAdam,
    PPOBaselineConfig,
    Pretrained,
    TaskDistributionWrapper,
    evaluate,
    kl_from_pretrained,
    make_ppo,
    ppo_curves,
    pretrain,
    task_seeds,
)
from metarl.families import env_factory

TINY = PPOBaselineConfig(n_steps=100, batch_size=50, hidden_sizes=(16, 16), replay_states=100)


@pytest.fixture(scope="module")
def nav() -> Callable[[], gym.Env]:
    return env_factory("metarl/Navigation2D-v0", {}, None)


@pytest.fixture(scope="module")
def bandit() -> Callable[[], gym.Env]:
    return env_factory("metarl/Bandit-K5-v0", {"num_pulls": 10}, 10)


@pytest.fixture(scope="module")
def nav_pretrained(nav: Callable[[], gym.Env]) -> Pretrained:
    train_tasks = nav().unwrapped.sample_tasks(5, split="train", seed=0)
    return pretrain(nav, train_tasks, 200, TINY, seed=1)


def nav_tasks(make: Callable[[], gym.Env], n: int) -> list:
    return make().unwrapped.sample_tasks(n, split="test", seed=0)


def env_on(make: Callable[[], gym.Env], task: object) -> gym.Env:
    env = make()
    env.unwrapped.set_task(task)
    return env


# ------------------------------------------------------------------------------------------ curves


def test_curves_shape_and_budget_zero_is_the_initial_policy(
    nav: Callable[[], gym.Env], nav_pretrained: Pretrained
) -> None:
    tasks = nav_tasks(nav, 2)
    episodes = 3
    for init in (None, nav_pretrained):
        curves = ppo_curves(nav, tasks, [0, 100], TINY, eval_episodes=episodes, seed=5, init=init)
        assert curves.shape == (2, 2) and curves.dtype == np.float64
        assert np.all(np.isfinite(curves)) and np.all(curves < 0)  # Navigation's rewards are -distances
        for index, task in enumerate(tasks):
            agent_seed, eval_seed = task_seeds(5, index)
            policy = make_ppo(env_on(nav, task), TINY, seed=agent_seed, init=init).policy
            eval_envs = [nav() for _ in range(min(episodes, EVAL_PARALLEL))]
            expected = evaluate(policy, eval_envs, task, episodes=episodes, seed=eval_seed)
            assert curves[0, index] == expected


def test_curves_are_reproducible_and_evaluation_does_not_perturb_training(nav: Callable[[], gym.Env]) -> None:
    tasks = nav_tasks(nav, 2)
    first = ppo_curves(nav, tasks, [0, 100, 200], TINY, eval_episodes=2, seed=3)
    again = ppo_curves(nav, tasks, [0, 100, 200], TINY, eval_episodes=2, seed=3)
    np.testing.assert_array_equal(first, again)
    other = ppo_curves(nav, tasks, [0, 100, 200], TINY, eval_episodes=2, seed=4)
    assert not np.array_equal(first, other)
    # Training in one go to 200 steps gives the same agent as stopping to evaluate at 0 and 100.
    only_last = ppo_curves(nav, tasks, [200], TINY, eval_episodes=2, seed=3)
    np.testing.assert_array_equal(only_last[0], first[-1])


def test_global_rngs_are_left_alone(nav: Callable[[], gym.Env]) -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    expected_torch, expected_numpy = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    ppo_curves(nav, nav_tasks(nav, 1), [0, 100], TINY, eval_episodes=1, seed=0)
    assert torch.equal(torch.rand(3), expected_torch)
    np.testing.assert_array_equal(np.random.rand(3), expected_numpy)


# ------------------------------------------------------------------------------------------ checks


def test_budget_not_a_multiple_of_n_steps_is_an_error(nav: Callable[[], gym.Env]) -> None:
    tasks = nav_tasks(nav, 1)
    with pytest.raises(ValueError, match=r"budget 150 .*n_steps=100"):
        ppo_curves(nav, tasks, [0, 150], TINY, eval_episodes=1, seed=0)
    with pytest.raises(ValueError, match="sorted"):
        ppo_curves(nav, tasks, [200, 100], TINY, eval_episodes=1, seed=0)
    with pytest.raises(ValueError, match="budget"):
        ppo_curves(nav, tasks, [-100], TINY, eval_episodes=1, seed=0)
    with pytest.raises(ValueError, match="eval_episodes"):
        ppo_curves(nav, tasks, [0], TINY, eval_episodes=0, seed=0)
    with pytest.raises(ValueError, match=r"steps 150 .*n_steps=100"):
        pretrain(nav, tasks, 150, TINY, seed=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_steps", 0),
        ("n_steps", 100.0),
        ("batch_size", 1),
        ("batch_size", 30),  # does not divide n_steps = 100
        ("n_epochs", 0),
        ("learning_rate", 0.0),
        ("gamma", 1.5),
        ("gae_lambda", -0.1),
        ("clip_range", 0.0),
        ("ent_coef", -0.01),
        ("hidden_sizes", (16, 0)),
        ("finetune", "lora"),
        ("reg_lambda", 1.0),
        ("replay_states", 0),
    ],
)
def test_bad_config_field_is_an_error_naming_it(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(TINY, **{field: value})


def test_config_defaults_are_valid_and_hidden_sizes_become_a_tuple() -> None:
    assert PPOBaselineConfig().n_steps == 500
    assert PPOBaselineConfig(hidden_sizes=[8, 8]).hidden_sizes == (8, 8)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ pretraining


def test_pretraining_draws_training_tasks_and_subsamples_visited_states(
    nav: Callable[[], gym.Env], nav_pretrained: Pretrained
) -> None:
    train_tasks = nav().unwrapped.sample_tasks(5, split="train", seed=0)
    wrapper = TaskDistributionWrapper(nav(), train_tasks, np.random.default_rng(0))
    drawn = []
    for _ in range(20):
        wrapper.reset()
        drawn.append(wrapper.unwrapped.get_task())
    assert set(drawn) <= set(train_tasks) and len(set(drawn)) > 1

    everything = pretrain(nav, train_tasks, 200, dataclasses.replace(TINY, replay_states=1000), seed=1)
    assert everything.replay_obs.shape == (200, 2)  # fewer steps than replay_states: all of them
    assert np.sum(np.all(everything.replay_obs == 0, axis=1)) >= 2  # every episode starts at the origin
    # Same seed, same agent; the 100 replay states are distinct visited states.
    assert nav_pretrained.state_dict.keys() == everything.state_dict.keys()
    for name, tensor in nav_pretrained.state_dict.items():
        assert torch.equal(tensor, everything.state_dict[name]), name
    kept = nav_pretrained.replay_obs
    assert kept.shape == (100, 2)
    matches = np.all(kept[:, None, :] == everything.replay_obs[None, :, :], axis=-1)
    assert matches.any(axis=1).all()


# ------------------------------------------------------------------------------------------ fine-tuning


def finetuned(
    make: Callable[[], gym.Env], init: Pretrained, steps: int, **changes: object
) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    config = dataclasses.replace(TINY, learning_rate=1e-3, **changes)
    model = make_ppo(env_on(make, nav_tasks(make, 1)[0]), config, seed=7, init=init)
    model.learn(total_timesteps=steps)
    return model.policy, model.policy.state_dict()


def test_head_finetuning_freezes_the_features(nav: Callable[[], gym.Env], nav_pretrained: Pretrained) -> None:
    policy, after = finetuned(nav, nav_pretrained, 200, finetune="head")
    before = nav_pretrained.state_dict
    features = [name for name in before if name.startswith("mlp_extractor.")]
    heads = [name for name in before if name.split(".")[0] in ("action_net", "value_net", "log_std")]
    assert features and len(heads) == 5
    for name in features:
        assert torch.equal(after[name], before[name]), name
    for name in heads:
        assert not torch.equal(after[name], before[name]), name
    trained = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in policy.parameters() if p.requires_grad}
    assert not any(p.requires_grad for p in policy.mlp_extractor.parameters())

    _, after_full = finetuned(nav, nav_pretrained, 200, finetune="full")
    for name in features:
        assert not torch.equal(after_full[name], before[name]), name


def test_regularized_finetuning_stays_close_to_the_pretrained_policy(
    nav: Callable[[], gym.Env], nav_pretrained: Pretrained
) -> None:
    full, full_state = finetuned(nav, nav_pretrained, 500, finetune="full")
    regularized, _ = finetuned(nav, nav_pretrained, 500, finetune="regularized", reg_lambda=0.99)
    assert isinstance(regularized.optimizer, DistillationAdam)
    kl_full = kl_from_pretrained(full, nav_pretrained)
    kl_regularized = kl_from_pretrained(regularized, nav_pretrained)
    assert kl_full > 1e-3
    assert kl_regularized < 0.05 * kl_full
    # λ = 0 is plain fine-tuning, bit for bit.
    _, lambda_zero = finetuned(nav, nav_pretrained, 500, finetune="regularized", reg_lambda=0.0)
    for name, tensor in full_state.items():
        assert torch.equal(lambda_zero[name], tensor), name


def explicit_kl(reference: torch.distributions.Distribution, current: torch.distributions.Distribution):
    """The KL written out: categorical Σ p (log p − log q); diagonal Gaussian summed over dimensions."""
    if isinstance(reference, torch.distributions.Categorical):
        p = reference.probs
        return (p * (torch.log(p) - torch.log_softmax(current.logits, -1))).sum(-1).mean()
    mu_p, sd_p, mu_q, sd_q = reference.loc, reference.scale, current.loc, current.scale
    per_dim = torch.log(sd_q / sd_p) + (sd_p**2 + (mu_p - mu_q) ** 2) / (2 * sd_q**2) - 0.5
    return per_dim.sum(-1).mean()


@pytest.mark.parametrize("family", ["nav", "bandit"])
def test_mixed_gradient_is_lambda_kl_gradient_plus_rest_of_target_gradient(
    family: str, request: pytest.FixtureRequest
) -> None:
    make = request.getfixturevalue(family)
    env = make()
    reference_policy = make_ppo(env, TINY, seed=0).policy
    replay = np.random.default_rng(0).normal(size=(7, *env.observation_space.shape)).astype(np.float32)
    init = Pretrained(
        state_dict={k: v.clone() for k, v in reference_policy.state_dict().items()}, replay_obs=replay
    )
    lam = 0.7
    config = dataclasses.replace(TINY, finetune="regularized", reg_lambda=lam)
    policy = make_ppo(make(), config, seed=1, init=init).policy
    optimizer = policy.optimizer
    assert isinstance(optimizer, DistillationAdam)

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move away from the reference, where ∇KL would vanish
        for param in policy.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator))
    target = {name: torch.randn(p.shape, generator=generator) for name, p in policy.named_parameters()}
    for name, param in policy.named_parameters():
        param.grad = target[name].clone()

    obs = torch.as_tensor(replay)
    with torch.no_grad():
        reference = reference_policy.get_distribution(obs).distribution
    kl = explicit_kl(reference, policy.get_distribution(obs).distribution)
    names, params = zip(*policy.named_parameters(), strict=True)
    kl_grads = torch.autograd.grad(kl, params, allow_unused=True)

    optimizer.mix_gradients()
    touched = 0
    for name, param, kl_grad in zip(names, params, kl_grads, strict=True):
        expected = (1 - lam) * target[name]
        if kl_grad is not None:
            expected = expected + lam * kl_grad
            touched += 1
        torch.testing.assert_close(param.grad, expected, rtol=1e-5, atol=1e-6, msg=name)
    assert touched >= 3  # the policy network, the action head (and log_std): not the value network
    with torch.no_grad():
        assert optimizer.regularizer().item() == pytest.approx(kl.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------ learning


def test_ppo_from_scratch_learns_a_bandit_with_one_good_arm(bandit: Callable[[], gym.Env]) -> None:
    task = BanditTask(probs=(0.1, 0.1, 0.9, 0.1, 0.1))
    config = dataclasses.replace(TINY, learning_rate=1e-3, hidden_sizes=(16,))
    curves = ppo_curves(bandit, [task], [0, 2000], config, eval_episodes=50, seed=0)
    assert curves[0, 0] < 4.0  # a uniform policy earns 10 · 0.26 = 2.6 on average
    assert curves[-1, 0] > curves[0, 0] + 3.0
