"""Episodes, Omniglot and image-folder loaders, sinusoid tasks — on generated data only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fewshot_fixtures import make_image_folder, make_omniglot

from metarl.data import (
    Episode,
    EpisodeSampler,
    EpisodeShape,
    SinusoidSampler,
    collate,
    load_image_folder,
    load_omniglot,
)
from metarl.errors import ConfigError


@pytest.fixture(scope="module")
def omniglot_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_omniglot(tmp_path_factory.mktemp("omniglot"))


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("folder"))


def test_episode_shapes_labels_and_disjointness(folder_root: Path) -> None:
    dataset, train, test = load_image_folder(folder_root)
    sampler = EpisodeSampler(dataset, train, test, EpisodeShape(4, 2, 3), EpisodeShape(3, 1, 5))
    episodes = sampler.sample(6, split="train", rng=np.random.default_rng(0))
    for e in episodes:
        assert (e.ways, e.shots, e.queries) == (4, 2, 3)
        assert len(set(e.classes)) == 4 and set(e.classes) <= set(train.tolist())
        assert not set(e.support) & set(e.query)  # support and query never share an example
        for j, idx in enumerate(e.support):  # class-major: position j belongs to class j // K
            assert idx in dataset.class_examples[e.classes[j // 2]]
        for j, idx in enumerate(e.query):
            assert idx in dataset.class_examples[e.classes[j // 3]]
    batch = collate(dataset, episodes, torch.device("cpu"))
    assert batch.support_x.shape == (6, 8, 1, 28, 28) and batch.query_x.shape == (6, 12, 1, 28, 28)
    assert batch.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert batch.query_y.shape == (6, 12) and batch.query_y.dtype == torch.long
    assert 0.0 <= float(batch.support_x.min()) and float(batch.support_x.max()) <= 1.0
    held = sampler.held_out(5, seed=3)
    assert held == sampler.held_out(5, seed=3) != sampler.held_out(5, seed=4)
    assert all(set(e.classes) <= set(test.tolist()) and e.ways == 3 for e in held)
    assert [sampler.task_from_dict(json.loads(json.dumps(e.to_dict()))) for e in held] == held
    with pytest.raises(ValueError, match="one .* shape"):
        collate(dataset, [episodes[0], held[0]], torch.device("cpu"))


def test_too_many_ways_is_a_config_error(folder_root: Path) -> None:
    dataset, train, test = load_image_folder(folder_root)
    sampler = EpisodeSampler(dataset, train, test, EpisodeShape(9, 1, 1), EpisodeShape(3, 1, 1))
    with pytest.raises(ConfigError, match="ways=9 exceeds the 8 classes"):
        sampler.sample(1, split="train", rng=np.random.default_rng(0))


def test_omniglot_vinyals_split_rotations_and_cache(omniglot_root: Path, tmp_path: Path) -> None:
    dataset, train, test, fixed = load_omniglot(omniglot_root, "vinyals", cache_dir=tmp_path)
    assert (len(train), len(test), fixed) == (24, 12, [])  # 6 and 3 characters × 4 rotations
    assert dataset.images.shape == (36 * 4, 1, 28, 28) and dataset.images.dtype == torch.uint8
    assert dataset.class_names[1] == "Alpha/character01/rot090"
    assert dataset.class_names[int(test[0])].startswith("Gamma/")
    base = dataset.images[dataset.class_examples[0]]
    rot = dataset.images[dataset.class_examples[1]]
    assert torch.equal(rot, torch.rot90(base, 1, dims=(-2, -1)))  # rotation = a new class
    assert base.float().mean() < 128  # inverted: paper 0, ink 255
    assert len(list(tmp_path.glob("omniglot_28px_*.npz"))) == 1
    again, *_ = load_omniglot(omniglot_root, "vinyals", cache_dir=tmp_path)  # from the cache
    assert torch.equal(again.images, dataset.images)
    plain, train_plain, _, _ = load_omniglot(omniglot_root, "vinyals", rotations=False, cache_dir=tmp_path)
    assert len(train_plain) == 6


def test_two_runs_decoding_omniglot_at_once_both_write_the_cache(
    omniglot_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs started together decode the same folder and write the same cache file: each through a temp
    file of its own (a shared temp name let the first rename take the second's file away)."""
    import os
    import threading

    both_written = threading.Barrier(2, timeout=30)
    rename = os.replace

    def replace_when_both_wrote(src: str | Path, dst: str | Path) -> None:
        both_written.wait()  # both temp files exist before either is renamed
        rename(src, dst)

    monkeypatch.setattr(os, "replace", replace_when_both_wrote)
    loaded: list[torch.Tensor] = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            loaded.append(load_omniglot(omniglot_root, "vinyals", cache_dir=tmp_path)[0].images)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    runs = [threading.Thread(target=load) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert errors == [] and len(loaded) == 2 and torch.equal(loaded[0], loaded[1])
    assert [p.name for p in tmp_path.iterdir()] == [next(tmp_path.glob("omniglot_28px_*.npz")).name]


def test_omniglot_maml_and_lake_splits(omniglot_root: Path, tmp_path: Path) -> None:
    _, train, test, _ = load_omniglot(omniglot_root, "maml", cache_dir=tmp_path)
    assert len(train) == 9 * 4 and len(test) == 0  # fewer than 1200 characters: all train here
    dataset, train, test, runs = load_omniglot(omniglot_root, "lake", cache_dir=tmp_path)
    assert len(train) == 6 * 4  # images_background only
    assert len(runs) == 2 and all(r.ways == 3 and r.shots == 1 and r.queries == 1 for r in runs)
    assert not set(runs[0].classes) & set(train.tolist())
    # class_labels.txt pairs item(4-c) with class c: the query of class c is its own test image
    run_dir = omniglot_root / "all_runs" / "run01"
    from metarl.data import _load_image

    for c in range(3):
        expected = torch.from_numpy(_load_image(run_dir / "test" / f"item{3 - c:02d}.png", 28))
        assert torch.equal(dataset.images[runs[0].query[c], 0], expected)


def test_missing_data_names_the_layout(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="images_background/<Alphabet>/<characterNN>"):
        load_omniglot(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="images_background"):
        load_omniglot(tmp_path)  # exists, but empty
    with pytest.raises(ConfigError, match=r"<root>/train/<class>/<image>"):
        load_image_folder(tmp_path / "nowhere")


def test_sinusoid_tasks_follow_maml() -> None:
    sampler = SinusoidSampler(train_shots=10, test_shots=5, queries=7)
    tasks = sampler.sample(500, split="train", rng=np.random.default_rng(0))
    amp = np.array([t.amplitude for t in tasks])
    phase = np.array([t.phase for t in tasks])
    assert 0.1 <= amp.min() and amp.max() <= 5.0 and 0.0 <= phase.min() and phase.max() <= np.pi
    batch = sampler.batch(tasks[:3], torch.device("cpu"), "train")
    assert batch.support_x.shape == (3, 10, 1) and batch.query_y.shape == (3, 7, 1)
    assert batch.support_x.abs().max() <= 5.0
    t = tasks[0]
    expected = t.amplitude * torch.sin(batch.support_x[0] - t.phase)
    torch.testing.assert_close(batch.support_y[0], expected)
    test = sampler.batch(sampler.held_out(4, seed=0), torch.device("cpu"))
    assert test.support_x.shape == (4, 5, 1)
    assert torch.equal(test.query_x, sampler.batch(sampler.held_out(4, seed=0), torch.device("cpu")).query_x)
    assert Episode.from_dict(Episode((1, 2), (3, 4), (5, 6)).to_dict()) == Episode((1, 2), (3, 4), (5, 6))
