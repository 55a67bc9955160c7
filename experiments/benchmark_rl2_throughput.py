"""Training throughput of RL² (metarl) against ``sb3_contrib.RecurrentPPO`` on the same bandit task, one run.

Task: RL² Table 1's 5-armed Bernoulli bandits, trials of n = 10 pulls, a new bandit (``p_i ~ U[0, 1]``)
every trial. Both learners see the RL² input (observation, one-hot previous action, previous reward, episode
flag), reset their recurrent state between trials, use a recurrent layer of the same size (metarl: GRU;
RecurrentPPO only offers an LSTM) and PPO with 4 epochs × 4 minibatches per batch of experience. metarl
steps 1000 trials at once on the batched torch bandit; RecurrentPPO steps a ``DummyVecEnv`` of gymnasium
bandits (``--sb3-envs`` of them; 16 and 64 by default). The number reported is environment steps per
second of *training* (sampling + updates), on one CPU thread each; RL² is measured before and after the
RecurrentPPO runs and its mean is the reference of the speed-up (a shared machine's load drifts)::

    OMP_NUM_THREADS=1 python experiments/benchmark_rl2_throughput.py
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import envs  # noqa: F401  (registers the families)
from envs.bandit import BanditTask
from metarl.algorithms import ALGORITHMS
from metarl.config import resolve


class RL2BanditInputs(gym.Wrapper):
    """A bandit whose observation is RL²'s input and whose task is redrawn at every reset (a new trial)."""

    def __init__(self, env: gym.Env, seed: int) -> None:
        super().__init__(env)
        self.arms = int(env.action_space.n)
        self.rng = np.random.default_rng(seed)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1 + self.arms + 2,), np.float32)

    def _inputs(self, obs: np.ndarray, action: int | None, reward: float) -> np.ndarray:
        x = np.zeros(self.observation_space.shape, np.float32)
        x[: obs.shape[0]] = obs
        if action is not None:
            x[1 + action] = 1.0
        x[-2] = reward
        return x

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        task = BanditTask(probs=tuple(self.rng.uniform(size=self.arms)))
        obs, info = self.env.reset(options={"task": task})
        return self._inputs(obs, None, 0.0), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._inputs(obs, int(action), float(reward)), reward, terminated, truncated, info


def metarl_rl2(hidden: int, iterations: int) -> tuple[float, int, float]:
    raw = {
        "run": {"seed": 0},
        "env": {"id": "metarl/Bandit-K5-v0", "kwargs": {"num_pulls": 10}, "max_episode_steps": 10},
        "algo": {"name": "rl2", "episodes_per_trial": 1, "hidden_size": hidden, "meta_batch_size": 1000},
    }
    config = resolve(raw)
    sampler, learner = ALGORITHMS["rl2"].build(config, torch.device("cpu"))
    rng = np.random.default_rng(0)
    learner.meta_update(sampler.sample(config.algo.meta_batch_size, split="train", rng=rng))  # warm-up
    steps, start = 0, time.perf_counter()
    for _ in range(iterations):
        tasks = sampler.sample(config.algo.meta_batch_size, split="train", rng=rng)
        steps += int(learner.meta_update(tasks)["env_steps"])
    wall = time.perf_counter() - start
    return steps / wall, steps, wall


def sb3_recurrent_ppo(hidden: int, num_envs: int, timesteps: int) -> tuple[float, int, float]:
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    def make(i: int):
        return lambda: RL2BanditInputs(gym.make("metarl/Bandit-K5-v0"), seed=i)

    venv = DummyVecEnv([make(i) for i in range(num_envs)])
    n_steps = 128
    model = RecurrentPPO(
        "MlpLstmPolicy",
        venv,
        n_steps=n_steps,
        batch_size=num_envs * n_steps // 4,
        n_epochs=4,
        gamma=0.99,
        gae_lambda=0.3,
        clip_range=0.1,
        ent_coef=0.01,
        policy_kwargs={
            "lstm_hidden_size": hidden,
            "net_arch": [],
            "shared_lstm": True,
            "enable_critic_lstm": False,
        },
        seed=0,
        device="cpu",
    )
    model.learn(num_envs * n_steps)  # warm-up
    start = time.perf_counter()
    model.learn(timesteps, reset_num_timesteps=False)
    wall = time.perf_counter() - start
    return timesteps / wall, timesteps, wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=64, help="recurrent units of both learners")
    parser.add_argument("--rl2-iterations", type=int, default=10, help="metarl iterations (10k steps each)")
    parser.add_argument(
        "--sb3-envs", type=int, nargs="+", default=[16, 64], help="RecurrentPPO vec-env sizes"
    )
    parser.add_argument(
        "--sb3-rollouts", type=int, default=4, help="RecurrentPPO rollouts of 128 steps × envs"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [("metarl RL² (GRU, 1000 trials/batch)", metarl_rl2(args.hidden, args.rl2_iterations))]
    for envs_ in args.sb3_envs:
        result = sb3_recurrent_ppo(args.hidden, envs_, envs_ * 128 * args.sb3_rollouts)
        rows.append((f"sb3_contrib RecurrentPPO (LSTM, {envs_} envs)", result))
    rows.append(("metarl RL² again (load drift check)", metarl_rl2(args.hidden, args.rl2_iterations)))
    ours = (rows[0][1][0] + rows[-1][1][0]) / 2
    print("| learner | recurrent units | env steps | wall (s) | env steps/s | RL² speed-up |")
    print("|---|---|---|---|---|---|")
    for name, (rate, steps, wall) in rows:
        ratio = "" if name.startswith("metarl") else f"{ours / rate:.1f}x"
        print(f"| {name} | {args.hidden} | {steps} | {wall:.1f} | {rate:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
