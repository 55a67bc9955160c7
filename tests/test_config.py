"""Config validation: every bad key or value is one clear ConfigError naming the key and the choices."""

from __future__ import annotations

import pytest

from metarl.algorithms.maml_rl import MAMLRLConfig
from metarl.config import RunConfig, diff, parse_override, resolve
from metarl.errors import ConfigError

BASE = {"env": {"id": "metarl/Navigation2D-v0"}, "algo": {"name": "maml_rl"}}


def test_defaults_are_the_papers() -> None:
    cfg = resolve(BASE)
    assert cfg.algo == MAMLRLConfig()
    assert (cfg.algo.meta_batch_size, cfg.algo.rollouts_per_task, cfg.algo.inner_lr) == (
        20,
        20,
        0.1,
    )
    assert cfg.algo.hidden_sizes == (100, 100) and cfg.algo.gamma == 0.99
    assert cfg.run == RunConfig()


@pytest.mark.parametrize(
    ("raw", "overrides", "message"),
    [
        (
            {**BASE, "algo": {"name": "maml_rl", "inner_lrr": 0.1}},
            [],
            r"unknown key 'algo.inner_lrr'; valid: .*inner_lr",
        ),
        (
            {**BASE, "run": {"iterations": "ten"}},
            [],
            r"run.iterations: expected an integer, got 'ten'",
        ),
        ({**BASE, "run": {"iterations": 0}}, [], r"run.iterations must be >= 1, got 0"),
        (
            {**BASE, "run": {"device": "gpu"}},
            [],
            r"run.device: 'gpu' is not valid; valid: auto, cpu, cuda",
        ),
        (
            {**BASE, "algo": {"name": "reptile"}},
            [],
            r"algo.name 'reptile' is not an algorithm; valid: maml_rl",
        ),
        (
            {**BASE, "algo": {"name": "maml_rl", "gamma": 1.5}},
            [],
            r"algo.gamma must be in \(0, 1\]",
        ),
        (
            {**BASE, "algo": {"name": "maml_rl", "activation": "gelu"}},
            [],
            r"algo.activation must be one of",
        ),
        (
            {**BASE, "algo": {"name": "maml_rl", "first_order": 1}},
            [],
            r"algo.first_order: expected true or false",
        ),
        (
            {**BASE, "algo": {"name": "maml_rl", "hidden_sizes": [64, "x"]}},
            [],
            r"algo.hidden_sizes\[1\]",
        ),
        (
            {**BASE, "trainer": {}},
            [],
            r"unknown section\(s\) \['trainer'\]; valid: algo, data, env, run",
        ),
        ({**BASE, "data": {"ways": 5}}, [], r"section \[data\] is not used by algo.name 'maml_rl'"),
        (BASE, ["algo.outer_lr"], r"expected KEY=VALUE"),
        (BASE, ["outer_lr=3"], r"keys look like SECTION.KEY"),
        (BASE, ["algo.nope=3"], r"unknown key 'algo.nope'"),
    ],
)
def test_bad_input_names_the_key(raw: dict, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(raw, overrides)


def test_overrides_are_parsed_as_toml_values() -> None:
    assert parse_override("algo.inner_lr=0.05") == (["algo", "inner_lr"], 0.05)
    assert parse_override("algo.hidden_sizes=[64, 64]") == (["algo", "hidden_sizes"], [64, 64])
    assert parse_override("run.device=cpu") == (["run", "device"], "cpu")
    cfg = resolve(BASE, ["algo.hidden_sizes=[64, 64]", "algo.first_order=true", "run.seed=7"])
    assert cfg.algo.hidden_sizes == (64, 64) and cfg.algo.first_order and cfg.run.seed == 7


def test_resolved_config_round_trips_and_diffs() -> None:
    cfg = resolve(BASE, ["algo.outer_lr=0.003"])
    again = resolve(cfg.to_dict())
    assert again == cfg
    assert diff(cfg.to_dict(), again.to_dict()) == []
    other = resolve(BASE, ["algo.outer_lr=0.01", "run.seed=2"])
    assert diff(cfg.to_dict(), other.to_dict()) == ["algo.outer_lr", "run.seed"]
