"""Where a MAML-RL meta-iteration spends its time: sampling, inner adaptation, outer update.

Runs a few meta-iterations of MAML-RL on HalfCheetahVel (``metarl/HalfCheetahVel-v0``, the batched MuJoCo
fast path of the family's ``make_batched``) at the MAML paper's sizes (Finn et al. 2017, arXiv:1703.03400,
§5.3: 40 tasks × 20 rollouts × 200 steps, 2×100 ReLU policy, one inner step, TRPO outer loop) and prints the
split that ``meta_update`` logs (``time/sampling_s``, ``time/inner_s``, ``time/outer_s``; TRPO: the outer
step's gradient / conjugate gradient / line search) and the ratios outer / sampling and iteration / sampling,
then their means over the iterations after the first (which includes warm-up).

On a machine shared with other jobs, wall-clock splits swing with the load from one phase to the next;
``--clock process`` times every phase in CPU seconds of this process instead (``time.process_time``, all
its threads), and ``--cores 1`` pins the process to one core, so that the physics, the policy and the
outer step all run on one core (the physics uses one thread per core it may run on). Usage::

    OMP_NUM_THREADS=1 python experiments/benchmark_maml_timing.py                 # 2 iterations, TRPO
    OMP_NUM_THREADS=1 python experiments/benchmark_maml_timing.py --cores 1 --clock process --iterations 3
    OMP_NUM_THREADS=1 python experiments/benchmark_maml_timing.py --fvp hessian   # the exact double backward
    python experiments/benchmark_maml_timing.py --outer ppo --iterations 3 --device cuda
    OMP_NUM_THREADS=1 python experiments/benchmark_maml_timing.py --cores 2 --outer-threads 2  # 2 free cores
"""

from __future__ import annotations

import argparse
import os
import time
import types

import numpy as np

from metarl.algorithms import maml_rl
from metarl.config import resolve
from metarl.run import Experiment, resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="metarl/HalfCheetahVel-v0")
    parser.add_argument("--outer", choices=["trpo", "ppo", "vpg"], default="trpo")
    parser.add_argument("--meta-batch", type=int, default=40)
    parser.add_argument("--rollouts", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument(
        "--kl-constraint",
        choices=["adapted", "pre_update"],
        default="adapted",
        help="TRPO: bound the KL of the adapted policies or of the pre-update policy",
    )
    parser.add_argument(
        "--fvp-subsample",
        type=float,
        default=1.0,
        help="TRPO: fraction of episodes in Fisher-vector products",
    )
    parser.add_argument(
        "--fvp",
        choices=["gauss_newton", "hessian"],
        default="gauss_newton",
        help="TRPO: Fisher-vector products as Gauss-Newton products or by double backward",
    )
    parser.add_argument(
        "--fvp-task-chunk", type=int, default=8, help="TRPO Gauss-Newton: tasks per chunk (0: all at once)"
    )
    parser.add_argument("--cores", type=int, default=0, help="pin the process to this many cores (0: as is)")
    parser.add_argument(
        "--clock",
        choices=["wall", "process"],
        default="wall",
        help="time the phases in wall-clock seconds or in CPU seconds of this process",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the learner)")
    parser.add_argument(
        "--outer-threads", type=int, default=0, help="torch threads for the outer update only (0: --threads)"
    )
    args = parser.parse_args()
    if args.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    if args.clock == "process":  # every phase timer of the learner reads CPU time instead
        maml_rl.time = types.SimpleNamespace(perf_counter=time.process_time)  # type: ignore[assignment]

    config = resolve(
        {
            "run": {"num_threads": args.threads},
            "env": {"id": args.env, "max_episode_steps": args.horizon},
            "algo": {
                "name": "maml_rl",
                "outer": args.outer,
                "meta_batch_size": args.meta_batch,
                "rollouts_per_task": args.rollouts,
                "first_order": args.first_order,
                "kl_constraint": args.kl_constraint,
                "fvp_subsample": args.fvp_subsample,
                "fvp": args.fvp,
                "fvp_task_chunk": args.fvp_task_chunk,
                "outer_threads": args.outer_threads,
            },
        }
    )
    device = resolve_device(args.device)
    exp = Experiment.build(config, device)
    tasks, learner = exp.tasks, exp.learner
    rng = np.random.default_rng(0)
    print(
        f"{args.env}: {args.meta_batch} tasks × {args.rollouts} rollouts × {args.horizon} steps, "
        f"outer={args.outer}, first_order={args.first_order}, kl_constraint={args.kl_constraint}, "
        f"fvp={args.fvp}, fvp_task_chunk={args.fvp_task_chunk}, fvp_subsample={args.fvp_subsample}, "
        f"device={device}, torch threads={args.threads} (outer {args.outer_threads or args.threads}), "
        f"cores={len(os.sched_getaffinity(0))}, "
        f"clock={args.clock}"
    )
    columns = (
        "iter",
        "env steps",
        "sampling s",
        "inner s",
        "outer s",
        "(grad",
        "CG",
        "search)",
        "total s",
        "outer/sampling",
        "total/sampling",
    )
    widths = (4, 10, 11, 8, 8, 6, 6, 8, 8, 15, 15)
    print(" ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    nan = float("nan")  # the outer split is TRPO's
    rows = []
    for i in range(args.iterations):
        m = learner.meta_update(tasks.sample(args.meta_batch, split="train", rng=rng))
        rows.append(m)
        print(
            f"{i:>4} {int(m['env_steps']):>10} {m['time/sampling_s']:>11.2f} {m['time/inner_s']:>8.2f} "
            f"{m['time/outer_s']:>8.2f} {m.get('time/outer_gradient_s', nan):>6.2f} "
            f"{m.get('time/outer_cg_s', nan):>6.2f} {m.get('time/outer_line_search_s', nan):>8.2f} "
            f"{m['time/iteration_s']:>8.2f} {m['time/outer_s'] / m['time/sampling_s']:>15.2f} "
            f"{m['time/iteration_s'] / m['time/sampling_s']:>15.2f}",
            flush=True,
        )
    later = rows[1:] or rows
    sampling = float(np.mean([m["time/sampling_s"] for m in later]))
    outer = float(np.mean([m["time/outer_s"] for m in later]))
    total = float(np.mean([m["time/iteration_s"] for m in later]))
    print(
        f"mean of iterations {1 if len(rows) > 1 else 0}..{len(rows) - 1}: sampling {sampling:.2f} s, "
        f"outer {outer:.2f} s, iteration {total:.2f} s; outer/sampling {outer / sampling:.2f}, "
        f"iteration/sampling {total / sampling:.2f}"
    )


if __name__ == "__main__":
    main()
