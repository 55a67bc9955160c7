"""Training episodes within one alphabet (``data.within_alphabet``, Lake et al. 2015's all_runs protocol),
on a generated mini Omniglot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fewshot_fixtures import make_image_folder, make_omniglot

from metarl.config import resolve
from metarl.data import EpisodeSampler, alphabet_groups, build_sampler, load_omniglot
from metarl.errors import ConfigError


@pytest.fixture(scope="module")
def omniglot_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_omniglot(tmp_path_factory.mktemp("omniglot"))


def lake_config(root: Path, cache: Path, *overrides: str):
    raw = {
        "run": {"iterations": 1},
        "data": {"dataset": "omniglot", "split": "lake", "ways": 20, "shots": 1, "queries": 1},
        "algo": {"name": "protonets"},
    }
    data = [f'data.root="{root}"', f'data.cache_dir="{cache}"', "data.train_ways=5", "data.train_queries=2"]
    return resolve(raw, [*data, *overrides]).data


def alphabets(tasks: EpisodeSampler, episode) -> set[str]:
    return {tasks.dataset.class_names[c].split("/", 1)[0] for c in episode.classes}


def test_alphabet_groups_keep_rotations_in_their_alphabet(omniglot_root: Path, tmp_path: Path) -> None:
    dataset, train, _, _ = load_omniglot(omniglot_root, "lake", cache_dir=tmp_path)
    groups = alphabet_groups(dataset, train)
    assert [len(g) for g in groups] == [12, 12]  # 3 characters × 4 rotations per background alphabet
    assert [{dataset.class_names[c].split("/")[0] for c in g} for g in groups] == [{"Alpha"}, {"Beta"}]
    assert sorted(np.concatenate(groups).tolist()) == sorted(train.tolist())


def test_training_episodes_stay_within_one_alphabet(omniglot_root: Path, tmp_path: Path) -> None:
    within = build_sampler(lake_config(omniglot_root, tmp_path, "data.within_alphabet=true"))
    mixed = build_sampler(lake_config(omniglot_root, tmp_path))
    assert isinstance(within, EpisodeSampler)
    episodes = within.sample(200, split="train", rng=np.random.default_rng(0))
    assert all(len(alphabets(within, e)) == 1 for e in episodes)
    assert {a for e in episodes for a in alphabets(within, e)} == {"Alpha", "Beta"}  # both drawn
    assert all(e.ways == 5 and e.queries == 2 for e in episodes)
    drawn = mixed.sample(200, split="train", rng=np.random.default_rng(0))
    assert sum(len(alphabets(mixed, e)) > 1 for e in drawn) > 150  # the default mixes alphabets
    # the test episodes (Lake's runs) do not change
    assert within.held_out(2, seed=0) == mixed.held_out(2, seed=0)


def test_within_alphabet_errors_are_one_line_config_errors(omniglot_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no alphabet has data.train_ways=13"):
        build_sampler(lake_config(omniglot_root, tmp_path, "data.within_alphabet=true", "data.train_ways=13"))
    folder = make_image_folder(tmp_path / "folder", 4, 3, 4)
    raw = {
        "run": {},
        "data": {"dataset": "image_folder", "within_alphabet": True},
        "algo": {"name": "protonets"},
    }
    with pytest.raises(ConfigError, match="within_alphabet needs data.dataset 'omniglot'"):
        build_sampler(resolve(raw, [f'data.root="{folder}"']).data)
    with pytest.raises(ConfigError, match="within_alphabet"):
        lake_config(omniglot_root, tmp_path, 'data.within_alphabet="yes"')
