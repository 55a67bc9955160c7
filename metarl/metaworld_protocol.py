"""Meta-World's official meta-RL evaluation of a metarl run: ``metarl evaluate RUN --protocol metaworld``.

Meta-World (Yu et al. 2019, arXiv:1910.10897; McLean et al. 2025, Meta-World+, arXiv:2505.11289) scores a
meta-learner on the benchmark's *held-out* tasks with ``metaworld.evaluation.metalearning_evaluation`` of the
``metaworld`` package (v3), which this module calls as it is:

- the test tasks of the run's benchmark, built by ``metaworld.make_ml_envs(..., split="test")`` with the
  settings of Meta-World's own test environments (``terminate_on_success=True``, pseudo-random task
  cycling): ML1 — the run's environment with 40 of the test goals Meta-World holds out; ML10 / ML45 — the
  5 test environments, 40 goals each. ``meta_batch_size`` vector environments (20) each cycle through
  their share of them;
- ``num_evals`` rounds (10): each round moves every environment to its next test task, restarts the agent
  from its meta-trained state, lets it collect ``adaptation_episodes`` (10) episodes per environment and
  adapt (``adaptation_steps`` times, 1), then scores ``evaluation_episodes`` (3) episodes per environment:
  an episode is a success when Meta-World's ``success`` flag is set at any step (the environment ends it
  there). Horizon: Meta-World's ``max_path_length`` (500).

The metarl learner acts through Meta-World's ``MetaLearningAgent`` protocol: :class:`MAMLAgent` makes
the episodes an environment collects one task's support batch (``[T, tasks, episodes, ...]``, the
learner's own layout) and ``adapt`` the learner's test-time inner step — what ``metarl evaluate`` does
with the run's own environments; :class:`RL2Agent` runs one RL² trial per environment through the
adaptation episodes into the scored ones. Rounds are run one at a time (``num_evals = 1`` each, the
same computation) so that the report gives the spread over rounds: mean success rate ± 95% interval.
Supported learners: ``maml_rl``, ``pretrained_rl`` (MAML-TRPO / Meta-SGD / the pretrained baseline) and
``rl2``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl import atomic
from metarl.errors import ConfigError
from metarl.evaluation import mean_ci95
from metarl.rollouts import Episodes

#: the metarl family whose runs the protocol evaluates
FAMILIES = ("metarl/MetaWorldML1-v0", "metarl/MetaWorldML10-v0", "metarl/MetaWorldML45-v0")


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """Settings of ``metaworld.evaluation.metalearning_evaluation``; defaults are Meta-World v3's.

    Attributes:
        num_evals: rounds, each on the next test task of every environment (10).
        adaptation_steps: adaptation steps per round (1; MAML's inner steps at test time).
        adaptation_episodes: episodes per environment collected for each adaptation step (10).
        evaluation_episodes: episodes per environment scored after adapting (3).
        meta_batch_size: vector environments, i.e. test tasks per round (20).
        total_tasks_per_cls: test goals per test environment (40 of the 50 Meta-World holds out, so that they
            divide among the vector environments: the setting ``metalearning_evaluation`` assumes).
        max_episode_steps: horizon; 0 = Meta-World's ``max_path_length`` (500).
        seed: seed of the test environments and their task order (0).
    """

    num_evals: int = 10
    adaptation_steps: int = 1
    adaptation_episodes: int = 10
    evaluation_episodes: int = 3
    meta_batch_size: int = 20
    total_tasks_per_cls: int = 40
    max_episode_steps: int = 0
    seed: int = 0


class MAMLAgent:
    """A MAML-RL learner as Meta-World's ``MetaLearningAgent``: one task per vector environment.

    ``init`` restarts every environment's policy at the meta-parameters; ``adapt_action`` / ``eval_action``
    sample from each environment's current (adapted) policy; ``step`` files each transition under its
    environment, episode and time step; ``adapt`` turns the collected episodes into the learner's support
    batch and takes its test-time inner step.
    """

    def __init__(self, learner: Any, num_envs: int) -> None:
        self.learner, self.num_envs = learner, num_envs
        self.device = learner.device
        self.params: dict[str, torch.Tensor] = {}
        self.steps_taken = 0
        self._clear()

    def _clear(self) -> None:
        self.records: list[tuple[torch.Tensor, ...]] = []  # (obs, actions, rewards, episode, t) per step
        self.episode = np.zeros(self.num_envs, dtype=np.int64)
        self.t = np.zeros(self.num_envs, dtype=np.int64)

    def init(self) -> None:
        self.params = self.learner.initial([None] * self.num_envs)
        self.steps_taken = 0
        self._clear()

    def _sample(self, observations: np.ndarray) -> np.ndarray:
        obs = torch.as_tensor(observations, dtype=torch.float32, device=self.device).unsqueeze(1)
        return self.learner.act(self.params, obs).squeeze(1).cpu().numpy()

    def adapt_action(self, observations: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self._sample(observations), {}

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        return self._sample(observations)

    def reset(self, env_mask: np.ndarray) -> None:
        """Nothing to reset: the policy is feed-forward and keeps its adapted weights."""

    def step(self, timestep: Any) -> None:
        self.records.append(
            (
                torch.as_tensor(timestep.observation, dtype=torch.float32),
                torch.as_tensor(timestep.action, dtype=torch.float32),
                torch.as_tensor(timestep.reward, dtype=torch.float32),
                torch.as_tensor(self.episode.copy()),
                torch.as_tensor(self.t.copy()),
            )
        )
        done = np.logical_or(timestep.terminated, timestep.truncated)
        self.t = np.where(done, 0, self.t + 1)
        self.episode = self.episode + done

    def _episodes(self) -> Episodes:
        """The collected transitions as ``[T, N, E, ...]`` episodes (the first ``E`` complete episodes
        of every environment; steps after an episode's end are masked)."""
        obs, actions, rewards, episode, t = (torch.stack(x) for x in zip(*self.records, strict=True))
        complete = int(torch.as_tensor(self.episode).min())
        if complete < 1:
            raise RuntimeError("adapt() before every environment finished an episode")
        keep = episode < complete  # [steps, N]
        horizon = int(t[keep].max()) + 1
        n, steps = self.num_envs, obs.shape[0]
        env = torch.arange(n).expand(steps, n)
        out_obs = torch.zeros(horizon, n, complete, obs.shape[-1])
        out_actions = torch.zeros(horizon, n, complete, actions.shape[-1])
        out_rewards, out_mask = torch.zeros(horizon, n, complete), torch.zeros(horizon, n, complete)
        where = (t[keep], env[keep], episode[keep])
        out_obs[where], out_actions[where], out_rewards[where] = obs[keep], actions[keep], rewards[keep]
        out_mask[where] = 1.0
        return Episodes(
            *(x.to(self.device) for x in (out_obs, out_actions, out_rewards, out_mask))  # type: ignore[arg-type]
        )

    def adapt(self) -> None:
        support = self.learner.support_from(self._episodes())
        self.params = self.learner.adapt(self.params, support, self.steps_taken)
        self.steps_taken += 1
        self._clear()


class RL2Agent:
    """An RL² learner as Meta-World's ``MetaLearningAgent``: one trial per vector environment.

    The trial starts at ``init`` (zero hidden state) and runs through the adaptation episodes into the scored
    ones; ``adapt`` does nothing (the hidden state is the adaptation). Each step feeds the learner's input
    ``(o_t, a_{t−1}, r_{t−1}, d_t)`` with ``d_t = 1`` on the first step of every episode after the first, as
    in training. The scored episodes give the agent no rewards through the protocol, so the test
    environments put them into the observation (Meta-World's ``RNNBasedMetaRLWrapper``, unnormalised:
    ``recurrent_info_in_obs``): ``r_{t−1}`` is read from there, except on an episode's first step, where the
    wrapper's reset leaves 0 instead of the previous episode's last reward.
    """

    recurrent_info_in_obs = True

    def __init__(self, learner: Any, num_envs: int) -> None:
        self.learner, self.num_envs = learner, num_envs
        self.device = learner.device
        from metarl.algorithms.rl2 import EVAL_SEED_OFFSET

        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(learner.seed + EVAL_SEED_OFFSET)  # the learner's evaluation stream
        self.init()

    def init(self) -> None:
        self.state = self.learner.zero_state(self.num_envs)
        self.flag = torch.zeros(self.num_envs, 1, device=self.device)

    def _act(self, observations: np.ndarray, reward_from_obs: bool) -> np.ndarray:
        obs = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
        hidden, prev_action, prev_reward, segment = self.state
        if reward_from_obs:  # the wrapper's (o_t, a_{t−1}, r_{t−1}, done)
            prev_reward = obs[:, self.learner.obs_dim + self.learner.action_dim]
        with torch.no_grad():
            _, _, _, hidden, _, executed = self.learner.policy_step(
                obs[:, : self.learner.obs_dim], hidden, prev_action, prev_reward, self.flag, self.generator
            )
        self.state = type(self.state)(hidden, executed, prev_reward, segment)
        self.flag = torch.zeros_like(self.flag)
        return executed.cpu().numpy()

    def adapt_action(self, observations: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self._act(observations, reward_from_obs=False), {}

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        return self._act(observations, reward_from_obs=True)

    def step(self, timestep: Any) -> None:
        reward = torch.as_tensor(timestep.reward, dtype=torch.float32, device=self.device)
        self.state = self.state._replace(prev_reward=reward)
        self.reset(np.logical_or(timestep.terminated, timestep.truncated))

    def reset(self, env_mask: np.ndarray) -> None:
        """Environments whose episode just ended start their next episode of the trial (``d = 1``)."""
        ended = torch.as_tensor(np.asarray(env_mask, dtype=np.float32), device=self.device).unsqueeze(-1)
        self.flag = torch.maximum(self.flag, ended)

    def adapt(self) -> None:
        """Nothing: the recurrent state carries what the trial has seen."""


#: the Meta-World agent of each supported learner
AGENTS: dict[str, type] = {"maml_rl": MAMLAgent, "pretrained_rl": MAMLAgent, "rl2": RL2Agent}


def check(env_id: str, algo_name: str) -> None:
    """Refuse (one line, :class:`ConfigError`) a run the protocol cannot evaluate."""
    if env_id not in FAMILIES:
        raise ConfigError(
            f"--protocol metaworld evaluates runs of {', '.join(FAMILIES)}; this run is {env_id}"
        )
    if algo_name not in AGENTS:
        raise ConfigError(
            f"--protocol metaworld evaluates {', '.join(AGENTS)} runs; this run's learner is {algo_name}"
        )


def make_test_envs(
    env_id: str, env_kwargs: dict[str, Any], config: ProtocolConfig, recurrent_info_in_obs: bool = False
) -> Any:
    """Meta-World's own test vector environments for the benchmark of a metarl family ``env_id``
    (``recurrent_info_in_obs``: the previous action, reward and done in each observation, for RL²)."""
    import metaworld

    benchmark = str(env_kwargs.get("benchmark", env_id.split("MetaWorld")[1].split("-")[0]))
    name = str(env_kwargs.get("env_name") or "reach-v3") if benchmark == "ML1" else benchmark
    extra: dict[str, Any] = (
        {"max_episode_steps": config.max_episode_steps} if config.max_episode_steps else {}
    )
    if recurrent_info_in_obs:
        extra |= {"recurrent_info_in_obs": True, "normalize_reward_in_recurrent_info": False}
    return metaworld.make_ml_envs(
        name,
        seed=config.seed,
        meta_batch_size=config.meta_batch_size,
        total_tasks_per_cls=config.total_tasks_per_cls,
        split="test",
        terminate_on_success=True,
        task_select="pseudorandom",
        reward_function_version=str(env_kwargs.get("reward_function_version", "v2")),
        **extra,
    )


def evaluate(
    learner: Any, algo_name: str, env_id: str, env_kwargs: dict[str, Any], config: ProtocolConfig
) -> dict:
    """Run the protocol on ``learner`` (a loaded ``maml_rl`` / ``pretrained_rl`` run); returns the report:
    mean success rate ± 95% interval over rounds, mean return, per-task success rates, per-round rates."""
    from metaworld.evaluation import metalearning_evaluation

    check(env_id, algo_name)
    agent_type = AGENTS[algo_name]
    envs = make_test_envs(env_id, env_kwargs, config, getattr(agent_type, "recurrent_info_in_obs", False))
    agent = agent_type(learner, envs.num_envs)
    rates, returns, per_task = [], [], {}
    try:
        for _ in range(config.num_evals):  # one round at a time: the spread over rounds
            rate, mean_return, tasks = metalearning_evaluation(
                agent,
                envs,
                num_evals=1,
                adaptation_steps=config.adaptation_steps,
                adaptation_episodes=config.adaptation_episodes,
                evaluation_episodes=config.evaluation_episodes,
            )
            rates.append(float(rate))
            returns.append(float(mean_return))
            for task, value in tasks.items():
                per_task.setdefault(task, []).append(float(value))
    finally:
        envs.close()
    mean, ci95 = mean_ci95(torch.tensor(rates, dtype=torch.float64))
    return {
        "protocol": "metaworld.evaluation.metalearning_evaluation (Meta-World v3)",
        "settings": dataclasses.asdict(config),
        "success_rate": mean,
        "success_rate_ci95": ci95,
        "mean_return": float(np.mean(returns)),
        "success_rate_per_task": {task: float(np.mean(v)) for task, v in sorted(per_task.items())},
        "success_rate_per_round": rates,
    }


def markdown(report: dict, title: str) -> str:
    """The report as a Markdown table: one row per test task and the overall success rate."""
    settings = report["settings"]
    lines = [
        f"# {title}",
        "",
        f"Protocol: {report['protocol']}; {settings['num_evals']} rounds × {settings['meta_batch_size']} "
        f"test environments, {settings['adaptation_steps']} adaptation step(s) of "
        f"{settings['adaptation_episodes']} episodes, {settings['evaluation_episodes']} scored episodes "
        f"(success: the success flag at any step), seed {settings['seed']}.",
        "",
        "| test task | success rate |",
        "|---|---|",
        *[f"| {task} | {rate:.3f} |" for task, rate in report["success_rate_per_task"].items()],
        f"| **all** | **{report['success_rate']:.3f} ± {report['success_rate_ci95']:.3f}** |",
        "",
        f"Mean episode return: {report['mean_return']:.2f}.",
    ]
    return "\n".join(lines) + "\n"


def write(report: dict, out_dir: Path, stem: str, title: str) -> dict[str, Path]:
    """``out_dir/<stem>.json`` and ``.md``, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    atomic.write_text(paths["json"], json.dumps(report, indent=2) + "\n")
    atomic.write_text(paths["md"], markdown(report, title))
    return paths
