"""Speed of one supervised MAML meta-step: ``vmap`` over tasks vs a per-task Python loop.

The per-task loop is how learn2learn (``maml.clone(); learner.adapt(loss)``) and higher run a meta-batch;
metarl's ``MAMLSupervised.meta_loss`` vmaps ``torch.func.grad`` over the tasks instead. Both compute the same
meta-gradient (``tests/test_fewshot_maml.py``; this script prints the largest difference too). A meta-step
is the inner adaptation of every task, the query loss and its backward pass through the inner loop.

Problems (MAML §5.1/§5.2): sinusoid, 2×40 MLP, meta-batch 25, K = 10 (10 query points); Omniglot conv4,
meta-batch 32, 5-way 1-shot, 1 inner step, with 1 query per class (the training episodes of the reference
code, cbfinn/maml ``main.py``: ``update_batch_size * 2`` examples per class) and with 15 (the usual
evaluation episodes; ``--queries`` picks them) — real Omniglot images when ``--data-root`` points at it (the
timings do not depend on pixel values; random images otherwise). Each configuration runs in a fresh
subprocess, so its peak memory (CPU: the growth of the process's peak RSS over its state after set-up,
warm-up step included; CUDA: ``torch.cuda.max_memory_allocated``) is its own.

    OMP_NUM_THREADS=1 python experiments/benchmark_maml_supervised.py \
        --threads 1 --data-root ../shared/data/omniglot
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

PROBLEMS = ("sinusoid", "omniglot")


def make(problem: str, first_order: bool, device: torch.device, data_root: str, queries: int = 15):
    """A learner and one meta-batch of ``problem``."""
    from metarl.algorithms.maml_supervised import MAMLSupervised, MAMLSupervisedConfig
    from metarl.data import ClassDataset, EpisodeSampler, EpisodeShape, SinusoidSampler, load_omniglot

    rng = np.random.default_rng(0)
    if problem == "sinusoid":
        config = MAMLSupervisedConfig(
            meta_batch_size=25, inner_lr=0.01, network="mlp", first_order=first_order
        )
        tasks = SinusoidSampler(train_shots=10, queries=10)
        learner = MAMLSupervised(config, tasks, device, ways=0)
        return learner, tasks.batch(tasks.sample(25, split="train", rng=rng), device, "train")
    if data_root and Path(data_root).is_dir():
        dataset, train, test, _ = load_omniglot(data_root, "vinyals")
    else:  # random images of Omniglot's shape: 100 classes × 20 examples
        images = torch.randint(0, 256, (2000, 1, 28, 28), dtype=torch.uint8)
        dataset = ClassDataset(
            images, [np.arange(20 * c, 20 * c + 20) for c in range(100)], [str(c) for c in range(100)]
        )
        train, test = np.arange(80), np.arange(80, 100)
    shape = EpisodeShape(5, 1, queries)
    tasks = EpisodeSampler(dataset, train, test, shape, shape)
    config = MAMLSupervisedConfig(meta_batch_size=32, inner_lr=0.4, first_order=first_order)
    learner = MAMLSupervised(config, tasks, device, ways=5)
    return learner, tasks.batch(tasks.sample(32, split="train", rng=rng), device)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(
    problem: str, mode: str, first_order: bool, reps: int, device: str, data_root: str, queries: int
) -> dict:
    """Time ``reps`` meta-steps (after one warm-up) of one configuration; run in a subprocess."""
    dev = torch.device(device)
    learner, batch = make(problem, first_order, dev, data_root, queries)
    meta = list(learner.params.values())
    vectorized = mode == "vmap"

    def step() -> list[torch.Tensor]:
        return list(torch.autograd.grad(learner.meta_loss(batch, vectorized), meta))

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = peak_rss_mib()  # the data and the learner are set up; the peak from here is the meta-steps'
    grads = step()  # warm-up (its peak counts: it is the same computation)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else peak_rss_mib() - base
    reference = list(torch.autograd.grad(learner.meta_loss(batch, not vectorized), meta))
    diff = max(float((a - b).abs().max()) for a, b in zip(grads, reference, strict=True))
    return {
        "median_s": float(np.median(times)),
        "min_s": float(np.min(times)),
        "peak_mib": peak,
        "max_grad_diff": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", default="")
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    parser.add_argument(
        "--queries", type=int, nargs="+", default=[1, 15], help="Omniglot query examples per class"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: "problem,mode,first_order,queries"
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        problem, mode, first, queries = args.one.split(",")
        row = measure(problem, mode, first == "1", args.reps, args.device, args.data_root, int(queries))
        print(json.dumps(row))
        return
    rows = []
    shapes = [(p, q) for p in args.problems for q in (args.queries if p == "omniglot" else [10])]
    for problem, queries in shapes:
        for first in (False, True):
            for mode in ("loop", "vmap"):
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    f"{problem},{mode},{int(first)},{queries}",
                    "--reps",
                    str(args.reps),
                    "--threads",
                    str(args.threads),
                    "--device",
                    args.device,
                    "--data-root",
                    args.data_root,
                ]
                out = (
                    subprocess.run(cmd, capture_output=True, text=True, check=True)
                    .stdout.strip()
                    .splitlines()[-1]
                )
                rows.append(
                    {
                        "problem": problem,
                        "queries": queries,
                        "order": "first" if first else "second",
                        "mode": mode,
                        **json.loads(out),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| problem | queries | order | loop (s) | vmap (s) | speed-up | loop peak (MiB) | vmap peak (MiB) "
        "| max grad diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for i in range(0, len(rows), 2):
        loop, vm = rows[i], rows[i + 1]
        print(
            f"| {loop['problem']} | {loop['queries']} | {loop['order']} | {loop['median_s']:.4f} | "
            f"{vm['median_s']:.4f} | "
            f"{loop['median_s'] / vm['median_s']:.1f}× | {loop['peak_mib']:.0f} | {vm['peak_mib']:.0f} | "
            f"{max(loop['max_grad_diff'], vm['max_grad_diff']):.1e} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
