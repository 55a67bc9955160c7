"""Data-parallel meta-training (``metarl train --nproc N``): iteration time on 1 rank vs 2 ranks, one run.

For each preset — the README quickstart (MAML with an Adam-VPG outer loop on Navigation2D), MAML-TRPO on
HalfCheetahVel at the paper's sizes (40 tasks × 20 episodes × 200 steps, Finn et al. 2017, arXiv:1703.03400)
and RL² on the 10-armed bandit preset with trials of n = 100 pulls (Duan et al. 2016, arXiv:1611.02779) —
it trains ``--iterations`` meta-iterations as ``metarl train PRESET`` (1 rank × 1 thread) and as
``metarl train PRESET --nproc 2`` (2 ranks × 1 thread each), alternately, and reads the trainer's own
per-iteration timings from ``metrics.jsonl``: the wall time of an iteration (sampling, the meta-update and
the collectives; the first iteration, a warm-up, is left out; held-out evaluations are not in it) and the
sampling rate (environment steps per second of sampling, over all ranks). For MuJoCo presets it also prints
the physical limit of the fast path, ``ranks × single-core raw mj_step rate ÷ frame_skip``
(``experiments/benchmark_envs.py``), and the share of it the ranks reach::

    OMP_NUM_THREADS=1 python experiments/benchmark_distributed.py --iterations 4

``--only quickstart rl2`` runs a subset. Numbers on a machine shared with other work are depressed (print
``uptime`` next to them); the speed-up needs as many idle cores as ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: name -> (preset, extra overrides, MuJoCo env id for the fast path's limit or None)
PRESETS: dict[str, tuple[str, list[str], str | None]] = {
    "quickstart": ("experiments/quickstart.toml", [], None),
    "halfcheetah_vel_trpo": ("experiments/maml_trpo_halfcheetah_vel.toml", [], "metarl/HalfCheetahVel-v0"),
    # the preset as it is (session 6: separate value GRU, λ = 0.95; session 7: the fused GRU kernel)
    "rl2_bandit_k10_n100": ("experiments/rl2_bandit_k10_n100.toml", [], None),
}


def train(
    preset: str, overrides: list[str], iterations: int, nproc: int, run_dir: Path
) -> list[dict[str, float]]:
    """Train ``iterations`` meta-iterations of ``preset`` on ``nproc`` ranks; returns metrics.jsonl's rows."""
    settings = [
        f"run.iterations={iterations}",
        f"run.eval_every={iterations}",  # one (small) held-out evaluation, at the end, outside the timings
        f"run.checkpoint_every={iterations}",
        "run.eval_tasks=2",
        "run.eval_steps=1",
        "run.num_threads=1",
        *overrides,
    ]
    command = [sys.executable, "-m", "metarl", "train", preset, "--run-dir", str(run_dir), "--device", "cpu"]
    command += [arg for s in settings for arg in ("--set", s)]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def timings(rows: list[dict[str, float]]) -> tuple[float, float]:
    """Median seconds per iteration and sampling env steps per second, after the warm-up iteration."""
    steps = [b["env_steps"] - a["env_steps"] for a, b in zip([{"env_steps": 0.0}, *rows], rows, strict=False)]
    rate_key = next(k for k in rows[0] if k.endswith("_per_second"))
    measured = list(zip(steps, rows, strict=True))[1:] or list(zip(steps, rows, strict=True))
    seconds = statistics.median(s / row[rate_key] for s, row in measured)
    key = "time/sampling_s" if "time/sampling_s" in rows[0] else "time/rollout_s"  # MAML-RL / RL²
    sampling = [s / row[key] for s, row in measured if row.get(key)]
    return seconds, statistics.median(sampling) if sampling else float("nan")


def mujoco_limit(env_id: str, ranks: int) -> float:
    """``ranks ×`` the single-core raw ``mj_step`` rate ÷ frame_skip (benchmark_envs.raw_mj_step_rate)."""
    import importlib.util

    path = ROOT / "experiments" / "benchmark_envs.py"
    spec = importlib.util.spec_from_file_location("benchmark_envs", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]  (its dataclasses look themselves up there)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    raw, frame_skip = module.raw_mj_step_rate(env_id, 200, 2.0, 0, 3)
    return ranks * raw / frame_skip


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--iterations", type=int, default=4, help="meta-iterations per run (default: 4)")
    parser.add_argument("--only", nargs="*", choices=list(PRESETS), help="presets to run (default: all)")
    parser.add_argument("--nproc", type=int, default=2, help="ranks of the data-parallel run (default: 2)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
    lines = [
        f"| preset | 1 rank s/iter | {args.nproc} ranks s/iter | speed-up | sampling steps/s 1 rank | "
        f"sampling steps/s {args.nproc} ranks |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or list(PRESETS):
            preset, overrides, mujoco_id = PRESETS[name]
            one = timings(train(preset, overrides, args.iterations, 1, Path(tmp) / f"{name}_1"))
            many = timings(train(preset, overrides, args.iterations, args.nproc, Path(tmp) / f"{name}_n"))
            lines.append(
                f"| {name} | {one[0]:.2f} | {many[0]:.2f} | {one[0] / many[0]:.2f}x | {one[1]:,.0f} | "
                f"{many[1]:,.0f} |"
            )
            print(lines[-1], flush=True)
            if mujoco_id is not None:
                limit = mujoco_limit(mujoco_id, args.nproc)
                print(
                    f"  {mujoco_id}: fast-path limit {limit:,.0f} steps/s on {args.nproc} cores; "
                    f"{args.nproc} ranks reach {many[1] / limit:.2f} of it"
                )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
