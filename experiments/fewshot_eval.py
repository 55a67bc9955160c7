"""Evaluate a trained few-shot run on episodes of another shape (e.g. a 5-way-trained ProtoNet 20-way).

`metarl evaluate` scores a run on its own held-out episodes; the papers also score one model on several
shapes (Snell et al. Table 1 trains once per shot and tests 5- and 20-way) and on Lake's ``all_runs``.
This script rebuilds the run with ``data.*`` overrides, loads a checkpoint and prints the accuracy after
0..``--steps`` adaptation steps with its 95% confidence interval over ``--episodes`` fixed test episodes.

    python experiments/fewshot_eval.py runs/protonets_omniglot_5w1s --ways 20 --shots 1 --queries 5 \\
        --episodes 1000 --steps 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from metarl import checkpoint
from metarl.config import resolve
from metarl.evaluation import evaluate_adaptation
from metarl.run import Experiment


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--ways", type=int)
    parser.add_argument("--shots", type=int)
    parser.add_argument("--queries", type=int)
    parser.add_argument("--split", help="data.split override ('lake' for Lake's all_runs)")
    parser.add_argument("--data-root", help="data.root override")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--checkpoint", choices=["latest", "best"], default="latest")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other config override, e.g. algo.vectorize=false (conv4 MAML evaluates faster on CPU)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    raw = json.loads((args.run_dir / "config.json").read_text())
    overrides = [f"data.{k}={getattr(args, k)}" for k in ("ways", "shots", "queries") if getattr(args, k)]
    overrides += [
        f"data.{k.replace('data_', '')}={json.dumps(getattr(args, k))}"
        for k in ("split", "data_root")
        if getattr(args, k)
    ]
    overrides += [f"run.num_threads={args.threads}", *args.set]
    config = resolve(raw, overrides)
    exp = Experiment.build(config, torch.device("cpu"))
    exp.learner.load_state_dict(
        checkpoint.load(args.run_dir / "checkpoints" / f"{args.checkpoint}.pt")["learner"]
    )
    start = time.perf_counter()
    curve = evaluate_adaptation(
        exp.learner, exp.tasks.held_out(args.episodes, seed=config.run.eval_seed), args.steps
    )
    d = config.data
    shape = f"{d.shots}shot" if d.dataset == "sinusoid" else f"{d.ways}way_{d.shots}shot_{d.split}"
    name = f"{d.dataset}_{shape}_{curve.num_tasks}ep"
    out = args.run_dir / "eval" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"overrides": overrides, **curve.to_dict()}, indent=1) + "\n")
    scale, unit = (100, " %") if curve.metric == "accuracy" else (1, "")
    for k, (m, h) in enumerate(zip(curve.mean, curve.ci95, strict=True)):
        print(f"{name}: {curve.metric} after {k} steps = {scale * m:.3f} ± {scale * h:.3f}{unit}")
    print(f"({time.perf_counter() - start:.0f} s; wrote {out})")


if __name__ == "__main__":
    main()
