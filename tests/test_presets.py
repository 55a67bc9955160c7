"""Every RL experiment preset in experiments/ is a valid config whose task family builds (the few-shot
presets, which need a data root, are checked in test_fewshot_cli.py)."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import pytest

from metarl.config import load_toml, resolve

EXPERIMENTS = Path(__file__).parents[1] / "experiments"
PRESETS = sorted(
    p for p in EXPERIMENTS.glob("*.toml") if "algo" in load_toml(p) and not p.name.startswith("fewshot_")
)


def test_the_rl_presets_are_found() -> None:
    names = {p.stem for p in PRESETS}
    assert {"quickstart", "maml_trpo_halfcheetah_vel", "rl2_bandit_k10_n100", "rl2_ml1_reach"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_resolves_and_its_family_builds(path: Path) -> None:
    config = resolve(load_toml(path))
    env = gym.make(config.env.id, **config.env.kwargs)
    try:
        assert env.unwrapped.sample_tasks(2, split="test", seed=0)  # the task-family contract
    finally:
        env.close()
