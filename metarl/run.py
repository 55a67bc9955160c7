"""The orchestrator: seed → run dir → family/sampler/learner from the config → loop → logger.

A run directory holds::

    config.json        the resolved config (every default filled in)
    tasks.json         the held-out evaluation tasks
    metrics.jsonl      one line per meta-iteration
    tb/                TensorBoard events (x-axis: environment steps)
    checkpoints/latest.pt, checkpoints/best.pt
    eval/              written by `metarl evaluate`

``train(..., resume=True)`` continues a killed run from ``checkpoints/latest.pt``: the learner, its
optimiser and every random generator are restored, and whatever the killed run logged after that
checkpoint is dropped, so the final metrics equal those of an uninterrupted run (CPU, same seed). The
config must be the run's own, except that ``run.iterations`` may grow: a finished run is extended.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from envs.base import Task
from metarl import checkpoint
from metarl.algorithms import ALGORITHMS
from metarl.config import ExperimentConfig, diff
from metarl.core import MetaLearner, TaskSampler
from metarl.errors import ConfigError, RunDirError
from metarl.evaluation import AdaptationCurve, evaluate_adaptation
from metarl.logger import Logger, config_table

CONFIG_FILE, TASKS_FILE, METRICS_FILE = "config.json", "tasks.json", "metrics.jsonl"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device 'cuda' requested but CUDA is not available; valid: auto, cpu")
    return torch.device(name)


@dataclass
class Experiment:
    """Everything built from a config: the task sampler, the learner and where they run."""

    config: ExperimentConfig
    device: torch.device
    tasks: TaskSampler
    learner: MetaLearner[Any, Any]

    @classmethod
    def build(cls, config: ExperimentConfig, device: torch.device) -> Experiment:
        if config.run.num_threads:
            torch.set_num_threads(config.run.num_threads)
        spec = ALGORITHMS[config.algo_name]
        tasks, learner = spec.build(config, device)
        return cls(config, device, tasks, learner)

    def held_out_tasks(self, run_dir: Path) -> list[Task]:
        data = json.loads((run_dir / TASKS_FILE).read_text())
        return [self.tasks.task_from_dict(d) for d in data["tasks"]]


def default_run_dir(config: ExperimentConfig) -> Path:
    source = config.env.id if config.env is not None else config.data.dataset
    family = source.replace("metarl/", "").replace(":", "_").replace("/", "_")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{family}__{config.algo_name}__s{config.run.seed}__{stamp}"


def check_run_dir(run_dir: Path, config: ExperimentConfig, resume: bool) -> None:
    """Refuse, before writing anything, a run dir that would be overwritten or resumed wrongly."""
    if not resume:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise RunDirError(
                f"run dir {str(run_dir)!r} already exists and is not empty; "
                "pass --resume to continue it or choose another --run-dir"
            )
        return
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.is_file():
        raise RunDirError(f"cannot resume {str(run_dir)!r}: it holds no {CONFIG_FILE}")
    try:
        saved = json.loads(saved_path.read_text())
    except json.JSONDecodeError:
        raise RunDirError(f"cannot resume {str(run_dir)!r}: {CONFIG_FILE} is corrupted") from None
    # keys the saved config lacks were added to metarl after the run was written: they take their defaults
    changed = [key for key in diff(saved, config.to_dict()) if _has_key(saved, key)]
    # extending the budget, or changing how often it evaluates / checkpoints, leaves every state the run
    # resumes from unchanged
    changed = [key for key in changed if key not in RESUMABLE_CHANGES]
    if config.run.iterations < saved["run"]["iterations"]:
        changed.append("run.iterations")  # a budget is only ever extended
    if changed:
        raise RunDirError(
            f"cannot resume {str(run_dir)!r}: its config differs in {', '.join(changed)}; "
            "resume with the same config (or omit CONFIG to use the run's own)"
        )
    if not (run_dir / "checkpoints" / "latest.pt").is_file():
        raise RunDirError(f"cannot resume {str(run_dir)!r}: it holds no checkpoints/latest.pt")


#: config keys a resumed run may change: its budget (only upwards), evaluation and checkpoint cadence, threads
#: (not the device: learners keep device-bound random generators whose saved state only fits the old one)
RESUMABLE_CHANGES = frozenset({"run.iterations", "run.eval_every", "run.checkpoint_every", "run.num_threads"})


def _has_key(config: dict[str, Any], dotted: str) -> bool:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def train(config: ExperimentConfig, run_dir: Path | None = None, resume: bool = False) -> Path:
    """Meta-train as ``config`` says; returns the run directory."""
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    check_run_dir(run_dir, config, resume)
    device = resolve_device(config.run.device)
    exp = Experiment.build(config, device)
    learner, run = exp.learner, config.run
    ckpt_dir = run_dir / "checkpoints"

    rng = np.random.default_rng(run.seed)  # the task stream of meta-training
    iteration, env_steps = 0, 0
    best = -float("inf")
    if resume:
        state = checkpoint.load(ckpt_dir / "latest.pt")
        learner.load_state_dict(state["learner"])
        rng.bit_generator.state = json.loads(state["task_rng"])
        iteration, env_steps, best = state["iteration"], state["env_steps"], state["best"]
        held_out = exp.held_out_tasks(run_dir)
        (run_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")  # a longer budget
    else:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        held_out = exp.tasks.held_out(run.eval_tasks, seed=run.eval_seed)
        (run_dir / TASKS_FILE).write_text(
            json.dumps({"seed": run.eval_seed, "tasks": [t.to_dict() for t in held_out]}, indent=1)
        )

    logger = Logger(run_dir, resume_from=(iteration, env_steps) if resume else None)
    logger.text("config", config_table(config.to_dict()))
    metric = learner.metric_name
    bar = tqdm(total=run.iterations, initial=iteration, desc="meta-train", unit="it", dynamic_ncols=True)
    while iteration < run.iterations:
        start = time.perf_counter()
        metrics = learner.meta_update(exp.tasks.sample(config.algo.meta_batch_size, split="train", rng=rng))
        steps = int(metrics.pop("env_steps"))
        env_steps += steps
        iteration += 1
        metrics["time/env_steps_per_second"] = steps / max(time.perf_counter() - start, 1e-9)
        if iteration % run.eval_every == 0 or iteration == run.iterations:
            curve = evaluate_adaptation(learner, held_out, run.eval_steps)
            for k, value in enumerate(curve.mean):
                metrics[f"meta_test/{metric}_step_{k}"] = value
            score = learner.selection_score(curve.mean)
            if score > best:
                best = score
                checkpoint.save(ckpt_dir / "best.pt", _state(learner, rng, iteration, env_steps, best))
        logger.log(iteration, env_steps, metrics)
        if iteration % run.checkpoint_every == 0 or iteration == run.iterations:
            checkpoint.save(ckpt_dir / "latest.pt", _state(learner, rng, iteration, env_steps, best))
        bar.set_postfix(_postfix(metrics), refresh=False)
        bar.update(1)
    bar.close()
    logger.close()
    print(f"run finished: {run_dir}")
    print(f"curves:       tensorboard --logdir {run_dir / 'tb'}")
    print(f"evaluate:     metarl evaluate {run_dir}")
    return run_dir


def _state(
    learner: MetaLearner[Any, Any],
    rng: np.random.Generator,
    iteration: int,
    env_steps: int,
    best: float,
) -> dict[str, Any]:
    return {
        "learner": learner.state_dict(),
        "task_rng": json.dumps(rng.bit_generator.state),
        "iteration": iteration,
        "env_steps": env_steps,
        "best": best,
    }


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    """The latest pre/post-adaptation metric (``meta_train/<metric>_{pre,post}_adapt``) for the bar."""
    return {
        suffix.split("_")[0]: f"{value:.3g}"
        for key, value in metrics.items()
        for suffix in ("pre_adapt", "post_adapt")
        if key.startswith("meta_train/") and key.endswith(suffix)
    }


def load_run(
    run_dir: Path, which: str = "latest", device: str | None = None, overrides: Sequence[str] = ()
) -> Experiment:
    """Rebuild a run's learner from its config (with ``--set`` style ``overrides``, e.g. evaluation
    settings) and checkpoint (``latest`` or ``best``)."""
    from metarl.config import resolve

    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise RunDirError(f"{str(run_dir)!r} is not a run dir: it holds no {CONFIG_FILE}")
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError:
        raise RunDirError(f"{str(config_path)!r} is corrupted") from None
    config = resolve(raw, list(overrides))
    exp = Experiment.build(config, resolve_device(device or config.run.device))
    state = checkpoint.load(run_dir / "checkpoints" / f"{which}.pt")
    exp.learner.load_state_dict(state["learner"])
    return exp


def evaluate(
    run_dir: Path,
    split: str = "test",
    num_tasks: int = 40,
    steps: int = 3,
    which: str = "latest",
    device: str | None = None,
) -> tuple[AdaptationCurve, dict[str, Path]]:
    """The adaptation table of a trained run on ``num_tasks`` tasks of ``split``; writes JSON/MD/PNG."""
    from metarl.evaluation import markdown_table, write_report

    exp = load_run(run_dir, which, device)
    seed = exp.config.run.eval_seed
    if split == "test":
        tasks = exp.tasks.held_out(num_tasks, seed=seed)
    else:
        tasks = exp.tasks.sample(num_tasks, split=split, rng=np.random.default_rng(seed))
    curve = evaluate_adaptation(exp.learner, tasks, steps)
    source = exp.config.env.id if exp.config.env is not None else exp.config.data.dataset
    title = f"{exp.config.algo_name} on {source}: {num_tasks} {split} tasks ({which})"
    paths = write_report({exp.config.algo_name: curve}, Path(run_dir) / "eval", f"adaptation_{split}", title)
    print(markdown_table({exp.config.algo_name: curve}))
    return curve, paths
