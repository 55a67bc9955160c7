"""RL² Tables 1 and 2 (Duan et al. 2016, arXiv:1611.02779): our classic baselines (and trained RL² runs)
beside the paper's numbers.

Every cell is the mean over 1000 held-out instances (the family's ``test`` split, seed 0 — the instances
``metarl train`` evaluates on) of each instance's total trial reward, averaged over 10 independent trials of
the instance, ± the half-width of the 95% interval over instances. Tuned
hyperparameters (ε, UCB1's c, the Gittins discount, OTS's sample count) are chosen per cell on 1000 other
instances (``train`` split, seed 1) and printed. ``--runs DIR`` adds the RL² column from the runs
``DIR/bandit_k{k}_n{n}`` and ``DIR/mdp_n{n}`` that exist (their latest checkpoint), evaluated by
``RL2.trial_returns`` on the same instances; ``--reuse`` takes the baselines from an earlier ``--json``::

    python experiments/rl2_baselines.py --bandit-n 10 100 --mdp-n 10 25 --json baselines.json
    python experiments/rl2_baselines.py --runs runs/rl2 --reuse baselines.json --json table.json

``--score RUN [RUN ...]`` scores RL² run directories (e.g. zoo entries) on this table's protocol — the 1000
test instances of the run's own family, 10 trials each, latest checkpoint — and, beside it, on the
validation instances the presets were chosen on (``held_out(1000, seed=1)``, ``rl2_ablation.py``)::

    python experiments/rl2_baselines.py --score experiments/zoo/rl2_bandit_k5_n100
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import envs  # noqa: F401  (registers the families)
from metarl.baselines import bandits, mdps
from metarl.evaluation import mean_ci95

PAPER_BANDITS = {  # (n, k): Random, Gittins, TS, OTS, UCB1, ε-greedy, Greedy, RL²
    (10, 5): (5.0, 6.6, 5.7, 6.5, 6.7, 6.6, 6.6, 6.7),
    (10, 10): (5.0, 6.6, 5.5, 6.2, 6.7, 6.6, 6.6, 6.7),
    (10, 50): (5.1, 6.5, 5.2, 5.5, 6.6, 6.5, 6.5, 6.8),
    (100, 5): (49.9, 78.3, 74.7, 77.9, 78.0, 75.4, 74.8, 78.7),
    (100, 10): (49.9, 82.8, 76.7, 81.4, 82.4, 77.4, 77.1, 83.5),
    (100, 50): (49.8, 85.2, 64.5, 67.7, 84.3, 78.3, 78.0, 84.9),
    (500, 5): (249.8, 405.8, 402.0, 406.7, 405.8, 388.2, 380.6, 401.6),
    (500, 10): (249.0, 437.8, 429.5, 438.9, 437.1, 408.0, 395.0, 432.5),
    (500, 50): (249.6, 463.7, 427.2, 437.6, 457.6, 413.6, 402.8, 438.9),
}
BANDIT_COLUMNS = ("Random", "Gittins", "TS", "OTS", "UCB1", "ε-greedy", "Greedy", "RL²")
PAPER_MDPS = {  # n: Random, PSRL, ε-greedy, Greedy, RL²
    10: (100.1, 138.1, 132.8, 134.8, 156.2),
    25: (250.2, 408.8, 377.3, 368.8, 445.7),
    50: (499.7, 904.4, 823.3, 769.3, 936.1),
    75: (749.9, 1417.1, 1293.9, 1172.9, 1428.8),
    100: (999.4, 1939.5, 1778.2, 1578.5, 1913.7),
}
MDP_COLUMNS = ("Random", "PSRL", "ε-greedy", "Greedy", "RL²", "Greedy-PM")  # Greedy-PM: not in the paper
INSTANCES, TRIALS, TEST_SEED, TUNE_SEED = 1000, 10, 0, 1


def cell(values: np.ndarray | torch.Tensor, paper: float) -> dict[str, float]:
    mean, ci = mean_ci95(torch.as_tensor(values, dtype=torch.float64))
    return {"mean": mean, "ci95": ci, "paper": paper, "rel_diff": (mean - paper) / paper}


def rl2_trial_returns(run_dir: Path, tasks: list) -> np.ndarray | None:
    """RL²'s trial returns on ``tasks`` from a run's latest checkpoint (None if the run is absent)."""
    if not (run_dir / "checkpoints" / "latest.pt").is_file():
        return None
    from metarl.run import load_run

    exp = load_run(run_dir, "latest", "cpu")
    return exp.learner.trial_returns(tasks, trials_per_task=TRIALS, seed=TEST_SEED).numpy()


def score_runs(run_dirs: list[Path]) -> None:
    """Print each run's table-protocol score (:func:`rl2_trial_returns` on the test instances of its own
    family) and its validation score (``rl2_ablation.score``: the instances the presets were chosen on)."""
    from rl2_ablation import score  # the sibling script (experiments/ is on sys.path when run as a script)

    from metarl.config import resolve
    from metarl.run import read_config

    for run_dir in run_dirs:
        start = time.perf_counter()
        env = resolve(read_config(run_dir, "cannot score")).env
        family = gym.make(env.id, **env.kwargs, max_episode_steps=env.max_episode_steps).unwrapped
        test_tasks = family.sample_tasks(INSTANCES, split="test", seed=TEST_SEED)
        table = mean_ci95(torch.as_tensor(rl2_trial_returns(run_dir, test_tasks), dtype=torch.float64))
        validation = score(run_dir, INSTANCES, TRIALS, TUNE_SEED)
        print(
            f"{run_dir} (iteration {validation['iterations']}): table protocol {table[0]:.2f} ± "
            f"{table[1]:.2f}, validation {validation['val_mean']:.2f} ± {validation['val_ci95']:.2f} "
            f"({time.perf_counter() - start:.0f} s)"
        )


def bandit_rows(ns: list[int], ks: list[int], runs: Path | None, cached: dict[str, dict]) -> dict[str, dict]:
    out = {}
    for n in ns:
        for k in ks:
            start = time.perf_counter()
            family = gym.make(f"metarl/Bandit-K{k}-v0", num_pulls=n, max_episode_steps=n).unwrapped
            test = family.sample_tasks(INSTANCES, split="test", seed=TEST_SEED)
            tune_tasks = family.sample_tasks(INSTANCES, split="train", seed=TUNE_SEED)
            probs, tune_probs = (np.array([t.probs for t in ts]) for ts in (test, tune_tasks))
            paper = dict(zip(BANDIT_COLUMNS, PAPER_BANDITS[(n, k)], strict=True))
            row: dict[str, dict] = {k_: v for k_, v in cached.get(f"n={n}, k={k}", {}).items() if k_ != "RL²"}
            for strategy in bandits.strategies(n) if not row else []:
                param = bandits.tune(strategy, tune_probs, n, seed=TUNE_SEED)
                repeated = np.repeat(probs, TRIALS, axis=0)
                values = bandits.evaluate(strategy, param, repeated, n, seed=TEST_SEED)
                values = values.reshape(INSTANCES, TRIALS).mean(1)
                row[strategy.name] = {**cell(values, paper[strategy.name]), "param": param}
            rl2 = rl2_trial_returns(runs / f"bandit_k{k}_n{n}", test) if runs else None
            if rl2 is not None:
                row["RL²"] = cell(rl2, paper["RL²"])
            out[f"n={n}, k={k}"] = row
            print(f"bandits n={n} k={k}: {time.perf_counter() - start:.0f}s", flush=True)
    return out


def mdp_rows(ns: list[int], runs: Path | None, cached: dict[str, dict]) -> dict[str, dict]:
    out = {}
    family = gym.make("metarl/TabularMDP-v0").unwrapped
    horizon = family.episode_length
    test = family.sample_tasks(INSTANCES, split="test", seed=TEST_SEED)
    tune_tasks = family.sample_tasks(INSTANCES, split="train", seed=TUNE_SEED)
    tables = [
        (np.array([t.mean_rewards for t in ts]), np.array([t.transitions for t in ts]))
        for ts in (test, tune_tasks)
    ]
    for n in ns:
        start = time.perf_counter()
        paper = dict(zip(MDP_COLUMNS, PAPER_MDPS[n] + (float("nan"),), strict=True))
        row: dict[str, dict] = {k: v for k, v in cached.get(f"n={n}", {}).items() if k != "RL²"}
        for strategy in mdps.STRATEGIES if not row else ():
            eps = mdps.tune(strategy, *tables[1], n, horizon, seed=TUNE_SEED)
            repeated = [np.repeat(table, TRIALS, axis=0) for table in tables[0]]
            rng = np.random.default_rng(TEST_SEED)
            values = mdps.run_trials(strategy.model, eps, *repeated, n, horizon, rng)
            values = values.reshape(INSTANCES, TRIALS).mean(1)
            row[strategy.name] = {
                **cell(values, paper[strategy.name]),
                "param": eps if len(strategy.grid) > 1 else None,
            }
        rl2 = rl2_trial_returns(runs / f"mdp_n{n}", test) if runs else None
        if rl2 is not None:
            row["RL²"] = cell(rl2, paper["RL²"])
        out[f"n={n}"] = row
        print(f"MDPs n={n}: {time.perf_counter() - start:.0f}s", flush=True)
    return out


def markdown(rows: dict[str, dict], columns: tuple[str, ...], title: str) -> str:
    lines = [f"### {title}", "", "| cell | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        cells = []
        for col in columns:
            if col not in row:
                cells.append("— (paper " + _paper_of(name, col, columns) + ")")
                continue
            c = row[col]
            tuned = f" [{c['param']:g}]" if c.get("param") is not None else ""
            versus = (
                "" if c["paper"] != c["paper"] else f" (paper {c['paper']:g}, {100 * c['rel_diff']:+.1f}%)"
            )
            cells.append(f"{c['mean']:.1f} ± {c['ci95']:.1f}{tuned}{versus}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paper_of(name: str, col: str, columns: tuple[str, ...]) -> str:
    parts = dict(p.split("=") for p in name.replace(" ", "").split(","))
    n = int(parts["n"])
    values = PAPER_BANDITS[(n, int(parts["k"]))] if "k" in parts else PAPER_MDPS[n] + (float("nan"),)
    return f"{values[columns.index(col)]:g}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bandit-n", type=int, nargs="*", default=[10, 100], choices=[10, 100, 500])
    parser.add_argument("--bandit-k", type=int, nargs="*", default=[5, 10, 50], choices=[5, 10, 50])
    parser.add_argument("--mdp-n", type=int, nargs="*", default=[10, 25], choices=list(PAPER_MDPS))
    parser.add_argument("--runs", type=Path, default=None, help="directory of RL² runs to add (runs/rl2)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    parser.add_argument(
        "--reuse", type=Path, default=None, help="take the baselines' cells from this earlier --json output"
    )
    parser.add_argument("--score", type=Path, nargs="+", help="only score these RL² run directories")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.score:
        score_runs(args.score)
        return
    cached = json.loads(args.reuse.read_text()) if args.reuse else {"bandits": {}, "mdps": {}}
    results = {
        "bandits": bandit_rows(args.bandit_n, args.bandit_k, args.runs, cached["bandits"]),
        "mdps": mdp_rows(args.mdp_n, args.runs, cached["mdps"]),
    }
    print()
    print(
        markdown(
            results["bandits"], BANDIT_COLUMNS, "Table 1: Bernoulli bandits, total reward of an n-pull trial"
        )
    )
    print()
    print(
        markdown(
            results["mdps"], MDP_COLUMNS, "Table 2: random tabular MDPs, total reward of an n-episode trial"
        )
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
