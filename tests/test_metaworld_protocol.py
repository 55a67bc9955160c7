"""``metarl evaluate --protocol metaworld``: Meta-World v3's own meta-RL evaluation of a metarl run.

The protocol runs at a small size here (2 test environments, 20-step episodes, 2 rounds): the full one
(20 environments × 13 episodes of 500 steps × 10 rounds) belongs in benchmarks.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from metaworld.evaluation import Timestep

from metarl import metaworld_protocol as protocol
from metarl.config import resolve
from metarl.rollouts import Episodes
from metarl.run import load_run, train

# the hidden goal dims of Meta-World's observation space are bounded by [0, 0]
pytestmark = pytest.mark.filterwarnings("ignore:.*maximum and minimum values are equal")

SMALL = protocol.ProtocolConfig(
    num_evals=2, adaptation_episodes=2, evaluation_episodes=1, meta_batch_size=2, max_episode_steps=20
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One meta-iteration of MAML-TRPO on ML1 reach-v3 (20-step episodes)."""
    raw = {
        "run": {"iterations": 1, "eval_every": 5, "eval_tasks": 2, "seed": 0, "num_threads": 1},
        "env": {"id": "metarl/MetaWorldML1-v0", "max_episode_steps": 20},
        "algo": {"name": "maml_rl", "meta_batch_size": 2, "rollouts_per_task": 2, "hidden_sizes": [8]},
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*maximum and minimum values are equal")
        return train(resolve(raw), tmp_path_factory.mktemp("mw") / "run")


def _feed(agent: protocol.MAMLAgent, episodes: Episodes) -> None:
    """Give ``agent`` the episodes ``[T, N, E, ...]`` as Meta-World's loop does: one vector step at a time,
    each environment's episodes one after another (all ``T`` steps long: truncated at the horizon)."""
    horizon, envs, per_env = episodes.rewards.shape
    for e in range(per_env):
        for t in range(horizon):
            agent.step(
                Timestep(
                    episodes.obs[t, :, e].numpy().astype(np.float64),
                    episodes.actions[t, :, e].numpy(),
                    episodes.rewards[t, :, e].numpy(),
                    np.zeros(envs, dtype=bool),
                    np.full(envs, t == horizon - 1),
                    {},
                )
            )


def test_the_agent_adapts_as_the_learner_does_on_the_same_episodes(run_dir: Path) -> None:
    """Episodes fed step by step come back in the learner's own ``[T, tasks, episodes, ...]`` layout, and
    the agent's adaptation is the learner's test-time inner step on them."""
    learner = load_run(run_dir).learner
    tasks = learner.sampler.family.sample_tasks(2, split="test", seed=0)
    start = learner.initial(tasks)
    support = learner.support(tasks, start, 0)
    agent = protocol.MAMLAgent(learner, num_envs=2)
    agent.init()
    _feed(agent, support.episodes)
    rebuilt = agent._episodes()
    for mine, theirs in zip(rebuilt, support.episodes, strict=True):
        assert torch.equal(mine, theirs)
    agent.adapt()
    expected = learner.adapt(start, support, 0)
    assert agent.steps_taken == 1 and agent.records == []
    for name, value in expected.items():
        assert torch.allclose(agent.params[name], value, atol=1e-6), name
    assert any(not torch.equal(expected[k], start[k]) for k in expected)  # the step moved the policy


def test_an_episode_cut_short_is_masked() -> None:
    """Environments whose episodes end at different steps (success terminates): later steps are masked and
    only the episodes every environment completed are kept."""

    class Fake:
        device = torch.device("cpu")

    agent = protocol.MAMLAgent(Fake(), num_envs=2)
    ends = [[False, False], [True, False], [False, True], [True, False]]  # env 0: 2 + 2 steps, env 1: 3 (+1)
    for t, done in enumerate(ends):
        agent.step(
            Timestep(
                np.full((2, 3), t, float), np.zeros((2, 4)), np.ones(2), np.array(done), np.zeros(2, bool), {}
            )
        )
    episodes = agent._episodes()
    assert episodes.obs.shape == (3, 2, 1, 3)  # T = 3 (env 1's episode), both envs' first episode
    assert episodes.mask[:, 0, 0].tolist() == [1.0, 1.0, 0.0]
    assert episodes.mask[:, 1, 0].tolist() == [1.0, 1.0, 1.0]
    assert episodes.obs[:, 1, 0, 0].tolist() == [0.0, 1.0, 2.0]


def test_the_protocol_scores_a_run_on_metaworlds_test_goals(run_dir: Path) -> None:
    learner = load_run(run_dir).learner
    report = protocol.evaluate(learner, "maml_rl", "metarl/MetaWorldML1-v0", {}, SMALL)
    assert 0.0 <= report["success_rate"] <= 1.0 and np.isfinite(report["success_rate_ci95"])
    assert len(report["success_rate_per_round"]) == SMALL.num_evals
    assert list(report["success_rate_per_task"]) == ["reach-v3"]
    assert np.isfinite(report["mean_return"]) and report["mean_return"] > 0  # reach's shaped reward is > 0
    text = protocol.markdown(report, "title")
    assert "| reach-v3 |" in text and "**all**" in text


def test_an_rl2_run_plays_one_trial_per_environment(tmp_path: Path) -> None:
    """RL² through the protocol: the trial runs from ``init`` through the adaptation episodes (rewards from
    the protocol's timesteps, ``d = 1`` after each episode's end) into the scored ones (rewards read from
    the observation)."""
    raw = {
        "run": {"iterations": 1, "eval_every": 5, "eval_tasks": 2, "seed": 0, "num_threads": 1},
        "env": {"id": "metarl/MetaWorldML1-v0", "max_episode_steps": 20},
        "algo": {
            "name": "rl2",
            "meta_batch_size": 2,
            "episodes_per_trial": 2,
            "hidden_size": 8,
            "num_minibatches": 1,
        },
    }
    learner = load_run(train(resolve(raw), tmp_path / "rl2")).learner
    agent = protocol.RL2Agent(learner, num_envs=2)
    obs = np.zeros((2, 39))
    first = agent.adapt_action(obs)[0]
    assert first.shape == (2, 4) and np.all(np.abs(first) <= 1.0)  # executed: clipped to the bounds
    agent.step(Timestep(obs, first, np.array([1.5, 2.5]), np.zeros(2, bool), np.array([False, True]), {}))
    assert agent.state.prev_reward.tolist() == [1.5, 2.5] and agent.flag[:, 0].tolist() == [0.0, 1.0]
    agent.adapt_action(obs)
    assert agent.flag.sum() == 0 and torch.equal(
        agent.state.prev_action, torch.as_tensor(agent.state.prev_action)
    )
    recurrent = np.concatenate([obs, np.zeros((2, 4)), [[3.0], [4.0]], np.zeros((2, 1))], axis=1)
    agent.eval_action(recurrent)
    assert agent.state.prev_reward.tolist() == [3.0, 4.0]
    report = protocol.evaluate(learner, "rl2", "metarl/MetaWorldML1-v0", {}, SMALL)
    assert 0.0 <= report["success_rate"] <= 1.0 and len(report["success_rate_per_round"]) == SMALL.num_evals
    assert np.isfinite(report["mean_return"]) and report["mean_return"] > 0


def test_other_runs_are_refused_with_one_line(tmp_path: Path, tiny_config) -> None:  # noqa: ANN001
    nav = train(resolve(__import__("tomllib").loads(tiny_config(iterations=1).read_text())), tmp_path / "nav")
    done = run_cli("evaluate", str(nav), "--protocol", "metaworld")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "Meta-World" in done.stderr or "metaworld" in done.stderr
