"""``metarl compare``: end to end on tiny families and budgets, the paradigm table's arithmetic, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import TINY_TOML, run_cli
from test_cli import USER_FAMILY, one_clean_line

import envs  # noqa: F401  (registers the families)
from metarl import compare
from metarl.evaluation import AdaptationCurve

OUTPUTS = ("compare.json", "compare.md", "compare.png", "config.json")

RL_COMPARE = """
[compare]
budgets = [0, 20, 40]
num_tasks = 3
eval_episodes = 2
pretrain_steps = 40
pretrain_tasks = 5
transfer_modes = ["head", "full", "regularized"]
oracle = "{oracle}"
oracle_steps = 60

[env]
id = "{env_id}"
{env_extra}

[ppo]
n_steps = 20
batch_size = 10
n_epochs = 1
hidden_sizes = [8, 8]

[[meta]]
name = "MAML"
run = "{run}"
config = "{config}"
checkpoint = "latest"
steps = 1
"""


def scalar_steps(tb_dir: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def write_rl_compare(tmp_path: Path, env_id: str, oracle: str, env_extra: str = "") -> Path:
    maml = tmp_path / "maml.toml"
    maml.write_text(TINY_TOML.format(iterations=1, env_id=env_id).replace("[env]", f"[env]\n{env_extra}"))
    path = tmp_path / "compare.toml"
    path.write_text(
        RL_COMPARE.format(
            env_id=env_id, env_extra=env_extra, oracle=oracle, run=tmp_path / "maml_run", config=maml
        )
    )
    return path


def test_rl_compare_end_to_end_on_a_users_family(tmp_path: Path) -> None:
    """A family written by a user (no batched version, no analytic oracle) goes through unchanged:
    the MAML run is trained by the command, PPO from scratch / transfer / oracle run, every output exists."""
    (tmp_path / "my_family.py").write_text(USER_FAMILY)
    config = write_rl_compare(tmp_path, "my_family:LineFamily", "ppo", "max_episode_steps = 10")
    out = tmp_path / "out"
    proc = run_cli("compare", str(config), "--out", str(out), env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    assert (tmp_path / "maml_run" / "checkpoints" / "latest.pt").is_file()
    result = json.loads((out / "compare.json").read_text())
    methods = {m["name"]: m for m in result["methods"]}
    paradigms = sorted(m["paradigm"] for m in result["methods"])
    assert paradigms == ["meta", "oracle", "scratch", "transfer", "transfer", "transfer"]
    # MAML's budgets: one adaptation step = rollouts_per_task (4) episodes of the horizon (10)
    assert methods["MAML"]["budgets"] == [0, 40]
    scratch = next(m for m in result["methods"] if m["paradigm"] == "scratch")
    assert scratch["budgets"] == [0, 20, 40] and len(scratch["per_task"][0]) == 3
    assert all(len(row) == 3 for m in result["methods"] for row in m["per_task"])
    assert result["floor"] == pytest.approx(scratch["mean"][0])
    report = (out / "compare.md").read_text()
    assert "## Paradigm table" in report and "from scratch (PPO)" in report and "fast" in report
    tags = scalar_steps(out / "tb")
    assert tags["compare/MAML"] == [0, 40]
    assert "paradigm" in proc.stdout and "tensorboard --logdir" in proc.stdout


def test_rl_compare_on_navigation_uses_the_analytic_oracle(tmp_path: Path) -> None:
    config = write_rl_compare(tmp_path, "metarl/Navigation2D-v0", "analytic")
    spec = compare.load(config, ["compare.transfer_modes=[]", "compare.num_tasks=2"])
    compare.run_compare(spec, tmp_path / "out")
    result = json.loads((tmp_path / "out" / "compare.json").read_text())
    oracle = next(m for m in result["methods"] if m["paradigm"] == "oracle")
    family = gym.make("metarl/Navigation2D-v0").unwrapped
    tasks = family.sample_tasks(2, split="test", seed=0)
    assert oracle["per_task"][0] == pytest.approx([family.oracle_return(t, 100) for t in tasks])
    assert [m["paradigm"] for m in result["methods"]] == ["meta", "scratch", "oracle"]


def test_navigation_oracle_walks_straight_to_the_goal() -> None:
    from envs.navigation import NavigationTask

    family = gym.make("metarl/Navigation2D-v0").unwrapped
    # goal 0.25 along x: positions 0.1, 0.2, then 0.25 (reached, terminates): return −(0.15 + 0.05 + 0)
    assert family.oracle_return(NavigationTask(goal=(0.25, 0.0)), 100) == pytest.approx(-0.2, abs=1e-6)
    # no policy does better than the oracle: compare with a policy that overshoots
    task = NavigationTask(goal=(0.3, -0.2))
    env = gym.make("metarl/Navigation2D-v0")
    obs, _ = env.reset(options={"task": task})
    total, done = 0.0, False
    while not done:
        obs, r, term, trunc, _ = env.step(np.array([0.1, -0.1], np.float32))
        total += r
        done = term or trunc
    assert family.oracle_return(task, 100) > total


def test_bandit_oracle_is_the_best_arm() -> None:
    from envs.bandit import BanditTask

    family = gym.make("metarl/Bandit-K5-v0").unwrapped
    assert family.oracle_return(BanditTask((0.1, 0.7, 0.3, 0.2, 0.0)), 10) == pytest.approx(7.0)


def make_curve(name: str, paradigm: str, budgets: list[int], means: list[float]) -> compare.MethodCurve:
    curve = AdaptationCurve("return", means, [0.1] * len(means), [[m, m] for m in means])
    return compare.MethodCurve(name, paradigm, budgets, curve, seconds=1.0)


def test_budget_to_reach_and_score_at_follow_the_measured_points() -> None:
    fast = make_curve("meta", "meta", [0, 100, 200], [-40.0, -12.0, -8.0])
    # floor −40, oracle 0: normalised 0, 0.7, 0.8
    assert compare.budgets_to_reach(fast, -40.0, 0.0, 0.5) == 100
    assert compare.budgets_to_reach(fast, -40.0, 0.0, 0.9) is None
    assert fast.score_at(150) == -12.0 and fast.score_at(99) == -40.0
    assert math.isnan(make_curve("x", "scratch", [50], [1.0]).score_at(10))
    # lower is better (MSE): floor 4, oracle 0 → normalised (4 − s) / 4
    mse = make_curve("maml", "meta", [5, 10], [1.5, 0.3])
    assert compare.budgets_to_reach(mse, 4.0, 0.0, 0.5) == 5
    assert compare.budgets_to_reach(mse, 4.0, 0.0, 0.9) == 10


def test_paradigm_table_fills_the_course_claims_with_numbers() -> None:
    result = compare.Comparison(
        title="t",
        metric="return",
        budget_unit="environment steps",
        higher_is_better=True,
        curves=[
            make_curve("MAML", "meta", [0, 2000], [-40.0, -10.0]),
            make_curve("PPO", "scratch", [0, 2000, 20000], [-40.0, -35.0, -3.0]),
            make_curve("oracle", "oracle", [0], [0.0]),
        ],
        floor=-40.0,
        oracle=0.0,
        num_tasks=2,
        config={},
    )
    table = compare.paradigm_table(result)
    rows = {line.split("|")[2].strip(): line for line in table.splitlines()[2:]}
    assert set(rows) == {"MAML", "PPO"}
    assert "| -10.00 | 2000 | not reached | fast |" in rows["MAML"]
    assert "| -35.00 | 20000 | 20000 | slow |" in rows["PPO"]
    assert "return with ≤ 2000" in table


BAD = [
    ("[compare]\nbudget = [0]\n[env]\nid='metarl/Navigation2D-v0'\n", "unknown key 'compare.budget'"),
    ("[compare]\nbudgets = [10, 0]\n[env]\nid='metarl/Navigation2D-v0'\n", "ascending"),
    ("[compare]\nbudgets = [0]\n", "exactly one of [env]"),
    ("[compare]\noracle = 'best'\n[env]\nid='metarl/Navigation2D-v0'\n", "compare.oracle"),
    ("[env]\nid='metarl/Navigation2D-v0'\n[transfer]\nrun='x'\n", "[transfer] is for supervised"),
    ("[env]\nid='metarl/Navigation2D-v0'\n[ppo]\nfinetune='all'\n", "ppo.finetune"),
    ("[env]\nid='metarl/Navigation2D-v0'\n[[meta]]\nname='x'\n", "meta[0].run"),
    ("[data]\ndataset='sinusoid'\n[compare]\nbudgets=[0, 5]\n", "shots per class"),
    ("[env]\nid='metarl/Navigation2D-v0'\n[extra]\n", "unknown section"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_compare_files_fail_with_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    proc = run_cli("compare", str(path), "--out", str(tmp_path / "out"))
    one_clean_line(proc, message)
    assert not (tmp_path / "out").exists()


SINUSOID_RUN = """
[run]
iterations = 3
eval_every = 3
eval_tasks = 4
eval_steps = 2
[data]
dataset = "sinusoid"
shots = 5
[algo]
{algo}
"""


def test_supervised_compare_end_to_end_on_sinusoids(tmp_path: Path) -> None:
    """Runs trained by the command, the same held-out functions at every K, every output file written."""
    maml = tmp_path / "maml.toml"
    maml.write_text(SINUSOID_RUN.format(algo='name = "maml_supervised"\nnetwork = "mlp"\ninner_lr = 0.01'))
    transfer = tmp_path / "transfer.toml"
    transfer.write_text(
        SINUSOID_RUN.format(algo='name = "transfer"\nfinetune_lr = 0.01\nsteps_per_adapt = 2')
    )
    config = tmp_path / "compare.toml"
    config.write_text(
        f"""
[compare]
budgets = [2, 5]
num_tasks = 6
[data]
dataset = "sinusoid"
queries = 10
[transfer]
run = "{tmp_path / "transfer_run"}"
config = "{transfer}"
checkpoint = "latest"
[[meta]]
name = "MAML"
run = "{tmp_path / "maml_run"}"
config = "{maml}"
checkpoint = "latest"
"""
    )
    out = tmp_path / "out"
    proc = run_cli("compare", str(config), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    result = json.loads((out / "compare.json").read_text())
    assert result["metric"] == "mse" and result["higher_is_better"] is False
    names = [m["name"] for m in result["methods"]]
    assert names == [
        "MAML",
        "transfer, head fine-tuning",
        "transfer, full fine-tuning",
        "transfer, regularized fine-tuning",
        "from scratch (fresh network)",
    ]
    for method in result["methods"]:
        assert method["budgets"] == [2, 5] and all(len(row) == 6 for row in method["per_task"])
        assert all(math.isfinite(v) and v >= 0 for row in method["per_task"] for v in row)
    assert result["oracle"] == 0.0 and result["floor"] > 0.5  # E[y²] of the queries: amplitudes up to 5
    report = (out / "compare.md").read_text()
    assert "support points K" in report
    (out / "compare.md").unlink()
    compare.rewrite(out)  # the report renders again from compare.json alone
    assert (out / "compare.md").read_text() == report


def test_a_meta_run_of_another_family_is_refused(tmp_path: Path) -> None:
    config = write_rl_compare(tmp_path, "metarl/Navigation2D-v0", "analytic")
    assert (
        run_cli(
            "compare",
            str(config),
            "--out",
            str(tmp_path / "ok"),
            "--set",
            "compare.scratch=false",
            "--set",
            "compare.transfer_modes=[]",
            "--set",
            "compare.num_tasks=2",
        ).returncode
        == 0
    )
    text = config.read_text().replace(
        'id = "metarl/Navigation2D-v0"', 'id = "metarl/Navigation2D-v0"\nkwargs = { goal_high = 0.3 }'
    )
    config.write_text(text)
    one_clean_line(
        run_cli("compare", str(config), "--out", str(tmp_path / "bad")), "trained on another family"
    )


def test_a_meta_learner_without_an_env_step_cost_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from metarl.algorithms.maml_rl import MAMLRL
    from metarl.core import MetaLearner
    from metarl.errors import ConfigError

    config = write_rl_compare(tmp_path, "metarl/Navigation2D-v0", "analytic")
    spec = compare.load(config, ["compare.transfer_modes=[]", "compare.num_tasks=2", "compare.scratch=false"])
    monkeypatch.setattr(MAMLRL, "adaptation_cost", MetaLearner.adaptation_cost)
    with pytest.raises(ConfigError, match="cannot be placed on the env-step axis"):
        compare.run_compare(spec, tmp_path / "out")
