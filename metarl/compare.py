"""``metarl compare``: learning from scratch vs transfer vs meta-learning, on the same held-out tasks.

The course material this project comes from (``../shared/seeds``) sorts ways to learn a new task into three
paradigms and claims their adaptation speed is *slow* (ordinary training from scratch), *medium* (transfer:
pretrain, then freeze or fine-tune) and *fast* (meta-learning). This module measures that claim on any task
family: every method adapts to the **same held-out tasks** with the **same adaptation budgets**, and each is
summarised by its adaptation curve — the metric against the budget, mean and Student-t 95% CI over tasks.

Budgets. RL: environment steps of experience on the task. Supervised: labelled examples per class (the
support set's shots ``K``); every method adapts to the same ``K``-shot episodes.

Methods (RL):

- **from scratch** — Stable-Baselines3 PPO trained on each held-out task alone, evaluated whenever it has
  used each budget (:mod:`metarl.baselines.sb3_ppo`);
- **transfer** — one PPO policy pretrained on the training tasks (every reset draws one), fine-tuned on each
  held-out task by the same PPO: heads only, everything, or ``L = λ·L_pretrain + (1 − λ)·L_target``;
- **meta-learning** — trained ``maml_rl`` / ``rl2`` runs (``[[meta]]``; trained here when the run does not
  exist yet). A MAML adaptation step costs ``rollouts_per_task × H`` steps, an RL² segment its length
  (:meth:`metarl.core.MetaLearner.adaptation_cost`);
- **oracle** — the family's ``oracle_return(task, horizon)`` where it has one (an optimal policy that knows
  the task), or PPO trained ``oracle_steps`` on each task itself.

The score of an RL method is the return of one episode of the family's horizon ``H`` (RL² evaluates a
segment of a trial: its return is scaled by ``H / segment length``).

Methods (supervised): the ``[[meta]]`` runs (``maml_supervised``, ``protonets``, ``matching_nets``); transfer
from a ``transfer`` run (``[transfer]``) in the modes asked for; from scratch, the same network untrained and
fitted on the support set; the oracle is perfect prediction (accuracy 1, MSE 0).

The paradigm table normalises a score ``s`` as ``(s − floor) / (oracle − floor)``, with ``floor`` the
untrained policy's return (RL), chance ``1/N`` (classification) or the MSE of predicting 0 (regression), and
reports the smallest measured budget at which each method's mean reaches 50% and 90% (a method's score at a
budget ``b`` is its score at its largest measured budget ``≤ b``: it may not use more data than ``b``).

A compare file (``experiments/compare_*.toml``)::

    [compare]                      # CompareConfig
    budgets = [0, 2000, 4000]
    [env]                          # or [data]: the task family, as in an experiment file
    id = "metarl/Navigation2D-v0"
    [ppo]                          # RL only: PPOBaselineConfig of the scratch / transfer / oracle PPO
    n_steps = 500
    [transfer]                     # supervised only: the transfer run (MetaMethod keys)
    run = "runs/transfer_omniglot"
    [[meta]]                       # one table per meta-learner (MetaMethod)
    name = "MAML"
    run = "runs/maml_nav"
    config = "experiments/maml_trpo_nav2d.toml"

Outputs in the output directory: ``compare.json`` (every curve, per-task values), ``compare.md`` (curves and
the paradigm table), ``compare.png``, TensorBoard scalars ``compare/<method>`` (x-axis = budget) in ``tb/``
and the resolved config ``config.json``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from envs.base import Task
from metarl import atomic, checks, distributed
from metarl.config import DataConfig, Device, EnvConfig, build_dataclass, load_toml, resolve
from metarl.errors import ConfigError
from metarl.evaluation import AdaptationCurve, evaluate_sharded, summarise

Paradigm = Literal["scratch", "transfer", "meta", "oracle"]
TransferMode = Literal["head", "full", "regularized"]
CLAIMS = {"scratch": "slow", "transfer": "medium", "meta": "fast"}
# The supervised transfer learner's names of the same three fine-tuning modes.
SUPERVISED_MODES = {"head": "linear", "full": "finetune", "regularized": "regularized"}


# -- config --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """The ``[compare]`` table.

    Attributes:
        budgets: adaptation budgets, ascending: environment steps per task (RL) or labelled examples per
            class, the support set's shots (supervised).
        num_tasks: held-out tasks (RL; 40 in the MAML paper) or test episodes (supervised; 1000).
        eval_seed: seed of the held-out task set (the same as the runs' ``run.eval_seed`` by default).
        seed: seed of the baselines' own randomness (PPO, pretraining).
        eval_episodes: episodes averaged per task when PPO-based methods are evaluated.
        scratch: include the learning-from-scratch baseline.
        transfer_modes: fine-tuning modes of the transfer baseline (empty: no transfer baseline).
        pretrain_steps: environment steps of PPO pretraining on the training tasks (RL transfer).
        pretrain_tasks: training tasks drawn for pretraining (every reset picks one of them).
        oracle: ``"analytic"`` (the family's ``oracle_return``; perfect prediction for supervised),
            ``"ppo"`` (PPO trained ``oracle_steps`` on each task) or ``"none"``.
        oracle_steps: PPO steps per task of the ``"ppo"`` oracle.
        device: where meta-learners run (``"auto"``: CUDA when available).
        num_threads: torch CPU threads.
    """

    budgets: tuple[int, ...] = (0,)
    num_tasks: int = 40
    eval_seed: int = 0
    seed: int = 0
    eval_episodes: int = 10
    scratch: bool = True
    transfer_modes: tuple[TransferMode, ...] = ("head", "full", "regularized")
    pretrain_steps: int = 100_000
    pretrain_tasks: int = 1000
    oracle: Literal["analytic", "ppo", "none"] = "analytic"
    oracle_steps: int = 100_000
    device: Device = "cpu"
    num_threads: int = 1

    def __post_init__(self) -> None:
        checks.positive(self, "eval_episodes", "pretrain_steps", "pretrain_tasks", "oracle_steps")
        checks.at_least(self, 2, "num_tasks")
        checks.at_least(self, 0, "num_threads", "seed", "eval_seed")
        if not self.budgets or list(self.budgets) != sorted(set(self.budgets)) or self.budgets[0] < 0:
            raise ValueError(f"budgets must be distinct, ascending and >= 0, got {list(self.budgets)}")
        if len(set(self.transfer_modes)) != len(self.transfer_modes):
            raise ValueError(f"transfer_modes lists a mode twice: {list(self.transfer_modes)}")


@dataclasses.dataclass(frozen=True)
class MetaMethod:
    """A ``[[meta]]`` table (and the ``[transfer]`` table of supervised comparisons).

    Attributes:
        name: the label in the report (default: the run's algorithm).
        run: a trained run directory; trained from ``config`` first when it does not exist.
        config: the experiment TOML that trains it (needed only when ``run`` does not exist).
        checkpoint: ``"best"`` or ``"latest"``.
        steps: adaptation steps to evaluate (0: the run's ``run.eval_steps``).
        set: ``KEY=VALUE`` overrides of the run's config (e.g. ``algo.eval_trials_per_task=10``), applied
            for training and evaluation alike.
    """

    name: str = ""
    run: str = ""
    config: str = ""
    checkpoint: Literal["latest", "best"] = "best"
    steps: int = 0
    set: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        checks.at_least(self, 0, "steps")
        if not self.run and not self.config:
            raise ValueError(
                "run: give a trained run directory (run = ...) or a config to train (config = ...)"
            )


@dataclasses.dataclass(frozen=True)
class CompareSpec:
    """A validated compare file."""

    compare: CompareConfig
    env: EnvConfig | None
    data: DataConfig | None
    ppo: Any  # metarl.baselines.sb3_ppo.PPOBaselineConfig (RL only)
    transfer: MetaMethod | None
    meta: tuple[MetaMethod, ...]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"compare": dataclasses.asdict(self.compare)}
        for key in ("env", "data", "ppo", "transfer"):
            value = getattr(self, key)
            if value is not None:
                out[key] = dataclasses.asdict(value)
        out["meta"] = [dataclasses.asdict(m) for m in self.meta]
        return out


SECTIONS = ("compare", "env", "data", "ppo", "transfer", "meta")


def parse(raw: dict[str, Any], overrides: Sequence[str] = ()) -> CompareSpec:
    """Validate a compare file (after ``--set SECTION.KEY=VALUE`` overrides): one-line ConfigErrors."""
    from metarl.baselines.sb3_ppo import PPOBaselineConfig
    from metarl.config import parse_override

    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for assignment in overrides:
        keys, value = parse_override(assignment)
        if len(keys) != 2 or keys[0] == "meta":
            raise ConfigError(
                f"--set {assignment!r}: expected SECTION.KEY=VALUE with SECTION in compare, "
                "env, data, ppo, transfer"
            )
        raw.setdefault(keys[0], {})[keys[1]] = value
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}; valid: {', '.join(SECTIONS)}")
    if ("env" in raw) == ("data" in raw):
        raise ConfigError("a compare file needs exactly one of [env] (RL) or [data] (supervised)")
    rl = "env" in raw
    if rl and "transfer" in raw:
        raise ConfigError(
            "[transfer] is for supervised comparisons; RL transfer is configured by [ppo] and "
            "compare.transfer_modes / compare.pretrain_steps"
        )
    if not rl and "ppo" in raw:
        raise ConfigError("[ppo] is for RL comparisons ([env]); supervised baselines come from [transfer]")
    metas = raw.get("meta", [])
    if not isinstance(metas, list) or not all(isinstance(m, dict) for m in metas):
        raise ConfigError("meta must be an array of tables: [[meta]] name = ..., run = ...")
    compare = build_dataclass(CompareConfig, raw.get("compare", {}), "compare")
    if not rl and compare.budgets[0] < 1:
        raise ConfigError("compare.budgets are shots per class for supervised comparisons: each must be >= 1")
    if not rl and (compare.scratch or compare.transfer_modes) and "transfer" not in raw:
        raise ConfigError(
            "supervised scratch and transfer baselines need a [transfer] table (run or config of a "
            "'transfer' experiment); or set compare.scratch = false and compare.transfer_modes = []"
        )
    return CompareSpec(
        compare=compare,
        env=build_dataclass(EnvConfig, raw["env"], "env") if rl else None,
        data=None if rl else build_dataclass(DataConfig, raw["data"], "data"),
        ppo=build_dataclass(PPOBaselineConfig, raw.get("ppo", {}), "ppo") if rl else None,
        transfer=None
        if rl or "transfer" not in raw
        else build_dataclass(MetaMethod, raw["transfer"], "transfer"),
        meta=tuple(build_dataclass(MetaMethod, m, f"meta[{i}]") for i, m in enumerate(metas)),
    )


def load(path: str | Path, overrides: Sequence[str] = ()) -> CompareSpec:
    return parse(load_toml(path), overrides)


# -- results -------------------------------------------------------------------------------------------
@dataclasses.dataclass
class MethodCurve:
    """One method's adaptation curve: ``curve.mean[i]`` is the metric after ``budgets[i]`` of data."""

    name: str
    paradigm: Paradigm
    budgets: list[int]
    curve: AdaptationCurve
    seconds: float = 0.0

    def score_at(self, budget: int) -> float:
        """The mean score with at most ``budget`` of data (``nan`` when the method has no such point)."""
        usable = [i for i, b in enumerate(self.budgets) if b <= budget]
        return self.curve.mean[usable[-1]] if usable else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "paradigm": self.paradigm,
            "budgets": self.budgets,
            "seconds": self.seconds,
            **self.curve.to_dict(),
        }


def budgets_to_reach(curve: MethodCurve, floor: float, oracle: float, fraction: float) -> int | None:
    """The smallest budget at which the normalised mean score reaches ``fraction`` (None: never).

    ``(score − floor) / (oracle − floor)`` is 0 at the floor and 1 at the oracle whichever way the metric
    is oriented (for an MSE the oracle is below the floor).
    """
    span = oracle - floor
    if span == 0 or math.isnan(span):
        return None
    for budget, mean in zip(curve.budgets, curve.curve.mean, strict=True):
        normalised = (mean - floor) / span
        if normalised >= fraction:
            return budget
    return None


# -- the comparison ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Comparison:
    """Everything ``metarl compare`` measured, ready to be reported."""

    title: str
    metric: str
    budget_unit: str
    higher_is_better: bool
    curves: list[MethodCurve]
    floor: float
    oracle: float
    num_tasks: int
    config: dict[str, Any]
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "notes": self.notes,
            "metric": self.metric,
            "budget_unit": self.budget_unit,
            "higher_is_better": self.higher_is_better,
            "floor": self.floor,
            "oracle": self.oracle,
            "num_tasks": self.num_tasks,
            "config": self.config,
            "methods": [c.to_dict() for c in self.curves],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        curves = [
            MethodCurve(m["name"], m["paradigm"], m["budgets"], AdaptationCurve.from_dict(m), m["seconds"])
            for m in data["methods"]
        ]
        fields = ("title", "metric", "budget_unit", "higher_is_better")
        return cls(
            *(data[k] for k in fields),
            curves,
            data["floor"],
            data["oracle"],
            data["num_tasks"],
            data["config"],
            list(data.get("notes", [])),
        )


def _load_meta(
    method: MetaMethod,
    device: str,
    data_root: str | None,
    trust_code: bool = False,
    env_id: str | None = None,
) -> Any:
    """A meta-learner run, trained first from ``method.config`` when ``method.run`` does not exist.

    A run dir whose config imports a user module (``env.id = "module:Class"``) is loaded only with
    ``trust_code`` or when that id is the comparison's own ``[env] id`` (already trusted: it is the user's).
    """
    from metarl import run as runs

    run_dir = Path(method.run) if method.run else None
    overrides = list(method.set)
    if data_root is not None:
        overrides.append(f"data.root={json.dumps(data_root)}")
    if run_dir is None or not (run_dir / runs.CONFIG_FILE).is_file():
        if not method.config:
            raise ConfigError(f"meta run {method.run!r} does not exist and no config is given to train it")
        config = resolve(load_toml(method.config), [*overrides, f"run.device='{device}'"])
        say(f"training {method.name or config.algo_name} from {method.config}")
        run_dir = runs.train(config, run_dir)
        trust_code = True  # trained from the user's own config just now
    elif env_id is not None:
        saved_env = runs.read_config(run_dir, "not a run dir:").get("env")
        trust_code = trust_code or (isinstance(saved_env, dict) and saved_env.get("id") == env_id)
    return runs.load_run(run_dir, method.checkpoint, device, overrides, trust_code=trust_code)


def say(message: str) -> None:
    """Print ``message`` on rank 0 only (once, whatever the number of processes)."""
    if distributed.is_main():
        print(message)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _ppo_curves(
    make_env: Callable[[], Any], tasks: Sequence[Task], budgets: Sequence[int], **kwargs: Any
) -> Any:
    """``sb3_ppo.ppo_curves`` over all of ``tasks``, each rank of ``--nproc N`` training its share; a task's
    seeds come from its index in ``tasks`` (``first_index``), so the numbers do not depend on N."""
    from metarl.baselines import sb3_ppo

    lo, hi = distributed.shard_bounds(len(tasks))
    kwargs["progress"] = kwargs.get("progress", False) and distributed.is_main()
    local = sb3_ppo.ppo_curves(make_env, list(tasks)[lo:hi], budgets, first_index=lo, **kwargs)
    return distributed.all_gather_tensor(torch.from_numpy(local), dim=1).numpy()


def compare_rl(spec: CompareSpec, device: torch.device, trust_code: bool = False) -> Comparison:
    """Every RL method on the same held-out tasks and budgets (env steps)."""
    from metarl.baselines import sb3_ppo
    from metarl.families import FamilyTaskSampler, env_factory, horizon_of

    cfg, env = spec.compare, spec.env
    make_env = env_factory(env.id, env.kwargs, env.max_episode_steps)
    probe = make_env()
    horizon = horizon_of(probe)
    sampler = FamilyTaskSampler(probe)
    tasks = sampler.held_out(cfg.num_tasks, seed=cfg.eval_seed)
    budgets = list(cfg.budgets)
    curves: list[MethodCurve] = []
    notes: list[str] = []

    def ppo(name: str, paradigm: Paradigm, init: Any, finetune: str) -> MethodCurve:
        config = dataclasses.replace(spec.ppo, finetune=finetune)
        values, seconds = _timed(
            lambda: _ppo_curves(
                make_env,
                tasks,
                budgets,
                config=config,
                eval_episodes=cfg.eval_episodes,
                seed=cfg.seed,
                init=init,
                progress=True,
            )
        )
        say(f"  {name}: {seconds:.0f} s")
        return MethodCurve(name, paradigm, budgets, summarise(values, "return"), seconds)

    for method in spec.meta:
        exp = _load_meta(method, str(device), None, trust_code, env.id)
        trained_on = exp.config.env
        if trained_on is None or (trained_on.id, trained_on.kwargs, trained_on.max_episode_steps) != (
            env.id,
            env.kwargs,
            env.max_episode_steps,
        ):
            raise ConfigError(
                f"meta run {method.run!r} was trained on another family than [env] "
                f"({env.id}, kwargs {env.kwargs}, max_episode_steps {env.max_episode_steps})"
            )
        steps = method.steps or exp.config.run.eval_steps
        try:
            support_steps, evaluated = exp.learner.adaptation_cost()
        except NotImplementedError as err:
            raise ConfigError(
                f"meta run {method.run!r} cannot be placed on the env-step axis: {err}"
            ) from None
        curve, seconds = _timed(
            lambda exp=exp, steps=steps: evaluate_sharded(  # metarl evaluate's streams, any --nproc
                exp.learner, tasks, steps, cfg.eval_seed, exp.config.run.eval_blocks
            )
        )
        scale = horizon / evaluated
        scaled = summarise(torch.tensor(curve.per_task) * scale, "return")
        name = method.name or exp.config.algo_name
        say(f"  {name}: {seconds:.0f} s")
        curves.append(
            MethodCurve(name, "meta", [k * support_steps for k in range(steps + 1)], scaled, seconds)
        )

    if cfg.scratch:
        curves.append(ppo("from scratch (PPO)", "scratch", None, "full"))
    if cfg.transfer_modes:
        train_tasks = sampler.sample(cfg.pretrain_tasks, split="train", rng=np.random.default_rng(cfg.seed))
        # every rank of --nproc N pretrains the same policy (same seed): no rank waits on a collective
        pretrained, seconds = _timed(
            lambda: sb3_ppo.pretrain(
                make_env,
                train_tasks,
                cfg.pretrain_steps,
                spec.ppo,
                seed=cfg.seed,
                progress=distributed.is_main(),
            )
        )
        notes.append(
            f"PPO pretraining of the transfer policy: {cfg.pretrain_steps} environment steps on "
            f"{cfg.pretrain_tasks} training tasks, {seconds:.0f} s."
        )
        say(f"  {notes[-1]}")
        for mode in cfg.transfer_modes:
            curves.append(ppo(f"transfer, {mode} fine-tuning (PPO)", "transfer", pretrained, mode))

    floor = _untrained_return(curves, make_env, tasks, spec, horizon)
    oracle = _rl_oracle(spec, probe, make_env, tasks, horizon, curves)
    title = f"{env.id}: {cfg.num_tasks} held-out tasks, horizon {horizon}"
    return Comparison(
        title,
        "return",
        "environment steps",
        True,
        curves,
        floor,
        oracle,
        cfg.num_tasks,
        spec.to_dict(),
        notes,
    )


def _untrained_return(
    curves: list[MethodCurve],
    make_env: Callable[[], Any],
    tasks: Sequence[Task],
    spec: CompareSpec,
    horizon: int,
) -> float:
    """The normalisation floor: an untrained policy's mean return (from scratch PPO at budget 0)."""

    for c in curves:
        if c.paradigm == "scratch" and c.budgets[0] == 0:
            return c.curve.mean[0]
    values = _ppo_curves(
        make_env,
        tasks,
        [0],
        config=spec.ppo,
        eval_episodes=spec.compare.eval_episodes,
        seed=spec.compare.seed,
    )
    return float(np.mean(values))


def _rl_oracle(
    spec: CompareSpec,
    probe: Any,
    make_env: Callable[[], Any],
    tasks: Sequence[Task],
    horizon: int,
    curves: list[MethodCurve],
) -> float:

    cfg = spec.compare
    if cfg.oracle == "none":
        return math.nan
    if cfg.oracle == "analytic":
        family = probe.unwrapped
        if not hasattr(family, "oracle_return"):
            raise ConfigError(
                f"{type(family).__name__} has no oracle_return; valid compare.oracle: ppo, none"
            )
        values = np.array([[family.oracle_return(t, horizon) for t in tasks]])
        name = "oracle (knows the task)"
        seconds = 0.0
    else:
        values, seconds = _timed(
            lambda: _ppo_curves(
                make_env,
                tasks,
                [cfg.oracle_steps],
                config=spec.ppo,
                eval_episodes=cfg.eval_episodes,
                seed=cfg.seed,
                progress=True,
            )
        )
        name = f"oracle (PPO, {cfg.oracle_steps} steps on the task)"
    curves.append(
        MethodCurve(
            name,
            "oracle",
            [0 if cfg.oracle == "analytic" else cfg.oracle_steps],
            summarise(values, "return"),
            seconds,
        )
    )
    return float(np.mean(values))


def with_shots(sampler: Any, shots: int) -> Any:
    """The same held-out episodes' classes / tasks with ``shots`` labelled examples per class."""
    from metarl.data import EpisodeSampler, EpisodeShape, SinusoidSampler

    if isinstance(sampler, SinusoidSampler):
        out = SinusoidSampler(
            sampler.shots["train"], shots, sampler.queries, sampler.amplitude, sampler.phase, sampler.x_range
        )
        return out
    assert isinstance(sampler, EpisodeSampler)
    test = sampler.shapes["test"]
    return EpisodeSampler(
        sampler.dataset,
        sampler.classes["train"],
        sampler.classes["test"],
        sampler.shapes["train"],
        EpisodeShape(test.ways, shots, test.queries),
    )


def compare_supervised(
    spec: CompareSpec, device: torch.device, data_root: str | None, trust_code: bool = False
) -> Comparison:
    """Every supervised method on the same held-out episodes at each number of shots."""
    from metarl.data import SinusoidSampler, build_sampler
    from metarl.run import Experiment

    cfg, data = spec.compare, spec.data
    if data_root is not None:
        data = dataclasses.replace(data, root=data_root)
    base = build_sampler(data)
    regression = isinstance(base, SinusoidSampler)
    metric = "mse" if regression else "accuracy"
    samplers = {k: with_shots(base, k) for k in cfg.budgets}
    episodes = {k: s.held_out(cfg.num_tasks, seed=cfg.eval_seed) for k, s in samplers.items()}
    budgets = list(cfg.budgets)
    curves: list[MethodCurve] = []

    def measure(name: str, paradigm: Paradigm, learner: Any, steps: int) -> None:
        rows = []
        start = time.perf_counter()
        for k in budgets:
            learner.tasks = samplers[k]  # the learner reads its episodes' data through its sampler
            rows.append(evaluate_sharded(learner, episodes[k], steps, cfg.eval_seed).per_task[-1])
        seconds = time.perf_counter() - start
        say(f"  {name}: {seconds:.0f} s")
        curves.append(MethodCurve(name, paradigm, budgets, summarise(np.array(rows), metric), seconds))

    for method in spec.meta:
        exp = _load_meta(method, str(device), data.root, trust_code)
        measure(
            method.name or exp.config.algo_name,
            "meta",
            exp.learner,
            method.steps or exp.config.run.eval_steps,
        )
    if spec.transfer is not None:
        exp = _load_meta(spec.transfer, str(device), data.root, trust_code)
        if exp.config.algo_name != "transfer":
            raise ConfigError(f"[transfer] run must be a 'transfer' run, got algo {exp.config.algo_name!r}")
        steps = spec.transfer.steps or exp.config.run.eval_steps
        for mode in cfg.transfer_modes:
            exp.learner.config = dataclasses.replace(exp.learner.config, mode=SUPERVISED_MODES[mode])
            measure(f"transfer, {mode} fine-tuning", "transfer", exp.learner, steps)
        if cfg.scratch:
            fresh = Experiment.build(dataclasses.replace(exp.config, data=data), device)
            # a fresh network has no pretrained layers to protect: one step size for all of them
            fresh.learner.config = dataclasses.replace(
                fresh.learner.config, mode="finetune", features_lr_ratio=1.0
            )
            measure("from scratch (fresh network)", "scratch", fresh.learner, steps)

    if regression:
        batch = samplers[budgets[0]].batch(episodes[budgets[0]], torch.device("cpu"))
        floor = float(batch.query_y.pow(2).mean())
        oracle = 0.0
    else:
        floor, oracle = 1.0 / base.shapes["test"].ways, 1.0
    if cfg.oracle == "none":
        oracle = math.nan
    source = "sinusoid regression" if regression else f"{data.dataset} {base.shapes['test'].ways}-way"
    title = f"{source}: {cfg.num_tasks} held-out {'tasks' if regression else 'episodes'}"
    return Comparison(
        title,
        metric,
        "labelled examples (support points K)" if regression else "labelled examples per class (shots K)",
        not regression,
        curves,
        floor,
        oracle,
        cfg.num_tasks,
        spec.to_dict(),
    )


def run_compare(
    spec: CompareSpec, out_dir: Path, data_root: str | None = None, trust_code: bool = False
) -> dict[str, Path]:
    """Run the comparison ``spec`` describes and write its outputs into ``out_dir`` (each file atomically).

    ``trust_code`` lets meta-learner run dirs from elsewhere import the module their ``env.id`` names.
    """
    from metarl.run import resolve_device

    if spec.compare.num_threads:
        torch.set_num_threads(spec.compare.num_threads)
    joined = not distributed.in_group()
    device = distributed.init(resolve_device(spec.compare.device))  # this rank's GPU under torchrun
    main = distributed.is_main()
    out_dir = Path(out_dir)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out_dir / "config.json", json.dumps(spec.to_dict(), indent=2) + "\n")
    start = time.perf_counter()
    result = (
        compare_rl(spec, device, trust_code)
        if spec.env is not None
        else compare_supervised(spec, device, data_root, trust_code)
    )
    if joined:
        distributed.destroy()
    if not main:  # data-parallel: every rank computed its share, rank 0 holds the gathered result
        return {}
    paths = write(result, out_dir)
    print(f"\n{paradigm_table(result)}\n")
    written = ", ".join(str(p) for p in paths.values())
    print(f"compare finished in {time.perf_counter() - start:.0f} s: {written}")
    print(f"curves: tensorboard --logdir {out_dir / 'tb'}")
    return paths


# -- reporting -----------------------------------------------------------------------------------------
def _fmt(value: float, digits: int) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def _digits(result: Comparison) -> int:
    return 3 if result.metric in ("accuracy", "mse") else 2


def curve_table(result: Comparison) -> str:
    """One row per method, one column per budget of the comparison: ``mean ± ci95`` where measured."""
    budgets = sorted({b for c in result.curves for b in c.budgets})
    d = _digits(result)
    lines = [
        "| paradigm | method | " + " | ".join(str(b) for b in budgets) + " |",
        "|---|---|" + "---:|" * len(budgets),
    ]
    for c in result.curves:
        cells = []
        for b in budgets:
            if b in c.budgets:
                i = c.budgets.index(b)
                cells.append(f"{_fmt(c.curve.mean[i], d)} ± {_fmt(c.curve.ci95[i], d)}")
            else:
                cells.append("·")
        lines.append(f"| {c.paradigm} | {c.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paradigm_table(result: Comparison) -> str:
    """The course's paradigm table, filled with measured numbers."""
    positive = [b for c in result.curves if c.paradigm != "oracle" for b in c.budgets if b > 0]
    smallest = min(positive) if positive else 0
    d = _digits(result)
    lines = [
        f"| paradigm | method | {result.metric} with ≤ {smallest} | budget to 50% of oracle | "
        "budget to 90% of oracle | course's claim | adaptation wall-clock |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for c in result.curves:
        if c.paradigm == "oracle":
            continue
        reach = [budgets_to_reach(c, result.floor, result.oracle, f) for f in (0.5, 0.9)]
        cells = ["not reached" if r is None else str(r) for r in reach]
        if math.isnan(result.oracle):
            cells = ["no oracle", "no oracle"]
        lines.append(
            f"| {c.paradigm} | {c.name} | {_fmt(c.score_at(smallest), d)} | {cells[0]} | {cells[1]} | "
            f"{CLAIMS[c.paradigm]} | {c.seconds:.0f} s |"
        )
    return "\n".join(lines)


def markdown(result: Comparison) -> str:
    d = _digits(result)
    oracle = [c for c in result.curves if c.paradigm == "oracle"]
    oracle_line = (
        f"{oracle[0].name}: {_fmt(result.oracle, d)}" if oracle else f"oracle: {_fmt(result.oracle, d)}"
    )
    return "\n".join(
        [
            f"# Paradigm comparison — {result.title}",
            "",
            f"Metric: {result.metric} (mean ± 95% CI over {result.num_tasks} held-out tasks) against the "
            f"adaptation budget in {result.budget_unit}. "
            f"Normalisation: floor {_fmt(result.floor, d)}, {oracle_line}.",
            "",
            "## Adaptation curves",
            "",
            curve_table(result),
            "",
            "## Paradigm table",
            "",
            "Budget to reach x% = smallest measured budget at which (score − floor) / (oracle − floor) ≥ x. "
            "Adaptation wall-clock = adapting to every held-out task at every budget and evaluating, on this "
            "machine (meta-training and pretraining not included).",
            "",
            paradigm_table(result),
            "",
            *[f"- {note}" for note in result.notes],
        ]
    )


def plot(result: Comparison, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"scratch": ":", "transfer": "--", "meta": "-"}
    for c in result.curves:
        if c.paradigm == "oracle":
            ax.axhline(c.curve.mean[0], color="black", linestyle="-.", linewidth=1, label=c.name)
            continue
        mean = np.array(c.curve.mean)
        ci = np.nan_to_num(np.array(c.curve.ci95))
        ax.plot(c.budgets, mean, styles[c.paradigm], marker="o", markersize=3, label=f"{c.name}")
        ax.fill_between(c.budgets, mean - ci, mean + ci, alpha=0.15)
    if not any(c.paradigm == "oracle" for c in result.curves) and not math.isnan(result.oracle):
        ax.axhline(result.oracle, color="black", linestyle="-.", linewidth=1, label="oracle")
    budgets = sorted({b for c in result.curves for b in c.budgets})
    if budgets[0] == 0:
        ax.set_xscale("symlog", linthresh=max(1, budgets[1] if len(budgets) > 1 else 1))
    else:
        ax.set_xscale("log")
    ticks: list[int] = []
    for b in budgets:  # label budgets at least ~0.2 decades apart so they stay readable
        if not ticks or ticks[-1] == 0 or math.log10(b) - math.log10(ticks[-1]) >= 0.2:
            ticks.append(b)
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel(f"adaptation budget: {result.budget_unit}")
    ax.set_ylabel(f"{result.metric} (mean ± 95% CI)")
    ax.set_title(result.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rewrite(out_dir: Path) -> dict[str, Path]:
    """Render the reports of a finished comparison again from its ``compare.json``."""
    out_dir = Path(out_dir)
    result = Comparison.from_dict(json.loads((out_dir / "compare.json").read_text()))
    return write(result, out_dir, tensorboard=False)


def write(result: Comparison, out_dir: Path, tensorboard: bool = True) -> dict[str, Path]:
    """``compare.json``, ``compare.md``, ``compare.png`` and TensorBoard scalars in ``out_dir/tb``."""
    from torch.utils.tensorboard import SummaryWriter

    paths = {ext: out_dir / f"compare.{ext}" for ext in ("json", "md", "png")}
    atomic.write_text(paths["json"], json.dumps(result.to_dict(), indent=2) + "\n")
    atomic.write_text(paths["md"], markdown(result))
    png = io.BytesIO()
    plot(result, png)  # type: ignore[arg-type]  # matplotlib writes PNG to a file object
    atomic.write_bytes(paths["png"], png.getvalue())
    if tensorboard:
        writer = SummaryWriter(log_dir=str(out_dir / "tb"))
        for c in result.curves:
            tag = "".join(ch if ch.isalnum() else "_" for ch in c.name).strip("_")
            for b, m, h in zip(c.budgets, c.curve.mean, c.curve.ci95, strict=True):
                writer.add_scalar(f"compare/{tag}", m, global_step=b)
                if not math.isnan(h):
                    writer.add_scalar(f"compare_ci95/{tag}", h, global_step=b)
        writer.close()
        paths["tb"] = out_dir / "tb"
    return paths
