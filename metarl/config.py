"""Experiment configs: TOML files validated into typed, frozen dataclasses.

An experiment file has three tables (``[data]`` instead of ``[env]`` for supervised learners)::

    [run]                      # RunConfig: budget, seed, device, evaluation schedule
    iterations = 150
    [env]                      # EnvConfig: the task family
    id = "metarl/Navigation2D-v0"
    [algo]                     # the algorithm's own config dataclass, chosen by `name`
    name = "maml_rl"
    outer_lr = 3e-3

Every key is checked against the dataclass it lands in: an unknown key, a value of the wrong type or out of
range raises :class:`ConfigError` with one line naming the key and the valid choices. Configs are data:
values are parsed by ``tomllib`` and never evaluated.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from metarl import checks
from metarl.errors import ConfigError

Device = Literal["auto", "cpu", "cuda"]

#: Seeds are drawn into numpy / torch generators: non-negative 63-bit integers.
MAX_SEED = 2**63 - 1
#: Caps on horizon-like sizes (a typo such as ``1e12`` is refused instead of hanging the run).
MAX_EPISODE_STEPS = 1_000_000
MAX_TASKS = 100_000
MAX_ADAPTATION_STEPS = 10_000


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How long to train and how to evaluate.

    Attributes:
        iterations: meta-iterations (meta-batches) to train for.
        seed: the run's seed; every generator of the run derives from it.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        eval_every: meta-iterations between held-out evaluations (the last iteration is always evaluated).
        eval_tasks: number of held-out tasks (40 in the MAML paper).
        eval_steps: adaptation steps of the held-out adaptation curve (0..eval_steps).
        eval_seed: seed of the fixed held-out task set (the same for every run, so runs are comparable) and
            of the evaluation's random numbers.
        eval_blocks: the held-out tasks are evaluated in this many contiguous blocks, each with random
            streams of its own from ``(eval_seed, block)``, so that a data-parallel job's evaluation (the
            ranks share the blocks) gives one process's numbers under every world size; a multiple of the
            world size spreads the work evenly. 1: one batch of every held-out task (single-process numbers
            of earlier versions).
        checkpoint_every: meta-iterations between checkpoints of the latest state.
        num_threads: torch CPU threads (0: torch's default). 1 by default: the small networks and batched
            environments of meta-RL gain nothing from intra-op threads on CPU, and a second thread that
            competes with other processes for a core can slow an iteration down tenfold.
    """

    iterations: int = 500
    seed: int = 0
    device: Device = "auto"
    eval_every: int = 25
    eval_tasks: int = 40
    eval_steps: int = 3
    eval_seed: int = 0
    eval_blocks: int = 1
    checkpoint_every: int = 1
    num_threads: int = 1

    def __post_init__(self) -> None:
        checks.at_least(self, 1, "iterations", "eval_every", "eval_tasks", "eval_blocks", "checkpoint_every")
        checks.at_least(self, 0, "eval_steps", "num_threads", "seed", "eval_seed")
        checks.at_most(self, MAX_SEED, "seed", "eval_seed")
        checks.at_most(self, MAX_TASKS, "eval_tasks", "eval_blocks")
        checks.at_most(self, MAX_ADAPTATION_STEPS, "eval_steps")


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """The task family.

    Attributes:
        id: a registered id (``metarl list`` shows them) or ``"module:Class"`` of your own family.
        kwargs: constructor keyword arguments of the family (its conventions: ranges, costs, …).
        max_episode_steps: horizon override (default: the registration's).
    """

    id: str = "metarl/Navigation2D-v0"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    max_episode_steps: int | None = None

    def __post_init__(self) -> None:
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {self.max_episode_steps}")
        checks.at_most(self, MAX_EPISODE_STEPS, "max_episode_steps")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The data set of a supervised few-shot experiment and its N-way K-shot episodes (``metarl.data``).

    Attributes:
        dataset: ``"omniglot"`` (standard folder layout), ``"image_folder"`` (``root/{train,test}/<class>/``)
            or ``"sinusoid"`` (generated regression tasks, MAML §5.1).
        root: the data set's root folder (``--data-root``); unused for ``sinusoid``.
        split: Omniglot class split: ``"vinyals"`` (Vinyals et al. 2016 list files), ``"maml"`` (1200
            training characters, Finn et al. 2017) or ``"lake"`` (train on ``images_background``, test on
            Lake et al. 2015's twenty 20-way one-shot ``all_runs``).
        ways: classes per test episode (N).
        shots: labelled examples per class in a test support set (K); support points for sinusoid.
        queries: query examples per class (query points per sinusoid task).
        train_ways: classes per training episode; 0 = ``ways`` (ProtoNets train 60-way, Snell et al. §3).
        train_shots: support examples per class in training; 0 = ``shots`` (sinusoid trains with K = 10).
        train_queries: query examples per class in training; 0 = ``queries``.
        image_size: images are resized to ``image_size × image_size`` (28 for Omniglot).
        channels: 1 (grey-scale, inverted) or 3 (RGB) for ``image_folder``; Omniglot is grey-scale.
        rotations: Omniglot rotations by 90/180/270° as new classes (Santoro et al. 2016).
        within_alphabet: Omniglot training episodes draw all their classes from one alphabet (chosen
            uniformly among those with enough classes; a character's rotations count in its alphabet), as
            Lake et al. (2015)'s ``all_runs`` are built; test episodes are unchanged.
        cache_dir: where decoded images are cached (empty: ``$METARL_CACHE`` or ``~/.cache/metarl``).
    """

    dataset: Literal["omniglot", "image_folder", "sinusoid"] = "omniglot"
    root: str = ""
    split: Literal["vinyals", "maml", "lake"] = "vinyals"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    train_ways: int = 0
    train_shots: int = 0
    train_queries: int = 0
    image_size: int = 28
    channels: int = 1
    rotations: bool = True
    within_alphabet: bool = False
    cache_dir: str = ""

    def __post_init__(self) -> None:
        checks.at_least(self, 1, "ways", "shots", "queries", "image_size")
        for name in ("train_ways", "train_shots", "train_queries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: the test value), got {getattr(self, name)}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: ``run``, ``algo`` and the algorithm's data source.

    RL algorithms read a task family (``env``), supervised ones a data set (``data``); the section an
    algorithm does not use is ``None`` and rejected if given.
    """

    run: RunConfig
    algo_name: str
    algo: Any
    env: EnvConfig | None = None
    data: DataConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"run": dataclasses.asdict(self.run)}
        for name in ("env", "data"):
            if getattr(self, name) is not None:
                out[name] = dataclasses.asdict(getattr(self, name))
        out["algo"] = {"name": self.algo_name, **dataclasses.asdict(self.algo)}
        return out


# -- validation ----------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + str(list(typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a table"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; returns the value in the dataclass's form."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not valid; valid: {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None  # JSON null (a resolved config read back from a run dir)
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # nan / inf pass every range check written with < and >
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # a bug in a config class, not user input


def build_dataclass(cls: type, data: dict[str, Any], section: str) -> Any:
    """Instantiate ``cls`` from ``data``, validating every key, type and value."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{section}] must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown key '{section}.{key}'; valid: {', '.join(sorted(fields))}")
        values[key] = _coerce(value, hints[key], f"{section}.{key}")
    try:
        return cls(**values)
    except ValueError as exc:
        raise ConfigError(f"{section}.{exc}") from None


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """``"algo.inner_lr=0.05"`` → ``(["algo", "inner_lr"], 0.05)``; the value is parsed as TOML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. algo.inner_lr=0.05")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: take it as a string
    return key.strip().split("."), value


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def resolve(raw: dict[str, Any], overrides: list[str] = ()) -> ExperimentConfig:
    """Validate a raw config (from TOML or a run dir's ``config.json``) after applying ``--set`` overrides."""
    from metarl.algorithms import ALGORITHMS  # late import: algorithms register their configs

    raw = {section: dict(table) if isinstance(table, dict) else table for section, table in raw.items()}
    for assignment in overrides:
        keys, value = parse_override(assignment)
        if len(keys) < 2:
            raise ConfigError(
                f"--set {assignment!r}: keys look like SECTION.KEY; sections: run, env, data, algo"
            )
        table = raw.setdefault(keys[0], {})
        for depth, k in enumerate(keys[1:], 1):
            if not isinstance(table, dict):
                raise ConfigError(f"--set {assignment!r}: {'.'.join(keys[:depth])} is a value, not a table")
            if depth == len(keys) - 1:
                table[k] = value
            else:
                table = table.setdefault(k, {})
    unknown = set(raw) - {"run", "env", "data", "algo"}
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}; valid: algo, data, env, run")
    algo = dict(raw.get("algo", {}))
    name = algo.pop("name", None)
    if name not in ALGORITHMS:
        raise ConfigError(f"algo.name {name!r} is not an algorithm; valid: {', '.join(ALGORITHMS)}")
    source = ALGORITHMS[name].source  # "env" or "data"
    other = "data" if source == "env" else "env"
    if other in raw:
        raise ConfigError(f"section [{other}] is not used by algo.name {name!r}; it reads [{source}]")
    source_type = EnvConfig if source == "env" else DataConfig
    return ExperimentConfig(
        run=build_dataclass(RunConfig, raw.get("run", {}), "run"),
        algo_name=name,
        algo=build_dataclass(ALGORITHMS[name].config_type, algo, "algo"),
        **{source: build_dataclass(source_type, raw.get(source, {}), source)},
    )


def diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved config dicts."""
    keys = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += diff(va, vb, f"{prefix}{key}.")
        elif _normalise(va) != _normalise(vb):
            keys.append(f"{prefix}{key}")
    return keys


def _normalise(value: Any) -> Any:
    return [_normalise(v) for v in value] if isinstance(value, list | tuple) else value
