"""RL² ablation on 10-armed bandits, n = 100: value network, GAE λ, learning rate, trials per update.

Duan et al. 2016 (arXiv:1611.02779), Table 1, row n = 100, k = 10. Every setting changes the preset
``experiments/rl2_bandit_k10_n100.toml`` in one or more keys and trains **from scratch** for the same number
of environment steps (``--env-steps``; the iterations follow from the trials per update). Each run is scored
on a **validation split** of bandit instances — ``--val-instances`` held-out instances drawn with
``run.eval_seed = --val-seed`` (1 by default) — never on the 1000 instances of the report's table (seed 0,
``experiments/rl2_baselines.py``): the score is each instance's total reward of ``--val-trials`` trials
(RL2.trial_returns, actions sampled as in training), averaged, ± the 95% interval over instances. The
interval covers instance noise only; a single training seed per setting does not measure seed noise.

Settings (``--settings``; ``--setting NAME:KEY=VALUE,KEY=VALUE`` adds a combination)::

    preset        the preset (shared GRU, λ = 0.3, Adam 2e-3, 500 trials of 100 pulls per update)
    separate      algo.value_network = "separate" (the paper's and lucaslingle's separate value function)
    lambda0.95    algo.gae_lambda = 0.95 (garage)
    lr3e-4        algo.lr = 3e-4
    batch2000     algo.meta_batch_size = 2000 (200k steps per update, lucaslingle ~240k; 4× fewer updates)

Usage (one torch thread per run; ``--jobs`` runs at a time)::

    OMP_NUM_THREADS=1 python experiments/rl2_ablation.py --env-steps 5e6 --jobs 2 --json ablation.json
    python experiments/rl2_ablation.py --score-only --json ablation.json   # rescore existing runs
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

SETTINGS: dict[str, dict[str, str]] = {
    "preset": {},
    "separate": {"algo.value_network": '"separate"'},
    "lambda0.95": {"algo.gae_lambda": "0.95"},
    "lr3e-4": {"algo.lr": "3e-4"},
    "batch2000": {"algo.meta_batch_size": "2000"},
}
ROOT = Path(__file__).resolve().parent.parent


def parse_setting(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:KEY=VALUE,KEY=VALUE`` → ``(NAME, {KEY: VALUE})`` (values in TOML syntax, as ``--set``)."""
    name, _, body = text.partition(":")
    keys = dict(item.split("=", 1) for item in body.split(",") if item)
    return name, keys


def iterations_for(config: Path, overrides: dict[str, str], env_steps: float) -> int:
    """Iterations that spend ``env_steps`` pulls with the setting's trials per update."""
    raw = tomllib.loads(config.read_text())
    trials = int(overrides.get("algo.meta_batch_size", raw["algo"]["meta_batch_size"]))
    return max(1, math.ceil(env_steps / (trials * int(raw["env"]["max_episode_steps"]))))


def train(
    config: Path, run_dir: Path, overrides: dict[str, str], iterations: int, val_seed: int
) -> subprocess.Popen:
    """Start ``metarl train`` of one setting from scratch (validation instances for its evaluation)."""
    sets = {
        "algo.init_from": '""',
        "run.iterations": str(iterations),
        "run.eval_every": str(iterations),  # one held-out evaluation, at the end
        "run.eval_seed": str(val_seed),  # the validation instances, not the table's
        "run.checkpoint_every": "10",
        **overrides,
    }
    cmd = [sys.executable, "-m", "metarl.cli", "train", str(config), "--run-dir", str(run_dir)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    print(" ".join(cmd), flush=True)
    log = open(run_dir.with_suffix(".log"), "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def score(run_dir: Path, instances: int, trials: int, seed: int) -> dict[str, Any]:
    """Validation score of a run's latest checkpoint, its per-instance returns and its budget (iterations,
    env steps, training wall-clock)."""
    from metarl.evaluation import mean_ci95
    from metarl.run import load_run

    exp = load_run(run_dir, "latest", "cpu")
    tasks = exp.tasks.held_out(instances, seed=seed)
    returns = exp.learner.trial_returns(tasks, trials_per_task=trials, seed=seed)
    mean, ci = mean_ci95(returns)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    wall = sum(r.get("time/rollout_s", 0.0) + r.get("time/update_s", 0.0) for r in rows)
    return {
        "iterations": len(rows),
        "env_steps": last["env_steps"],
        "train_wall_s": wall,
        "val_mean": mean,
        "val_ci95": ci,
        "final_entropy": last.get("losses/entropy", float("nan")),
        "per_instance": returns.tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "rl2_bandit_k10_n100.toml")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), help="names from SETTINGS")
    parser.add_argument("--setting", action="append", default=[], help="NAME:KEY=VALUE,KEY=VALUE (a combo)")
    parser.add_argument("--env-steps", type=float, default=5e6, help="pulls per run (equal for all settings)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one torch thread each)")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "rl2_ablation")
    parser.add_argument("--val-instances", type=int, default=1000)
    parser.add_argument("--val-trials", type=int, default=10)
    parser.add_argument("--val-seed", type=int, default=1, help="validation instances (the table uses 0)")
    parser.add_argument("--score-only", action="store_true", help="score existing runs, train nothing")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if args.val_seed == 0:
        parser.error("--val-seed 0 is the report table's instance set; choose another seed")
    torch.set_num_threads(1)
    chosen = {name: SETTINGS[name] for name in args.settings}
    chosen.update(parse_setting(text) for text in args.setting)
    args.runs_dir.mkdir(parents=True, exist_ok=True)

    if not args.score_only:
        queue = list(chosen.items())
        running: list[tuple[str, subprocess.Popen, float]] = []
        while queue or running:
            while queue and len(running) < args.jobs:
                name, overrides = queue.pop(0)
                iterations = iterations_for(args.config, overrides, args.env_steps)
                proc = train(args.config, args.runs_dir / name, overrides, iterations, args.val_seed)
                running.append((name, proc, time.perf_counter()))
            time.sleep(5)
            for item in list(running):
                name, proc, start = item
                if proc.poll() is not None:
                    running.remove(item)
                    elapsed = time.perf_counter() - start
                    print(f"{name}: exit {proc.returncode} after {elapsed:.0f} s", flush=True)

    results = {}
    for name, overrides in chosen.items():
        run_dir = args.runs_dir / name
        if not (run_dir / "checkpoints" / "latest.pt").is_file():
            print(f"{name}: no checkpoint in {run_dir}", file=sys.stderr)
            continue
        scored = score(run_dir, args.val_instances, args.val_trials, args.val_seed)
        results[name] = {"overrides": overrides, **scored}
    split = f"{args.val_instances} instances (test split, seed {args.val_seed}) × {args.val_trials} trials"
    print(f"\nValidation: {split}\n")
    print(
        "| setting | overrides | iterations | env steps | train wall (s) | final entropy "
        "| validation score ± 95% CI | paired difference to preset ± 95% CI |"
    )
    print("|---|---|---|---|---|---|---|---|")
    from metarl.evaluation import mean_ci95

    reference = results.get("preset", {}).get("per_instance")
    for name, r in results.items():
        keys = ", ".join(f"{k} = {v}" for k, v in r["overrides"].items()) or "—"
        paired = "—"
        if reference is not None and name != "preset":  # same instances: the paired interval is narrower
            diff, ci = mean_ci95(torch.tensor(r["per_instance"]) - torch.tensor(reference))
            paired = f"{diff:+.2f} ± {ci:.2f}"
        print(
            f"| {name} | {keys} | {r['iterations']} | {r['env_steps'] / 1e6:.1f}M | {r['train_wall_s']:.0f} "
            f"| {r['final_entropy']:.3f} | {r['val_mean']:.2f} ± {r['val_ci95']:.2f} | {paired} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
