"""Environment throughput of every registered ``metarl/`` family that has a batched fast path.

For each family the table lists env steps per second of

- ``gym single``: one ``gym.make`` environment, random actions, Python loop;
- ``gym sync ×8``: ``gymnasium.vector.SyncVectorEnv`` of 8 copies, random actions;
- ``batched B×E``: ``make_batched`` with ``B`` tasks × ``E`` envs per task, **a policy in the loop**
  (a 2×64 tanh torch MLP maps each observation to the next action), resetting at the horizon;
- for MuJoCo families, ``physical limit``: the raw single-core ``mujoco.mj_step`` rate ÷ frame_skip
  × the cores the batched path uses — what the physics alone allows on this machine.

Every rate is the best of a few short trials (the machine may be shared). Each row's ``ratio`` is
its rate over the reference: the physical limit for MuJoCo families, ``gym
sync ×8`` for the others. Only live environments count: a terminated ant that waits for the batch
reset is not a step. Usage::

    python experiments/benchmark_envs.py            # ~3 minutes
    python experiments/benchmark_envs.py --quick    # ~20 seconds
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

import envs


@dataclass
class Row:
    name: str
    steps_per_s: float
    cores: int = 1


def _timed(step: Callable[[], int], seconds: float, repeats: int) -> float:
    """Best env steps/s over ``repeats`` trials of calling ``step`` (returns env steps) ``seconds``.

    The best of a few short trials, not the mean: other processes may share the cores.
    """
    step()  # warm-up
    best = 0.0
    for _ in range(repeats):
        steps, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            steps += step()
        best = max(best, steps / elapsed)
    return best


def bench_single(env_id: str, seconds: float, seed: int, repeats: int) -> float:
    env = gym.make(env_id)
    env.reset(seed=seed)
    env.action_space.seed(seed)

    def step() -> int:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
        return 1

    rate = _timed(step, seconds, repeats)
    env.close()
    return rate


def bench_sync(env_id: str, num_envs: int, seconds: float, seed: int, repeats: int) -> float:
    vec = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(num_envs)])
    vec.reset(seed=seed)
    vec.action_space.seed(seed)

    def step() -> int:
        vec.step(vec.action_space.sample())
        return num_envs

    rate = _timed(step, seconds, repeats)
    vec.close()
    return rate


class Policy(nn.Module):
    """A 2×64 tanh MLP: observation → bounded continuous action or discrete action (argmax)."""

    def __init__(self, obs_dim: int, action_space: gym.Space, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        out = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        self.net = nn.Sequential(
            nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, out)
        )
        if not self.discrete:
            self.register_buffer("scale", torch.as_tensor(action_space.high, dtype=torch.float32))

    @torch.no_grad()
    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.net(obs.flatten(2).float())
        return out.argmax(-1) if self.discrete else torch.tanh(out) * self.scale


def bench_batched(
    env_id: str,
    num_tasks: int,
    envs_per_task: int,
    horizon: int,
    repeats: int,
    seed: int,
    threads: int | None = None,
    budget_s: float = 6.0,
) -> tuple[float, int]:
    """Closed-loop rate of the fast path over whole rollouts (reset, then ``horizon`` steps).

    Returns the best env steps/s over ``repeats`` rollouts (fewer once ``budget_s`` is spent) and
    the threads the batch used. Whole rollouts, so the physics visits the same states as in
    :func:`raw_mj_step_rate`: a short timing window right after reset would only see the ant
    falling onto the floor, before its contacts make the physics expensive.
    """
    family = gym.make(env_id).unwrapped
    tasks = family.sample_tasks(num_tasks, seed=seed)
    kwargs = {} if threads is None else {"num_threads": threads}
    batch = family.make_batched(tasks, envs_per_task, device="cpu", horizon=horizon, **kwargs)
    policy = Policy(batch.reset().flatten(2).shape[-1], family.action_space, seed)
    best, spent = 0.0, 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        obs = batch.reset()
        done = torch.zeros(num_tasks, envs_per_task, dtype=torch.bool)
        steps = 0
        for _t in range(horizon):
            steps += int((~done).sum())
            obs, _, terminated, _ = batch.step(policy(obs))
            done = done | terminated
            if bool(done.all()):
                break
        elapsed = time.perf_counter() - start
        best, spent = max(best, steps / elapsed), spent + elapsed
        if spent > budget_s:
            break
    used = int(getattr(batch, "num_threads", 1))
    if hasattr(batch, "close"):
        batch.close()
    return best, used


def bench_batched_env_only(env_id: str, num_tasks: int, envs_per_task: int, repeats: int, seed: int) -> float:
    """Env-only rate of the batched path (random actions drawn up front): the issue's ≥100× check."""
    family = gym.make(env_id).unwrapped
    batch = family.make_batched(family.sample_tasks(num_tasks, seed=seed), envs_per_task, device="cpu")
    gen = torch.Generator().manual_seed(seed)
    space = family.action_space
    if isinstance(space, gym.spaces.Discrete):
        actions = [torch.randint(int(space.n), (num_tasks, envs_per_task), generator=gen) for _ in range(8)]
    else:
        high = torch.as_tensor(space.high, dtype=torch.float32)
        shape = (num_tasks, envs_per_task, *space.shape)
        actions = [(torch.rand(shape, generator=gen) * 2 - 1) * high for _ in range(8)]
    batch.reset()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for t in range(batch.horizon):
            batch.step(actions[t % len(actions)])
        best = max(best, num_tasks * envs_per_task * batch.horizon / (time.perf_counter() - start))
        batch.reset()
    return best


def raw_mj_step_rate(env_id: str, horizon: int, seconds: float, seed: int, repeats: int) -> tuple[float, int]:
    """Single-core ``mj_step`` rate on the fast path's work: one ``MjData``, a Python loop.

    A few environments are first rolled out through the batched path with the benchmark's policy
    (recording their start states and controls); the loop then replays those controls with
    ``mj_step(model, data, nstep=frame_skip)`` only — no policy, no observations, no rewards — so
    the physics visits the same states (same contacts) as in the batched rows.
    """
    import mujoco

    family = gym.make(env_id).unwrapped
    model, frame_skip = family.model, family.frame_skip
    tasks = family.sample_tasks(8, seed=seed)
    batch = family.make_batched(tasks, 1, horizon=horizon, num_threads=1, seed=seed)
    obs = batch.reset()
    start = batch.state.copy()
    policy = Policy(obs.flatten(2).shape[-1], family.action_space, seed)
    controls, lengths = [], np.full(len(tasks), horizon)
    for t in range(horizon):
        action = policy(obs)
        controls.append(action.reshape(len(tasks), -1).double().numpy())
        obs, _, terminated, _ = batch.step(action)
        for i in np.flatnonzero(terminated.reshape(-1).numpy()):
            lengths[i] = min(lengths[i], t + 1)
    batch.close()
    controls_arr = np.stack(controls, axis=1)  # [envs, T, nu]
    data = mujoco.MjData(model)
    spec = int(mujoco.mjtState.mjSTATE_INTEGRATION)
    best = 0.0
    for _ in range(repeats):
        steps, busy = 0, 0.0
        while busy < seconds:
            for i in range(len(tasks)):
                mujoco.mj_setState(model, data, start[i], spec)
                ctrl, length = controls_arr[i], int(lengths[i])
                begin = time.perf_counter()
                for t in range(length):
                    data.ctrl[:] = ctrl[t]
                    mujoco.mj_step(model, data, frame_skip)
                busy += time.perf_counter() - begin
                steps += length * frame_skip
        best = max(best, steps / busy)
    return best, frame_skip


def family_ids() -> list[str]:
    """Registered metarl/ ids whose environment exposes ``make_batched`` (skips missing extras)."""
    ids = []
    for spec in envs.FAMILIES:
        try:
            env = gym.make(spec.id)
        except Exception as err:  # noqa: BLE001 - an optional extra is not installed
            print(f"skip {spec.id}: {type(err).__name__}: {err}")
            continue
        if hasattr(env.unwrapped, "make_batched"):
            ids.append(spec.id)
        env.close()
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short measurements (~20 s in all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="restrict to these ids")
    args = parser.parse_args()
    # per trial / rollout; every rate is the best of a few trials
    seconds, repeats, rollouts = (0.15, 2, 1) if args.quick else (0.6, 3, 3)
    horizon_mujoco = 10 if args.quick else 100  # 100: garage / ProMP horizon
    torch.set_num_threads(1)  # the MLP is tiny; leave the cores to the physics threads

    ids = [i for i in family_ids() if args.only is None or i in args.only]
    print(f"cores available: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()}")
    for env_id in ids:
        is_mujoco = hasattr(gym.make(env_id).unwrapped, "batch_spec")
        rows = [
            Row("gym single", bench_single(env_id, seconds, args.seed, repeats)),
            Row("gym sync x8", bench_sync(env_id, 8, seconds, args.seed, repeats)),
        ]
        sizes = [(40, 1), (40, 20)] if is_mujoco else [(40, 1), (40, 20), (40, 250)]
        horizon = horizon_mujoco if is_mujoco else 100
        for b, e in sizes:
            rate, threads = bench_batched(env_id, b, e, horizon, rollouts, args.seed)
            rows.append(Row(f"batched {b}x{e} (+policy)", rate, threads))
        if not is_mujoco:  # SyncVectorEnv's rate is flat in the number of envs; the batch's grows
            for b, e in [(1000, 10), (1000, 100)]:
                rate = bench_batched_env_only(env_id, b, e, repeats, args.seed)
                rows.append(Row(f"batched {b}x{e} (env only)", rate))
        if is_mujoco:  # the same 800 envs on one core: robust to other load on the machine
            rate, threads = bench_batched(env_id, 40, 20, horizon, rollouts, args.seed, threads=1)
            rows.append(Row("batched 40x20 (+policy, 1 thread)", rate, threads))
            raw, frame_skip = raw_mj_step_rate(env_id, horizon, seconds, args.seed, repeats)
            per_core = raw / frame_skip
            print(f"\n{env_id}: raw mj_step {raw:,.0f}/s on one core, frame_skip {frame_skip}")
            header = "limit = raw / frame_skip x cores"
        else:
            per_core = 0.0
            print(f"\n{env_id}")
            header = "vs gym sync x8"
        columns = f"{'path':<36} {'cores':>5} {'env steps/s':>12} {'limit':>10} {'ratio':>6}"
        print(f"  {columns}  ({header})")
        for row in rows:
            ref = per_core * row.cores if is_mujoco else rows[1].steps_per_s
            limit = f"{ref:>10,.0f}" if is_mujoco else f"{'':>10}"
            print(
                f"  {row.name:<36} {row.cores:>5} {row.steps_per_s:>12,.0f} {limit} "
                f"{row.steps_per_s / ref:>6.2f}"
            )


if __name__ == "__main__":
    main()
