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

``--shape preset`` measures metarl alone at the shape of ``experiments/rl2_bandit_k10_n100.toml`` (10 arms,
trials of 100 pulls, 500 trials per update, GRU-64; from scratch); ``--config`` names another preset.
``--baseline REV`` also times the RL² learner of git revision ``REV`` (its ``metarl/algorithms/rl2.py``,
e.g. ``HEAD``) on the same config, alternating old and new ``--repeats`` times in one process, so that
before and after see the same machine load::

    OMP_NUM_THREADS=1 python experiments/benchmark_rl2_throughput.py --shape preset --sb3-envs \
        --baseline dcb083f --repeats 3 --rl2-iterations 3

``--clock process`` times CPU seconds of the process instead of the wall clock, for a machine shared with
other jobs.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
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


ROOT = Path(__file__).resolve().parent.parent


def bandit_config(hidden: int, preset: Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The raw config: 5-armed bandits of 10 pulls (1000 trials per update), or a preset's TOML."""
    if preset is None:
        raw = {
            "run": {"seed": 0},
            "env": {"id": "metarl/Bandit-K5-v0", "kwargs": {"num_pulls": 10}, "max_episode_steps": 10},
            "algo": {"name": "rl2", "episodes_per_trial": 1, "hidden_size": hidden, "meta_batch_size": 1000},
        }
    else:
        raw = tomllib.loads(preset.read_text())
        raw["algo"]["init_from"] = ""  # from scratch: the timing does not depend on the weights
    raw["algo"].update(overrides)
    return raw


def learner_of_revision(revision: str, learner: Any) -> Any:
    """An RL² learner built by ``metarl/algorithms/rl2.py`` of git ``revision`` with ``learner``'s config
    (the keys that revision knows), family, horizon and seed."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:metarl/algorithms/rl2.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "rl2_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("rl2_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["rl2_baseline"] = module
    spec.loader.exec_module(module)
    known = {f.name for f in dataclasses.fields(module.RL2Config)}
    config = module.RL2Config(**{k: v for k, v in dataclasses.asdict(learner.config).items() if k in known})
    horizon = learner.segment_steps * learner.config.segments_per_episode
    return module.RL2(config, learner.family, horizon, learner.device, learner.seed)


#: what the timings measure: wall-clock seconds, or CPU seconds of this process (``--clock process``:
#: steadier on a machine shared with other jobs)
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
clock = CLOCKS["wall"]


def time_learner(learner: Any, sampler: Any, batch: int, iterations: int) -> tuple[float, int, float]:
    """Env steps per second of ``iterations`` meta-updates after one warm-up update."""
    rng = np.random.default_rng(0)
    learner.meta_update(sampler.sample(batch, split="train", rng=rng))  # warm-up
    steps, start = 0, clock()
    for _ in range(iterations):
        tasks = sampler.sample(batch, split="train", rng=rng)
        steps += int(learner.meta_update(tasks)["env_steps"])
    wall = clock() - start
    return steps / wall, steps, wall


def metarl_rl2(
    hidden: int, iterations: int, preset: Path | None = None, overrides: dict[str, Any] | None = None
) -> tuple[float, int, float]:
    config = resolve(bandit_config(hidden, preset, overrides or {}))
    sampler, learner = ALGORITHMS["rl2"].build(config, torch.device("cpu"))
    return time_learner(learner, sampler, config.algo.meta_batch_size, iterations)


def before_after(
    revision: str, hidden: int, iterations: int, repeats: int, preset: Path | None, overrides: dict[str, Any]
) -> list[tuple[str, tuple[float, int, float]]]:
    """``repeats`` alternations of the learner of ``revision`` and the working tree's, fresh from the seed."""
    rows = []
    for _ in range(repeats):
        config = resolve(bandit_config(hidden, preset, overrides))
        sampler, learner = ALGORITHMS["rl2"].build(config, torch.device("cpu"))
        old = learner_of_revision(revision, learner)
        batch = config.algo.meta_batch_size
        rows.append((f"before ({revision})", time_learner(old, sampler, batch, iterations)))
        rows.append(("after (working tree)", time_learner(learner, sampler, batch, iterations)))
    return rows


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
        "--sb3-envs", type=int, nargs="*", default=[16, 64], help="RecurrentPPO vec-env sizes (none: skip)"
    )
    parser.add_argument(
        "--shape", choices=["bandit10", "preset"], default="bandit10", help="5 arms × 10 pulls, or --config"
    )
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "rl2_bandit_k10_n100.toml")
    parser.add_argument("--set", action="append", default=[], help="algo override KEY=VALUE (Python literal)")
    parser.add_argument("--baseline", default=None, help="git revision whose RL² to time (before/after)")
    parser.add_argument("--repeats", type=int, default=3, help="before/after alternations with --baseline")
    parser.add_argument(
        "--sb3-rollouts", type=int, default=4, help="RecurrentPPO rollouts of 128 steps × envs"
    )
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall", help="wall or process CPU seconds")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(1)
    preset = args.config if args.shape == "preset" else None
    overrides = {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.baseline:
        rows = before_after(args.baseline, args.hidden, args.rl2_iterations, args.repeats, preset, overrides)
        before = [rate for name, (rate, _, _) in rows if name.startswith("before")]
        after = [rate for name, (rate, _, _) in rows if name.startswith("after")]
        seconds = "CPU s" if args.clock == "process" else "wall (s)"
        print(f"| learner | env steps | {seconds} | env steps/s |")
        print("|---|---|---|---|")
        for name, (rate, steps, wall) in rows:
            print(f"| {name} | {steps} | {wall:.1f} | {rate:,.0f} |")
        ratios = [a / b for a, b in zip(after, before, strict=True)]
        print(
            f"\nspeed-up after/before per alternation: {', '.join(f'{r:.2f}' for r in ratios)}; "
            f"mean {np.mean(ratios):.2f}"
        )
        return
    ours = metarl_rl2(args.hidden, args.rl2_iterations, preset, overrides)
    rows = [("metarl RL² (GRU, 1000 trials/batch)", ours)]
    for envs_ in args.sb3_envs:
        result = sb3_recurrent_ppo(args.hidden, envs_, envs_ * 128 * args.sb3_rollouts)
        rows.append((f"sb3_contrib RecurrentPPO (LSTM, {envs_} envs)", result))
    again = metarl_rl2(args.hidden, args.rl2_iterations, preset, overrides)
    rows.append(("metarl RL² again (load drift check)", again))
    ours = (rows[0][1][0] + rows[-1][1][0]) / 2
    seconds = "CPU s" if args.clock == "process" else "wall (s)"
    print(f"| learner | recurrent units | env steps | {seconds} | env steps/s | RL² speed-up |")
    print("|---|---|---|---|---|---|")
    for name, (rate, steps, wall) in rows:
        ratio = "" if name.startswith("metarl") else f"{ours / rate:.1f}x"
        print(f"| {name} | {args.hidden} | {steps} | {wall:.1f} | {rate:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
