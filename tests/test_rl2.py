"""RL²: trial GAE by hand, PPO terms, hidden state across episodes and between trials, learning, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from metarl import checkpoint
from metarl.algorithms import ALGORITHMS
from metarl.algorithms.rl2 import RL2, RL2Config
from metarl.config import resolve
from metarl.core import adaptation_curve
from metarl.losses import ppo_losses, trial_gae


def build(env: dict, **algo: object) -> tuple[object, RL2]:
    raw = {"run": {"seed": 0}, "env": env, "algo": {"name": "rl2", **algo}}
    sampler, learner = ALGORITHMS["rl2"].build(resolve(raw), torch.device("cpu"))
    return sampler, learner


def bandit_env(k: int = 5, n: int = 10) -> dict:
    return {"id": f"metarl/Bandit-K{k}-v0", "kwargs": {"num_pulls": n}, "max_episode_steps": n}


# ------------------------------------------------------------------------------------------ pure losses


def test_trial_gae_bootstraps_through_episode_ends_by_hand() -> None:
    # One trial of two 2-step episodes (the boundary is between t = 1 and t = 2); γ = 0.9, λ = 0.5.
    rewards = torch.tensor([[1.0], [0.0], [2.0], [1.0]])
    values = torch.tensor([[0.5], [1.0], [0.2], [0.4]])
    adv = trial_gae(rewards, values, torch.ones(4, 1), gamma=0.9, lam=0.5)
    a3 = 1.0 - 0.4  # the trial's end: V = 0 after it
    a2 = 2.0 + 0.9 * 0.4 - 0.2 + 0.45 * a3
    a1 = 0.0 + 0.9 * 0.2 - 1.0 + 0.45 * a2  # bootstraps from the next episode's first value
    a0 = 1.0 + 0.9 * 1.0 - 0.5 + 0.45 * a1
    torch.testing.assert_close(adv[:, 0], torch.tensor([a0, a1, a2, a3]))
    assert abs(a1 - (0.0 - 1.0 + 0.45 * 0)) > 0.1  # a per-episode GAE would differ at the boundary


def test_trial_gae_skips_masked_steps_by_hand() -> None:
    rewards = torch.tensor([[1.0, 0.0], [5.0, 0.0], [2.0, 3.0]])
    values = torch.tensor([[0.5, 0.0], [9.9, 0.0], [0.2, 1.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    adv = trial_gae(rewards, values, mask, gamma=0.9, lam=0.5)
    a2 = 2.0 - 0.2
    a0 = 1.0 + 0.9 * 0.2 - 0.5 + 0.45 * a2  # the masked step is skipped, not a trial end
    torch.testing.assert_close(adv[:, 0], torch.tensor([a0, 0.0, a2]))
    b2 = 3.0 - 1.0
    b1 = 0.0 + 0.9 * 1.0 - 0.0 + 0.45 * b2
    torch.testing.assert_close(adv[:, 1], torch.tensor([0.9 * 0.0 + 0.45 * b1, b1, b2]))


def test_ppo_losses_at_the_old_policy() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.1]]))
    adv = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    values, returns = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    terms = ppo_losses(logp, logp, adv, values, returns, torch.ones(2, 2), mask, clip=0.2)
    torch.testing.assert_close(terms.policy, torch.tensor(-(1.0 - 2.0 + 3.0) / 3))
    torch.testing.assert_close(terms.value, torch.tensor(0.5 * 1.0 / 3))
    assert float(terms.approx_kl) == 0.0 and float(terms.clip_fraction) == 0.0


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="gae_lambda"):
        RL2Config(gae_lambda=1.5)
    with pytest.raises(ValueError, match="num_minibatches"):
        RL2Config(meta_batch_size=2, num_minibatches=4)
    with pytest.raises(ValueError, match="value_network"):
        RL2Config(value_network="twin")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="algo.value_network.*shared, separate"):
        build(bandit_env(), episodes_per_trial=1, value_network="twin")


def _trial_inputs(learner: RL2, rows: int = 6, steps: int = 7) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.rand(steps, rows, learner.input_dim, generator=generator)


def _grad_size(param: torch.Tensor) -> float:
    return 0.0 if param.grad is None else float(param.grad.abs().sum())


def test_separate_value_network_keeps_the_value_gradient_off_the_policy() -> None:
    _, learner = build(bandit_env(), episodes_per_trial=1, hidden_size=8, value_network="separate")
    net = learner.net
    assert net.state_size == 16 and learner.initial(["a", "b"]).hidden.shape == (2, 16)
    inputs = _trial_inputs(learner)
    head, values, last = net(inputs, torch.zeros(inputs.shape[1], net.state_size))
    values.square().sum().backward(retain_graph=True)  # one graph: the fused kernel runs both GRUs
    policy_side = [net.gru.weight_ih_l0, net.gru.weight_hh_l0, net.gru.bias_hh_l0, net.policy_head.weight]
    assert all(_grad_size(p) == 0.0 for p in policy_side)
    assert _grad_size(net.value_gru.weight_hh_l0) > 0 and _grad_size(net.value_gru.weight_ih_l0) > 0
    net.zero_grad()
    head.square().sum().backward()  # and the policy's loss does not reach the value network
    assert _grad_size(net.value_gru.weight_hh_l0) == 0.0 and _grad_size(net.value_head.weight) == 0.0
    assert _grad_size(net.gru.weight_hh_l0) > 0
    # the state is [h_policy, h_value]: running the two halves of a trial in turn equals one pass
    first, _, mid = net(inputs[:3], torch.zeros(inputs.shape[1], 16))
    second, values2, last2 = net(inputs[3:], mid)
    torch.testing.assert_close(torch.cat([first, second]), head, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(values2, values[3:], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(last2, last, atol=1e-6, rtol=1e-5)


def test_the_value_network_is_separate_by_default() -> None:
    """The paper's (and lucaslingle/pytorch_rl2's) setup, and the winner of rl2_report.md's long runs."""
    assert RL2Config().value_network == "separate"
    _, learner = build(bandit_env(), episodes_per_trial=1, hidden_size=8)
    assert learner.net.value_gru is not None and learner.net.state_size == 16


def test_shared_value_network_is_one_gru_feeding_both_heads() -> None:
    """``value_network = "shared"`` is the network metarl trained before the option existed: the same
    initial weights for a seed (the value GRU is created last) and one ``nn.GRU`` under both heads."""
    _, shared = build(bandit_env(), episodes_per_trial=1, hidden_size=8, value_network="shared")
    _, separate = build(bandit_env(), episodes_per_trial=1, hidden_size=8, value_network="separate")
    assert shared.net.value_gru is None and shared.net.state_size == 8
    for name, value in shared.net.state_dict().items():
        torch.testing.assert_close(separate.net.state_dict()[name], value, rtol=0, atol=0)
    inputs = _trial_inputs(shared)
    net = shared.net
    out, last = net.gru(inputs, torch.zeros(1, inputs.shape[1], 8))
    head, values, state = net(inputs, torch.zeros(inputs.shape[1], 8))
    torch.testing.assert_close(head, net.policy_head(out), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(values, net.value_head(out).squeeze(-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(state, last[0], atol=1e-6, rtol=1e-5)


def test_shared_value_network_reproduces_the_learner_before_the_option() -> None:
    """Two PPO updates with a fixed seed give the numbers the learner gave before ``value_network`` existed
    (recorded with commit dcb083f's rl2.py; equal bit for bit on the machine that recorded them)."""
    sampler, learner = build(
        bandit_env(5, 10),
        episodes_per_trial=1,
        segments_per_episode=5,
        hidden_size=8,
        meta_batch_size=32,
        value_network="shared",
    )
    rng = np.random.default_rng(0)
    recorded = [
        [5.5625, -0.0007417500019073486, 0.47987329959869385, 1.6094245910644531],
        [4.875, -0.00044624507427215576, 0.574114978313446, 1.609398603439331],
    ]
    for expected in recorded:
        m = learner.meta_update(sampler.sample(32, split="train", rng=rng))
        keys = ("meta_train/trial_return", "losses/policy_loss", "losses/value_loss", "losses/entropy")
        got = [m[key] for key in keys]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------ trial semantics


def test_hidden_state_carried_across_episodes_and_reset_between_trials() -> None:
    """On tabular MDPs the observation resets to state 0 every episode: only the hidden state (and the
    previous action/reward) can carry what the trial has learned into the next episode."""
    sampler, learner = build({"id": "metarl/TabularMDP-v0"}, episodes_per_trial=3, hidden_size=16)
    tasks = sampler.held_out(4, seed=0)
    state = learner.initial(tasks)
    assert float(state.hidden.abs().sum()) == 0.0 and state.segment == 0
    segments = []
    for step in range(3):
        before = state.hidden.clone()
        learner.evaluate(tasks, state)  # evaluation does not advance the trial
        torch.testing.assert_close(state.hidden, before)
        segment = learner.support(tasks, state, step)
        state = learner.adapt(state, segment, step)
        segments.append(segment.trajectory)
    assert float(state.hidden.abs().sum()) > 0.0 and state.segment == 3
    inputs = torch.cat([t.inputs for t in segments])
    steps = learner.segment_steps
    flags = inputs[:, :, -1]
    assert flags[0].eq(0).all() and flags[steps].eq(1).all() and flags[2 * steps].eq(1).all()
    assert flags.sum() == 2 * inputs.shape[1]  # only the first step of episodes 2 and 3
    prev_reward = inputs[steps, :, -2]
    torch.testing.assert_close(prev_reward, segments[0].rewards[-1])  # r_{t-1} crosses the episode end
    # One GRU pass over the whole trial from a zero state reproduces every episode's policy and values:
    # the hidden state at the start of episode k is the one episode k − 1 ended with.
    head, values, _ = learner.net(inputs, torch.zeros(inputs.shape[1], learner.net.state_size))
    log_probs, _ = learner.net.log_prob_entropy(head, torch.cat([t.actions for t in segments]))
    torch.testing.assert_close(log_probs, torch.cat([t.log_probs for t in segments]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values, torch.cat([t.values for t in segments]), atol=1e-5, rtol=1e-5)
    # Starting the episode from a zero state instead changes the policy: the carried state matters.
    fresh_head, _, _ = learner.net(segments[1].inputs, torch.zeros(inputs.shape[1], learner.net.state_size))
    assert not torch.allclose(fresh_head, head[steps : 2 * steps], atol=1e-4)
    # A new trial starts from zero again (and, with the same seed, repeats the first trial's evaluation).
    again = learner.initial(tasks)
    assert float(again.hidden.abs().sum()) == 0.0 and again.segment == 0


def test_bandit_chunks_make_the_adaptation_curve() -> None:
    sampler, learner = build(bandit_env(5, 10), episodes_per_trial=1, segments_per_episode=5, hidden_size=8)
    assert learner.segment_steps == 2
    curve = adaptation_curve(learner, sampler.held_out(6, seed=0), 4)
    assert curve.shape == (5, 6) and bool(((curve >= 0) & (curve <= 2)).all())
    with pytest.raises(Exception, match="segments_per_episode"):
        build({"id": "metarl/TabularMDP-v0"}, segments_per_episode=2)
    with pytest.raises(Exception, match="episodes_per_trial = 1"):
        build(bandit_env(), episodes_per_trial=2)


def test_continuous_actions_on_halfcheetah_vel() -> None:
    pytest.importorskip("mujoco")
    env = {"id": "metarl/HalfCheetahVel-v0", "max_episode_steps": 4}
    sampler, learner = build(env, episodes_per_trial=2, hidden_size=8, meta_batch_size=2, num_minibatches=1)
    metrics = learner.meta_update(sampler.sample(2, split="train", rng=np.random.default_rng(0)))
    assert metrics["env_steps"] == 2 * 2 * 4 and np.isfinite(metrics["losses/value_loss"])
    assert learner.trial_returns(sampler.held_out(3, seed=0)).shape == (3,)


# ------------------------------------------------------------------------------------------ learning


def test_rl2_beats_random_on_5_armed_bandits() -> None:
    sampler, learner = build(
        bandit_env(5, 10),
        episodes_per_trial=1,
        segments_per_episode=5,
        hidden_size=32,
        meta_batch_size=200,
        lr=5e-3,
    )
    held_out = sampler.held_out(500, seed=0)
    before = float(learner.trial_returns(held_out).mean())
    rng = np.random.default_rng(0)
    for _ in range(50):
        learner.meta_update(sampler.sample(200, split="train", rng=rng))
    after = float(learner.trial_returns(held_out).mean())
    assert abs(before - 5.0) < 0.3  # random play: E[p] · 10 pulls
    assert after > 5.5, (before, after)  # 5.8 with this seed
    curve = adaptation_curve(learner, held_out, 4).mean(1)
    assert curve[-1] > curve[0] + 0.05, curve  # later pulls of the trial are better: it adapts within a trial


# ------------------------------------------------------------------------------------------ CLI and resume

TINY_RL2 = """
[run]
iterations = 6
eval_every = 3
eval_tasks = 8
eval_steps = 2
seed = 5

[env]
id = "metarl/Bandit-K5-v0"
kwargs = { num_pulls = 6 }
max_episode_steps = 6

[algo]
name = "rl2"
meta_batch_size = 32
episodes_per_trial = 1
segments_per_episode = 3
hidden_size = 8
"""


def _rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def test_rl2_trains_through_the_cli_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An uninterrupted run and a run interrupted after 4 of 6 iterations, then resumed with the CLI."""
    import tomllib

    from test_cli import scalar_tags

    from metarl import run

    config = tmp_path / "rl2.toml"
    config.write_text(TINY_RL2)
    full = run.train(resolve(tomllib.loads(TINY_RL2)), tmp_path / "full")
    assert [r["env_steps"] for r in _rows(full / "metrics.jsonl")] == [32 * 6 * i for i in range(1, 7)]

    calls = {"n": 0}
    original = RL2.meta_update

    def interrupted(self: RL2, tasks: list) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return original(self, tasks)

    monkeypatch.setattr(RL2, "meta_update", interrupted)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run.train(resolve(tomllib.loads(TINY_RL2)), killed)
    assert len(_rows(killed / "metrics.jsonl")) == 4
    proc = run_cli("train", str(config), "--run-dir", str(killed), "--resume")
    assert proc.returncode == 0, proc.stderr
    assert _rows(killed / "metrics.jsonl") == _rows(full / "metrics.jsonl")
    tags = scalar_tags(killed / "tb")
    assert {
        "meta_train/return_pre_adapt",
        "meta_train/trial_return",
        "meta_test/return_step_2",
        "losses/policy_loss",
        "losses/value_loss",
        "losses/entropy",
        "time/env_steps_per_second",
    } <= set(tags)
    assert len(tags["meta_train/trial_return"]) == 6

    # A longer-trial run can start from this one's network (curriculum), but not from a different network.
    _, warm = build(bandit_env(5, 12), episodes_per_trial=1, hidden_size=8, init_from=str(full))
    saved = checkpoint.load(full / "checkpoints" / "latest.pt")
    for name, value in warm.net.state_dict().items():
        torch.testing.assert_close(value, saved["learner"]["net"][name])
    # the value head predicts normalised values: its normaliser comes with it
    assert saved["learner"]["value_stats"][2] > 0
    torch.testing.assert_close(warm.value_stats, saved["learner"]["value_stats"])
    with pytest.raises(Exception, match="init_from"):
        build(bandit_env(5, 12), episodes_per_trial=1, hidden_size=16, init_from=str(full))
