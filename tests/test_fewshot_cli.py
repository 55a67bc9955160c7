"""Supervised learners through the CLI: `metarl train` on generated data, TensorBoard tags, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli
from fewshot_fixtures import make_image_folder
from test_cli import scalar_tags

TOML = """
[run]
iterations = 4
eval_every = 2
eval_tasks = 6
eval_steps = {eval_steps}
seed = 1
num_threads = 1

[data]
{data}

[algo]
{algo}
"""

CASES = {
    "protonets": (
        1,
        'dataset = "image_folder"\nways = 3\nshots = 1\nqueries = 2\ntrain_ways = 5',
        'name = "protonets"\nhidden_channels = 8',
        "accuracy",
    ),
    "snail": (
        1,
        'dataset = "image_folder"\nways = 3\nshots = 1\nqueries = 2\ntrain_ways = 5',
        'name = "snail"\nmeta_batch_size = 2\nhidden_channels = 8\ntc_filters = 8\n'
        "key_sizes = [8, 8, 8]\nvalue_sizes = [8, 8, 8]",
        "accuracy",
    ),
    "maml_supervised": (
        2,
        'dataset = "sinusoid"\nshots = 5\ntrain_shots = 10\nqueries = 10',
        'name = "maml_supervised"\nnetwork = "mlp"\nmeta_batch_size = 4\ninner_lr = 0.01',
        "mse",
    ),
}


def test_supervised_learner_trains_through_the_cli(tmp_path: Path) -> None:
    # One learner end to end (a subprocess costs ~10 s of imports); the others share the trainer path.
    eval_steps, data, algo_table, metric = CASES["protonets"]
    root = make_image_folder(tmp_path / "data", 6, 4, 4)
    config = tmp_path / "tiny.toml"
    config.write_text(TOML.format(eval_steps=eval_steps, data=data, algo=algo_table))
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train", str(config), "--run-dir", str(run_dir), "--device", "cpu", "--data-root", str(root)
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows] == sorted({r["env_steps"] for r in rows})  # tasks seen, increasing
    tags = scalar_tags(run_dir / "tb")
    assert {
        f"meta_train/{metric}_pre_adapt",
        f"meta_train/{metric}_post_adapt",
        f"meta_test/{metric}_step_{eval_steps}",
    } <= set(tags)
    assert len(json.loads((run_dir / "tasks.json").read_text())["tasks"]) == 6
    # ProtoNets has no adaptation steps: `metarl evaluate` reports one point, not repeated "steps"
    from metarl.cli import main

    assert main(["evaluate", str(run_dir)]) == 0
    result = json.loads((run_dir / "eval" / "latest_test.json").read_text())["protonets"]
    assert result["steps"] == [0] and result["num_tasks"] == 6
    # the one point is the accuracy after reading the support set (3-way chance is 1/3), the training's step 1
    last_eval = [r for r in rows if "meta_test/accuracy_step_1" in r][-1]
    assert result["mean"] == [last_eval["meta_test/accuracy_step_1"]] and result["mean"][0] > 0.4
    assert "support set is read once" in (run_dir / "eval" / "latest_test.md").read_text()
    # a run dir evaluated where its data set lies elsewhere (a zoo entry on another machine): --data-root
    moved = root.rename(tmp_path / "elsewhere")
    assert main(["evaluate", str(run_dir)]) == 2
    assert main(["evaluate", str(run_dir), "--data-root", str(moved)]) == 0
    again = json.loads((run_dir / "eval" / "latest_test.json").read_text())["protonets"]
    assert again["mean"] == result["mean"]


def test_missing_omniglot_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "omniglot.toml"
    config.write_text(TOML.format(eval_steps=1, data='dataset = "omniglot"', algo='name = "protonets"'))
    proc = run_cli(
        "train", str(config), "--run-dir", str(tmp_path / "run"), "--data-root", str(tmp_path / "none")
    )
    assert proc.returncode == 2
    assert (
        "images_background/<Alphabet>/<characterNN>" in proc.stderr
        and len(proc.stderr.strip().splitlines()) == 1
    )


def test_every_fewshot_preset_resolves() -> None:
    from metarl.config import load_toml, resolve

    presets = sorted(Path(__file__).parents[1].glob("experiments/fewshot_*.toml"))
    assert len(presets) >= 10
    for path in presets:
        config = resolve(load_toml(path), ['data.root="/data/omniglot"'])
        assert config.data is not None and config.algo_name in {
            "protonets",
            "maml_supervised",
            "matching_nets",
            "snail",
            "transfer",
        }
