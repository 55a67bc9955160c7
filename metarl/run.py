"""The orchestrator: seed → run dir → family/sampler/learner from the config → loop → logger.

A run directory holds::

    config.json        the resolved config (every default filled in)
    tasks.json         the held-out evaluation tasks
    metrics.jsonl      one line per meta-iteration
    tb/                TensorBoard events (x-axis: environment steps)
    checkpoints/latest.pt, checkpoints/best.pt
    eval/              written by `metarl evaluate`
    amendments.jsonl   config changes made by `metarl train --resume --amend` (only if any)

    .lock              the writer lock (flock; holds the writer's PID)

``train(..., resume=True)`` continues a killed run from ``checkpoints/latest.pt``: the learner, its
optimiser and every random generator are restored, and whatever the killed run logged after that
checkpoint is dropped, so the final metrics equal those of an uninterrupted run (CPU, same seed). The
config must be the run's own, except that ``run.iterations`` may grow (a finished run is extended) and the
evaluation / checkpoint cadence and thread count may change. Evaluation reseeds the learner's generators
(:func:`metarl.core.evaluation_randomness`), so the cadence never changes training. ``amend=True``
(``--amend``) continues a run under other values of its other keys too — a step-size schedule changed
between stages, say — and records each change in ``amendments.jsonl``; such a run is no longer equal to an
uninterrupted run of either config, which is what the file says.

Reliability: one writer per run dir (an OS lock), every file written atomically, every check of a resume
done before anything changes, a checkpoint at iteration 0, and a stop with exit code 3 at the first
non-finite value (README, "Reliability").

Data-parallel (``metarl train --nproc N`` / torchrun, :mod:`metarl.distributed`): every rank draws the same
meta-batch and trains on its slice; rank 0 alone writes the run dir, metrics are reduced over ranks, the
held-out evaluation is sharded and gathered, and checkpoints hold every rank's generator states.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import re
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
from metarl import atomic, budget, checkpoint, distributed
from metarl.algorithms import ALGORITHMS
from metarl.config import ExperimentConfig, diff
from metarl.core import MetaLearner, TaskSampler
from metarl.errors import (
    CheckpointError,
    ConfigError,
    MetarlError,
    NonFiniteError,
    RunDirError,
    RunLockedError,
)
from metarl.evaluation import AdaptationCurve, evaluate_sharded
from metarl.families import tasks_document, tasks_from_document
from metarl.logger import Logger, config_table, rows_up_to

CONFIG_FILE, TASKS_FILE, METRICS_FILE = "config.json", "tasks.json", "metrics.jsonl"
AMENDMENTS_FILE = "amendments.jsonl"


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
        return tasks_from_document(data, self.tasks)


def default_run_dir(config: ExperimentConfig) -> Path:
    source = config.env.id if config.env is not None else config.data.dataset
    family = source.replace("metarl/", "").replace(":", "_").replace("/", "_")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{family}__{config.algo_name}__s{config.run.seed}__{stamp}"


def _is_empty(run_dir: Path) -> bool:
    """No entries but what a writer killed before its first file leaves: the lock and temporaries."""
    return all(p.name == LOCK_FILE or p.name.endswith(atomic.TMP_SUFFIX) for p in run_dir.iterdir())


def check_run_dir(run_dir: Path, config: ExperimentConfig, resume: bool, amend: bool = False) -> list[str]:
    """Refuse, before writing anything, a run dir that would be overwritten or resumed wrongly; returns the
    keys an amended resume (``amend``) changes."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run dir {str(run_dir)!r} exists and is not a directory")
    if not resume:
        if run_dir.exists() and not _is_empty(run_dir):
            writer = _writer_pid(run_dir)
            if writer is not None:
                raise RunLockedError(
                    f"run dir {str(run_dir)!r} is being written by another metarl process (PID {writer}); "
                    "choose another --run-dir"
                )
            raise RunDirError(
                f"run dir {str(run_dir)!r} already exists and is not empty; "
                "pass --resume to continue it or choose another --run-dir"
            )
        return []
    saved = read_config(run_dir, "cannot resume")
    # keys the saved config lacks were added to metarl after the run was written: they take their defaults
    changed = [key for key in diff(saved, config.to_dict()) if _has_key(saved, key)]
    # extending the budget, or changing how often it evaluates / checkpoints, leaves every state the run
    # resumes from unchanged
    changed = [key for key in changed if key not in RESUMABLE_CHANGES]
    saved_iterations = saved.get("run", {}).get("iterations") if isinstance(saved.get("run"), dict) else None
    if isinstance(saved_iterations, int) and config.run.iterations < saved_iterations:
        changed.append("run.iterations")  # a budget is only ever extended
    fixed = [key for key in changed if key in UNAMENDABLE]
    if fixed or (changed and not amend):
        keys = fixed or changed
        how = (
            "these keys define the run's task streams, held-out tasks and generators, and are never amended"
            if fixed
            else "resume with the same config (or omit CONFIG to use the run's own), or pass --amend to "
            f"continue under the new values (recorded in {AMENDMENTS_FILE})"
        )
        raise RunDirError(f"cannot resume {str(run_dir)!r}: its config differs in {', '.join(keys)}; {how}")
    return changed


def _record_amendments(
    run_dir: Path, old: dict[str, Any], new: dict[str, Any], keys: Sequence[str], iteration: int
) -> None:
    """Append one line per amended key to ``amendments.jsonl`` (atomically: the file is rewritten whole)."""
    path = run_dir / AMENDMENTS_FILE
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    stamp = datetime.now().isoformat(timespec="seconds")
    for key in keys:
        before, after = _value_at(old, key), _value_at(new, key)
        row = {"iteration": iteration, "key": key, "old": before, "new": after, "time": stamp}
        lines.append(json.dumps(row) + "\n")
        print(f"note: {key} {row['old']!r} -> {row['new']!r} from iteration {iteration} (--amend, {path})")
    atomic.write_text(path, "".join(lines))


def read_config(run_dir: Path, what: str) -> dict[str, Any]:
    """The raw ``config.json`` of a run dir (a JSON object), or a one-line :class:`RunDirError`."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"{what} {str(run_dir)!r}: it holds no {CONFIG_FILE}")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunDirError(f"{what} {str(run_dir)!r}: {CONFIG_FILE} is corrupted") from None
    if not isinstance(saved, dict):
        raise RunDirError(f"{what} {str(run_dir)!r}: {CONFIG_FILE} is not a config (a JSON object)")
    return saved


def require_trust(raw: dict[str, Any], source: Path, trust_code: bool) -> None:
    """Refuse a config read from a run dir (``source``) that would import a user's module, unless the user
    passed ``--trust-code``: a run dir from elsewhere must not run code just by being evaluated or resumed.

    Registered ids (``metarl/...``) import nothing outside metarl; ``env.id = "module:Class"`` (or
    ``"module:EnvId"``) imports ``module``.
    """
    env = raw.get("env")
    env_id = env.get("id") if isinstance(env, dict) else None
    if trust_code or not isinstance(env_id, str) or ":" not in env_id:
        return
    import gymnasium as gym

    if env_id in gym.registry:
        return
    module = env_id.partition(":")[0]
    raise RunDirError(
        f"{str(source)!r} names env.id {env_id!r}: using it would import the Python module {module!r}; "
        "pass --trust-code if you trust this run dir"
    )


#: config keys a resumed run may change: its budget (only upwards), evaluation and checkpoint cadence, threads
#: (not the device: learners keep device-bound random generators whose saved state only fits the old one).
#: Evaluation draws from its own reseeded generators (``core.evaluation_randomness``), so the cadences leave
#: training bit for bit the same; a different thread count, or RL²'s GRU kernel (``algo.fused_gru``: the fused
#: CPU kernel or ``nn.GRU``, equal to float rounding), may change floating-point results (documented as not
#: exact).
RESUMABLE_CHANGES = frozenset(
    {
        "run.iterations",
        "run.eval_every",
        "run.eval_blocks",
        "run.checkpoint_every",
        "run.num_threads",
        "algo.fused_gru",
    }
)
#: keys no ``--amend`` changes: the meta-training task stream and the generators' device (``run.seed``,
#: ``run.device``), the held-out tasks in ``tasks.json`` (``run.eval_tasks``, ``run.eval_seed``), the learner
#: (``algo.name``) and the task family (``env.id``, ``data.dataset``).
UNAMENDABLE = frozenset(
    {"run.seed", "run.device", "run.eval_tasks", "run.eval_seed", "algo.name", "env.id", "data.dataset"}
)
LOCK_FILE = ".lock"


_MISSING = object()


def _value_at(config: dict[str, Any], dotted: str) -> Any:
    """The value of a dotted key (``"algo.lr"``) in a config dict, or ``_MISSING``."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _has_key(config: dict[str, Any], dotted: str) -> bool:
    return _value_at(config, dotted) is not _MISSING


def lock_run_dir(run_dir: Path) -> int:
    """Take the run dir's writer lock (``flock`` on ``run_dir/.lock``) and return its file descriptor.

    The kernel releases it when the process exits, however it dies. A second writer gets a one-line
    :class:`RunLockedError` naming the PID that holds it. The PID is written into the file by
    :func:`_claim_lock` once every check of a resume has passed, so a refused resume changes nothing.
    """
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        raise RunLockedError(
            f"run dir {str(run_dir)!r} is being written by another metarl process (PID {holder}); "
            "wait for it to finish or stop it, then resume"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _writer_pid(run_dir: Path) -> str | None:
    """The PID of the process holding ``run_dir``'s lock, or ``None`` (probed read-only: changes nothing)."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _lock_holder(fd)
    finally:
        os.close(fd)  # closing releases a lock this probe took
    return None


def _claim_lock(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _lock_holder(fd: int) -> str:
    """The PID holding the flock on ``fd``'s file: from ``/proc/locks`` (Linux), else the file's content."""
    inode = os.fstat(fd).st_ino
    try:
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
                continue
            if fields[5].rsplit(":", 1)[-1] == str(inode):
                return fields[4]
    except OSError:
        pass
    try:
        return os.pread(fd, 32, 0).decode().strip() or "unknown"
    except (OSError, UnicodeDecodeError):
        return "unknown"


def _load_learner(learner: MetaLearner[Any, Any], path: Path) -> tuple[dict[str, Any], np.random.Generator]:
    """Load ``path`` into ``learner`` and rebuild the task generator; every way the checkpoint can fail to
    fit (missing keys, shapes, generator state, non-finite tensors) is a one-line error."""
    state = checkpoint.load(path)
    try:
        learner.load_state_dict(state["learner"])
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(state["task_rng"])
        int(state["iteration"]), int(state["env_steps"]), float(state["best"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit this run's learner ({reason[:160]})"
        ) from None
    bad = checkpoint.first_non_finite(state["learner"])
    if bad is not None:
        raise NonFiniteError(f"checkpoint {str(path)!r} holds non-finite values ({bad}); it cannot be used")
    return state, rng


def _held_out_from_file(exp: Experiment, run_dir: Path) -> list[Task]:
    path = run_dir / TASKS_FILE
    if not path.is_file():
        raise RunDirError(f"run dir {str(run_dir)!r}: {TASKS_FILE} is missing")
    try:
        return exp.held_out_tasks(run_dir)
    except MetarlError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"run dir {str(run_dir)!r}: {TASKS_FILE} is corrupted ({exc})") from None


def _hint(config: ExperimentConfig) -> str:
    keys = [k for k in ("outer_lr", "inner_lr", "lr") if hasattr(config.algo, k)]
    if hasattr(config.algo, "init_std"):
        keys.append("init_std")
    return "lower " + " or ".join(f"algo.{k}" for k in keys) if keys else "lower the learning rates"


def _check_finite(
    metrics: dict[str, float], learner: MetaLearner[Any, Any], iteration: int, config: ExperimentConfig
) -> None:
    """Stop at the first NaN / infinity in a metric (losses, returns) or in the learner's state (parameters,
    optimiser moments): :class:`NonFiniteError`, exit code 3."""
    bad = next((("metric", k) for k, v in metrics.items() if not math.isfinite(v)), None)
    if bad is None:
        key = checkpoint.first_non_finite(learner.state_dict())
        bad = None if key is None else ("parameter or optimiser state", key)
    if bad is not None:
        raise NonFiniteError(
            f"iteration {iteration}: non-finite {bad[0]} ({bad[1]}); the run stopped with its last finite "
            f"state in checkpoints/latest.pt; hint: {_hint(config)}"
        )


def _diverged(exc: Exception, learner: MetaLearner[Any, Any]) -> bool:
    """Whether an exception raised by ``meta_update`` comes from non-finite numbers."""
    if isinstance(exc, FloatingPointError):
        return True
    if re.search(r"\b(nan|inf|infinity|non-?finite)\b", str(exc), flags=re.IGNORECASE):
        return True
    return checkpoint.first_non_finite(learner.state_dict()) is not None


def train(
    config: ExperimentConfig, run_dir: Path | None = None, resume: bool = False, amend: bool = False
) -> Path:
    """Meta-train as ``config`` says; returns the run directory.

    Every check happens before the run dir changes: the config (and, on resume, its difference to the
    run's), the memory a meta-batch needs, the run dir's lock, and on resume the checkpoint (it must load
    into the learner), ``tasks.json`` and ``metrics.jsonl``. A new run writes ``checkpoints/latest.pt`` at
    iteration 0, so a run killed at any point resumes. Raises :class:`NonFiniteError` (exit 3) at the first
    non-finite metric or parameter, leaving the metrics and checkpoints of the last finite iteration.
    ``amend`` lets a resume change the config's other keys (:func:`check_run_dir`, ``amendments.jsonl``).
    """
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    joined = not distributed.in_group()  # a caller that joined the process group (compare) keeps it
    device = distributed.init(resolve_device(config.run.device))  # this rank's GPU under torchrun
    # the run records the device it runs on ("auto" resolved): a resume elsewhere is a device change
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, device=device.type))
    _check_world_size(config)
    if not distributed.is_main():  # data-parallel: rank 0 writes the run dir, the other ranks follow it
        _follow(config, device, run_dir, resume)
        if joined:
            distributed.destroy()
        return run_dir
    amended = check_run_dir(run_dir, config, resume, amend)
    source = config.env.id if config.env is not None else config.data.dataset
    unit = "env steps" if config.env is not None else "examples"
    ranks = f" on {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
    print(
        f"metarl train: run dir {run_dir}, family {source}, learner {config.algo_name}, "
        f"device {device}{ranks}, "
        f"{config.run.iterations} iterations of {config.algo.meta_batch_size} tasks ({unit} counted from "
        "the first iteration)"
    )
    exp = Experiment.build(config, device)
    budget.check(config, exp.learner, device)
    learner, run = exp.learner, config.run
    ckpt_dir = run_dir / "checkpoints"
    latest = ckpt_dir / "latest.pt"

    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(run_dir)
    try:
        rng = np.random.default_rng(run.seed)  # the task stream of meta-training
        iteration, env_steps, best = 0, 0, -float("inf")
        if not resume and not _is_empty(run_dir):  # another writer got here between the check and the lock
            check_run_dir(run_dir, config, resume=False)
        started = resume and latest.is_file()  # else: a run killed before its first checkpoint starts over
        if resume:
            saved_threads = read_config(run_dir, "cannot resume").get("run", {}).get("num_threads")
            if saved_threads not in (None, run.num_threads):
                print(
                    f"note: run.num_threads {saved_threads} -> {run.num_threads}: the resumed run is not "
                    "bit-identical to an uninterrupted one (floating-point reductions depend on threads)"
                )
        if started:
            state, rng = _load_learner(learner, latest)
            _check_saved_world_size(state, latest)
            iteration, env_steps, best = (
                int(state["iteration"]),
                int(state["env_steps"]),
                float(state["best"]),
            )
            held_out = _held_out_from_file(exp, run_dir)
            if (run_dir / METRICS_FILE).exists():
                rows_up_to(run_dir / METRICS_FILE, iteration)  # every line parses, or refuse
        else:
            held_out = exp.tasks.held_out(run.eval_tasks, seed=run.eval_seed)
        # every check passed: from here on the run dir changes
        _claim_lock(lock)
        atomic.remove_stale_temporaries(run_dir)
        if amended:
            old = read_config(run_dir, "cannot resume")
            _record_amendments(run_dir, old, config.to_dict(), amended, iteration)
        saved = json.dumps(config.to_dict(), indent=2) + "\n"
        config_path = run_dir / CONFIG_FILE
        if not config_path.is_file() or config_path.read_text() != saved:
            atomic.write_text(config_path, saved)  # a longer budget, a new cadence
        if not started:
            atomic.write_text(
                run_dir / TASKS_FILE, json.dumps(tasks_document(held_out, run.eval_seed), indent=1)
            )
            ckpt_dir.mkdir(exist_ok=True)
        distributed.broadcast_object(started)  # every check passed: the other ranks go on (_follow)
        if not started:
            ranks = _rank_generators(learner)
            checkpoint.save(latest, _state(learner, rng, iteration, env_steps, best, ranks))
        _loop(exp, run_dir, held_out, rng, iteration, env_steps, best, resumed=resume)
    finally:
        os.close(lock)
    if joined:
        distributed.destroy()
    print(f"run finished: {run_dir}")
    print(f"curves:       tensorboard --logdir {run_dir / 'tb'}")
    print(f"evaluate:     metarl evaluate {run_dir}")
    return run_dir


def _loop(
    exp: Experiment,
    run_dir: Path,
    held_out: list[Task],
    rng: np.random.Generator,
    iteration: int,
    env_steps: int,
    best: float,
    resumed: bool,
) -> None:
    """Meta-train from ``iteration`` to ``run.iterations``: update, check finiteness, evaluate, log,
    checkpoint."""
    config, learner, run = exp.config, exp.learner, exp.config.run
    ckpt_dir = run_dir / "checkpoints"
    main = distributed.is_main()  # data-parallel: every rank trains, rank 0 alone logs and checkpoints
    logger = Logger(run_dir, resume_from=(iteration, env_steps) if resumed else None) if main else None
    bar = tqdm(
        total=run.iterations,
        initial=iteration,
        desc="meta-train",
        unit="it",
        dynamic_ncols=True,
        disable=not main,
    )
    say = bar.write if main else (lambda line: None)
    try:
        if logger is not None:
            logger.text("config", config_table(config.to_dict()))
        metric = learner.metric_name
        while iteration < run.iterations:
            start = time.perf_counter()
            # every rank draws the same meta-batch from the run's task stream and trains on its slice
            tasks = distributed.shard(exp.tasks.sample(config.algo.meta_batch_size, split="train", rng=rng))
            try:
                metrics = learner.meta_update(tasks)
            except (FloatingPointError, ValueError, RuntimeError) as exc:
                # a learner's own finiteness check, numpy with seterr(all="raise"), torch's anomaly mode, or a
                # numerical routine refusing a NaN input (e.g. a trust-region step): the divergence path
                if not _diverged(exc, learner):
                    raise
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                raise NonFiniteError(
                    f"iteration {iteration + 1}: non-finite values ({reason}); the run stopped with its last "
                    f"finite state in checkpoints/latest.pt; hint: {_hint(config)}"
                ) from None
            metrics = distributed.reduce_metrics(metrics)  # env steps summed, the rest averaged over ranks
            _check_finite(metrics, learner, iteration + 1, config)
            steps = int(metrics.pop("env_steps"))
            env_steps += steps
            iteration += 1
            rate = "env_steps" if config.env is not None else "examples"  # few-shot: labelled examples seen
            metrics[f"time/{rate}_per_second"] = steps / max(time.perf_counter() - start, 1e-9)
            if iteration == 1:
                unit = "env steps" if config.env is not None else "examples"
                say(f"planned: {steps} {unit} per iteration, {steps * run.iterations:,} in total")
            if iteration % run.eval_every == 0 or iteration == run.iterations:
                # never touches the training streams; the same numbers under every world size
                final = iteration == run.iterations  # the long one: show its progress
                curve = evaluate_sharded(
                    learner, held_out, run.eval_steps, run.eval_seed, run.eval_blocks, progress=final and main
                )
                for k, value in enumerate(curve.mean):
                    metrics[f"meta_test/{metric}_step_{k}"] = value
                shown = " -> ".join(f"{m:.4g}" for m in curve.mean)
                last = len(curve.mean) - 1
                say(f"iteration {iteration}: held-out {metric} after 0..{last} steps: {shown}")
                score = learner.selection_score(curve.mean)
                if score > best:  # a NaN score is never the best
                    best = score
                    ranks = _rank_generators(learner)
                    if main:
                        state = _state(learner, rng, iteration, env_steps, best, ranks)
                        checkpoint.save(ckpt_dir / "best.pt", state)
            if logger is not None:
                logger.log(iteration, env_steps, metrics)
            if iteration % run.checkpoint_every == 0 or iteration == run.iterations:
                ranks = _rank_generators(learner)
                if main:
                    state = _state(learner, rng, iteration, env_steps, best, ranks)
                    checkpoint.save(ckpt_dir / "latest.pt", state)
            bar.set_postfix(_postfix(metrics), refresh=False)
            bar.update(1)
    finally:
        bar.close()
        if logger is not None:
            logger.close()


def _state(
    learner: MetaLearner[Any, Any],
    rng: np.random.Generator,
    iteration: int,
    env_steps: int,
    best: float,
    rank_generators: list[list[Any]] | None = None,
) -> dict[str, Any]:
    """A checkpoint; a data-parallel run's also holds every rank's generator states (``rank_generators``,
    in rank order) and its world size, so that each rank resumes its own random streams."""
    state = {
        "learner": learner.state_dict(),
        "task_rng": json.dumps(rng.bit_generator.state),
        "iteration": iteration,
        "env_steps": env_steps,
        "best": best,
    }
    if rank_generators is not None:
        state.update(world_size=len(rank_generators), rank_generators=rank_generators)
    return state


# -- data-parallel training (metarl.distributed) -----------------------------------------------------------
def _check_world_size(config: ExperimentConfig) -> None:
    """Refuse a meta-batch the ranks cannot share equally, or fewer held-out tasks than ranks (every rank)."""
    distributed.check_divisible(config.algo.meta_batch_size, "algo.meta_batch_size")
    if config.run.eval_tasks < distributed.world_size():
        raise ConfigError(
            f"run.eval_tasks = {config.run.eval_tasks} must be at least the number of processes "
            f"({distributed.world_size()})"
        )


def _rank_generators(learner: MetaLearner[Any, Any]) -> list[list[Any]] | None:
    """Every rank's generator states (a collective: all ranks call it), or ``None`` in a single process."""
    if distributed.world_size() == 1:
        return None
    return distributed.all_gather_object(distributed.generator_states(learner.generators()))


def _check_saved_world_size(state: dict[str, Any], path: Path) -> None:
    """A checkpoint resumes exactly only under the world size that wrote it (each rank's own streams)."""
    saved, now = int(state.get("world_size", 1)), distributed.world_size()
    if saved != now:
        how = "without --nproc" if saved == 1 else f"with --nproc {saved} (torchrun --nproc-per-node {saved})"
        raise CheckpointError(
            f"checkpoint {str(path)!r} was written by {saved} process(es), this run has {now}: "
            f"resume it {how}"
        )


def _follow(config: ExperimentConfig, device: torch.device, run_dir: Path, resume: bool) -> Path:
    """A rank other than 0: build the learner with its own random streams, wait for rank 0 to prepare the run
    dir, load the checkpoint rank 0 resumes from (the rank's own generator states), then train its shards."""
    exp = Experiment.build(config, device)
    distributed.reseed_for_rank(exp.learner.generators(), config.run.seed)
    started = distributed.broadcast_object(None)  # rank 0 checked and prepared the run dir
    rng = np.random.default_rng(config.run.seed)
    iteration, env_steps, best = 0, 0, -float("inf")
    held_out = exp.tasks.held_out(config.run.eval_tasks, seed=config.run.eval_seed)
    if not started:
        _rank_generators(exp.learner)  # rank 0's checkpoint at iteration 0
    else:
        latest = run_dir / "checkpoints" / "latest.pt"
        state, rng = _load_learner(exp.learner, latest)
        own = state["rank_generators"][distributed.rank()]
        distributed.set_generator_states(exp.learner.generators(), own)  # the rank's own streams
        iteration, env_steps, best = int(state["iteration"]), int(state["env_steps"]), float(state["best"])
        held_out = _held_out_from_file(exp, run_dir)
    _loop(exp, run_dir, held_out, rng, iteration, env_steps, best, resumed=resume)
    return run_dir


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    """The latest pre/post-adaptation metric (``meta_train/<metric>_{pre,post}_adapt``) for the bar."""
    return {
        suffix.split("_")[0]: f"{value:.3g}"
        for key, value in metrics.items()
        for suffix in ("pre_adapt", "post_adapt")
        if key.startswith("meta_train/") and key.endswith(suffix)
    }


def load_run(
    run_dir: Path,
    which: str = "latest",
    device: str | None = None,
    overrides: Sequence[str] = (),
    trust_code: bool = False,
) -> Experiment:
    """Rebuild a run's learner from its config (with ``--set`` style ``overrides``, e.g. evaluation
    settings) and checkpoint (``latest`` or ``best``).

    Reads only (no lock: a run may be training). A config naming a user module (``env.id =
    "module:Class"``) is refused unless ``trust_code``; a checkpoint that does not fit the learner is a
    :class:`CheckpointError`, one holding NaN / infinity a :class:`NonFiniteError` (exit 3).
    """
    from metarl.config import resolve

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{str(run_dir)!r} is not a run dir (not a directory)")
    raw = read_config(run_dir, "not a run dir:")
    require_trust(raw, run_dir / CONFIG_FILE, trust_code)
    config = resolve(raw, list(overrides))
    exp = Experiment.build(config, distributed.init(resolve_device(device or config.run.device)))
    budget.check(config, exp.learner, exp.device)
    _load_learner(exp.learner, run_dir / "checkpoints" / f"{which}.pt")
    return exp


def evaluate(
    run_dir: Path,
    split: str = "test",
    num_tasks: int | None = None,
    steps: int | None = None,
    which: str = "latest",
    device: str | None = None,
    trust_code: bool = False,
    data_root: str | None = None,
) -> tuple[AdaptationCurve, dict[str, Path]]:
    """The adaptation table of a trained run; writes ``eval/<which>_<split>.{json,md,png}``.

    ``data_root`` replaces the saved ``data.root`` of a supervised run (a run dir trained on another
    machine, e.g. a zoo entry); the data set must be the one the run was trained on (same classes and
    files), since ``tasks.json`` names classes and examples by index.

    Defaults are the run's own: ``num_tasks = run.eval_tasks``, ``steps = run.eval_steps`` and, for
    ``split = "test"``, the held-out tasks of its ``tasks.json`` (more tasks than it holds continue the same
    held-out stream). The evaluation draws its random numbers from ``run.eval_seed``
    (:func:`metarl.core.evaluation_randomness`), exactly as the training-time evaluation does, so the same
    checkpoint, tasks and steps give the number the training printed (``meta_test/*`` of that iteration).
    A learner with no adaptation steps (ProtoNets, Matching Nets, SNAIL) is evaluated once (one point).
    The tasks are evaluated in ``run.eval_blocks`` blocks with random streams of their own
    (:func:`metarl.evaluation.evaluate_sharded`): under ``--nproc N`` (torchrun) the ranks share the blocks,
    the numbers are those of one process, and rank 0 writes the report.
    """
    from metarl.evaluation import markdown_table, step_unit, write_report

    overrides = [] if data_root is None else [f"data.root={json.dumps(str(data_root))}"]
    exp = load_run(run_dir, which, device, overrides, trust_code=trust_code)
    run = exp.config.run
    num_tasks = run.eval_tasks if num_tasks is None else num_tasks
    unit = step_unit(exp.learner)
    # a learner that reads its support set once (ProtoNets, Matching Nets, SNAIL) is at chance before reading
    # it (step 0): its one point is the accuracy after step 1, the training-time meta_test/*_step_1
    steps = 1 if not unit else (run.eval_steps if steps is None else steps)
    if split == "test":
        saved = _held_out_from_file(exp, Path(run_dir))
        more = num_tasks > len(saved)  # beyond tasks.json: the same held-out stream, continued
        tasks = exp.tasks.held_out(num_tasks, seed=run.eval_seed) if more else saved[:num_tasks]
    else:
        tasks = exp.tasks.sample(num_tasks, split=split, rng=np.random.default_rng(run.eval_seed))
    main = distributed.is_main()
    if main:
        what = f"{num_tasks} {split} tasks, " + (f"{steps} steps" if unit else "the support set read once")
        print(f"evaluating {exp.config.algo_name} ({which} checkpoint): {what}")
    # the training-time evaluation's numbers, under any world size
    curve = evaluate_sharded(exp.learner, tasks, steps, run.eval_seed, run.eval_blocks, progress=main)
    if not unit:
        curve = AdaptationCurve(curve.metric, curve.mean[-1:], curve.ci95[-1:], curve.per_task[-1:])
    if not main:
        return curve, {}
    source = exp.config.env.id if exp.config.env is not None else exp.config.data.dataset
    title = f"{exp.config.algo_name} on {source}: {num_tasks} {split} tasks ({which} checkpoint)"
    stem = f"{which}_{split}"
    paths = write_report({exp.config.algo_name: curve}, Path(run_dir) / "eval", stem, title, unit)
    print(markdown_table({exp.config.algo_name: curve}, unit))
    return curve, paths
