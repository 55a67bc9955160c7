"""The CLI end to end: a tiny run's directory, TensorBoard tags, evaluate, list, resume and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli

REQUIRED_TAGS = {
    "meta_train/return_pre_adapt",
    "meta_train/return_post_adapt",
    "meta_test/return_step_0",
    "meta_test/return_step_1",
    "losses/outer_loss",
    "time/env_steps_per_second",
}


def scalar_tags(tb_dir: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def learning_metrics(path: Path) -> list[dict]:
    """metrics.jsonl without wall-clock entries (those differ between any two runs)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import TINY_TOML

    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.toml"
    config.write_text(TINY_TOML.format(iterations=4, env_id="metarl/Navigation2D-v0"))
    run_dir = root / "run"
    proc = run_cli("train", str(config), "--run-dir", str(run_dir), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert f"tensorboard --logdir {run_dir / 'tb'}" in proc.stdout
    return run_dir


def test_train_writes_the_run_dir(trained_run: Path) -> None:
    for name in (
        "config.json",
        "tasks.json",
        "metrics.jsonl",
        "checkpoints/latest.pt",
        "checkpoints/best.pt",
    ):
        assert (trained_run / name).is_file(), name
    config = json.loads((trained_run / "config.json").read_text())
    assert config["algo"]["name"] == "maml_rl" and config["algo"]["gamma"] == 0.99  # defaults resolved
    assert len(json.loads((trained_run / "tasks.json").read_text())["tasks"]) == 4
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    assert all(b["env_steps"] > a["env_steps"] for a, b in zip(rows, rows[1:], strict=False))
    assert not list(trained_run.glob("checkpoints/*.tmp"))


def test_tensorboard_tags_use_env_steps(trained_run: Path) -> None:
    tags = scalar_tags(trained_run / "tb")
    assert REQUIRED_TAGS <= set(tags)
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert tags["meta_train/return_pre_adapt"] == [r["env_steps"] for r in rows]
    assert tags["meta_test/return_step_1"] == [rows[1]["env_steps"], rows[3]["env_steps"]]


def test_evaluate_prints_and_writes_the_table(trained_run: Path) -> None:
    proc = run_cli("evaluate", str(trained_run), "--num-tasks", "5", "--steps", "2")
    assert proc.returncode == 0, proc.stderr
    assert "return after 0 steps" in proc.stdout and "return after 2 steps" in proc.stdout
    result = json.loads((trained_run / "eval" / "latest_test.json").read_text())["maml_rl"]
    assert result["num_tasks"] == 5 and len(result["mean"]) == 3 and len(result["ci95"]) == 3
    assert (trained_run / "eval" / "latest_test.md").read_text().startswith("# maml_rl")
    assert (trained_run / "eval" / "latest_test.png").read_bytes()[:4] == b"\x89PNG"


def test_list_shows_families_and_algorithms() -> None:
    proc = run_cli("list")
    assert proc.returncode == 0, proc.stderr
    assert "metarl/Navigation2D-v0" in proc.stdout and "U[-0.5, 0.5]^2" in proc.stdout
    assert "maml_rl" in proc.stdout


def test_resume_after_kill_equals_uninterrupted(tiny_config, tmp_path: Path) -> None:
    config = tiny_config(iterations=30)
    full = tmp_path / "full"
    proc = run_cli("train", str(config), "--run-dir", str(full))
    assert proc.returncode == 0, proc.stderr

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "metarl.cli", "train", str(config), "--run-dir", str(killed)]
    child = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    metrics = killed / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = len(metrics.read_text().splitlines())
    assert 5 <= done < 30, "the run must be killed midway"

    proc = run_cli("train", str(config), "--run-dir", str(killed), "--resume")
    assert proc.returncode == 0, proc.stderr
    assert learning_metrics(killed / "metrics.jsonl") == learning_metrics(full / "metrics.jsonl")
    steps = scalar_tags(killed / "tb")["meta_train/return_post_adapt"]
    assert steps == sorted(set(steps)) and len(steps) == 30  # no duplicated points after resume


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def one_clean_line(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert pattern in lines[0], lines[0]


def test_bad_inputs_exit_2_with_one_line(trained_run: Path, tiny_config, tmp_path: Path) -> None:
    before = snapshot(trained_run)
    config = tiny_config()
    cases = [
        (["train", str(tmp_path / "missing.toml")], "does not exist"),
        (["train", str(config), "--set", "algo.bogus=1"], "unknown key 'algo.bogus'"),
        (
            ["train", str(config), "--set", "run.iterations='many'"],
            "run.iterations: expected an integer",
        ),
        (["train", str(config), "--set", "algo.inner_lr=-1"], "algo.inner_lr must be > 0"),
        (["train", str(config), "--set", "env.id='metarl/Nope-v0'"], "metarl/Navigation2D-v0"),
        (["train", str(config), "--set", "algo.name='nope'"], "valid: maml_rl"),
        (["train", str(config), "--run-dir", str(trained_run)], "already exists"),
        (
            [
                "train",
                str(config),
                "--run-dir",
                str(trained_run),
                "--resume",
                "--set",
                "algo.outer_lr=0.1",
            ],
            "differs in algo.outer_lr",
        ),
        (["train", str(config), "--device", "tpu"], "invalid choice"),
        (["evaluate", str(tmp_path)], "not a run dir"),
    ]
    for args, pattern in cases:
        one_clean_line(run_cli(*args), pattern)
    assert snapshot(trained_run) == before


def test_amend_continues_a_run_under_a_changed_schedule_and_records_it(tiny_config, tmp_path: Path) -> None:
    """``--resume --amend``: a changed algorithm key takes effect from the checkpoint on and is written to
    amendments.jsonl; without ``--amend`` it is refused; the keys that define the run never change."""
    import shutil

    plain, amended = tmp_path / "plain", tmp_path / "amended"
    assert run_cli("train", str(tiny_config(iterations=2)), "--run-dir", str(plain)).returncode == 0
    shutil.copytree(plain, amended)
    extend = ("--resume", "--set", "run.iterations=3")
    assert run_cli("train", "--run-dir", str(plain), *extend).returncode == 0
    change = ("--set", "algo.inner_lr=0.5")
    one_clean_line(run_cli("train", "--run-dir", str(amended), *extend, *change), "pass --amend")
    one_clean_line(run_cli("train", "--run-dir", str(amended), "--amend", *change), "with --resume")
    one_clean_line(
        run_cli("train", "--run-dir", str(amended), *extend, "--amend", "--set", "run.seed=5"),
        "differs in run.seed; these keys define",
    )
    assert not (amended / "amendments.jsonl").exists()
    proc = run_cli("train", "--run-dir", str(amended), *extend, *change, "--amend")
    assert proc.returncode == 0, proc.stderr
    assert "algo.inner_lr" in proc.stdout and "from iteration 2" in proc.stdout
    rows = [json.loads(line) for line in (amended / "amendments.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["key"], r["new"]) for r in rows] == [(2, "algo.inner_lr", 0.5)]
    assert rows[0]["old"] != 0.5
    assert json.loads((amended / "config.json").read_text())["algo"]["inner_lr"] == 0.5
    before, after = learning_metrics(plain / "metrics.jsonl"), learning_metrics(amended / "metrics.jsonl")
    assert before[:2] == after[:2]  # the checkpointed past is untouched
    ckpts = [torch.load(d / "checkpoints" / "latest.pt", weights_only=True) for d in (plain, amended)]
    weights = [ckpt["learner"]["policy"] for ckpt in ckpts]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the new step size acted


def test_corrupted_checkpoint_is_refused(trained_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    latest = copy / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated
    before = snapshot(copy)
    one_clean_line(
        run_cli("train", str(copy / "config.json"), "--run-dir", str(copy), "--resume"),
        "not valid TOML",
    )
    one_clean_line(run_cli("train", "--run-dir", str(copy), "--resume"), "corrupted or truncated")
    one_clean_line(run_cli("evaluate", str(copy)), "corrupted or truncated")
    assert snapshot(copy) == before


USER_FAMILY = '''
import dataclasses
import gymnasium as gym
import numpy as np
from envs.base import Task, TaskFamily


@dataclasses.dataclass(frozen=True)
class LineTask(Task):
    target: float


class LineFamily(TaskFamily, gym.Env):
    """A point on a line must reach a hidden target; no batched version (gymnasium path)."""

    task_type = LineTask
    task_distribution = "target ~ U[-1, 1]"

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Box(-0.2, 0.2, (1,), np.float32)
        self._x = np.zeros(1, np.float32)
        self._init_task()

    def _draw_task(self, rng):
        return LineTask(float(rng.uniform(-1, 1) * self.scale))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._reset_task(options)
        self._x = np.zeros(1, np.float32)
        return self._x.copy(), {}

    def step(self, action):
        self._x = (self._x + np.clip(action, -0.2, 0.2)).astype(np.float32)
        return self._x.copy(), -abs(float(self._x[0]) - self.get_task().target), False, False, {}


gym.register("user/Line-v0", entry_point=LineFamily, max_episode_steps=10)
'''


def test_user_family_trains_with_the_same_command(tiny_config, tmp_path: Path) -> None:
    (tmp_path / "my_family.py").write_text(USER_FAMILY)
    config = tiny_config(iterations=2, env_id="my_family:LineFamily", extra="")
    text = config.read_text().replace(
        'id = "my_family:LineFamily"',
        'id = "my_family:LineFamily"\nmax_episode_steps = 10\nkwargs = { scale = 0.5 }',
    )
    config.write_text(text)
    env = {"PYTHONPATH": str(tmp_path)}
    run_dir = tmp_path / "run"
    proc = run_cli("train", str(config), "--run-dir", str(run_dir), env=env)
    assert proc.returncode == 0, proc.stderr
    tasks = json.loads((run_dir / "tasks.json").read_text())["tasks"]
    assert all(abs(t["target"]) <= 0.5 for t in tasks)
    proc = run_cli("evaluate", str(run_dir), "--num-tasks", "3", "--steps", "1", "--trust-code", env=env)
    assert proc.returncode == 0, proc.stderr
    registered = tiny_config(iterations=1, env_id="my_family:user/Line-v0")
    proc = run_cli("train", str(registered), "--run-dir", str(tmp_path / "run_registered"), env=env)
    assert proc.returncode == 0, proc.stderr
    one_clean_line(
        run_cli(
            "train",
            str(config),
            "--run-dir",
            str(tmp_path / "r2"),
            "--set",
            "env.id='my_family:Nope'",
            env=env,
        ),
        "has no class 'Nope'",
    )


def test_resume_extends_a_finished_run_but_never_shortens_it(tiny_config, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert run_cli("train", str(tiny_config(iterations=2)), "--run-dir", str(run_dir)).returncode == 0
    saved = json.loads((run_dir / "config.json").read_text())
    del saved["algo"]["baseline_reg"]  # a run written before this key existed: it takes its default
    (run_dir / "config.json").write_text(json.dumps(saved))
    proc = run_cli(
        "train",
        "--run-dir",
        str(run_dir),
        "--resume",
        "--set",
        "run.iterations=4",
        "--set",
        "run.eval_every=2",
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["iteration"] for r in learning_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]
    assert json.loads((run_dir / "config.json").read_text())["run"]["iterations"] == 4
    one_clean_line(
        run_cli("train", "--run-dir", str(run_dir), "--resume", "--set", "run.iterations=3"),
        "differs in run.iterations",
    )
    one_clean_line(
        run_cli("train", "--run-dir", str(run_dir), "--resume", "--set", "run.seed=5"), "differs in run.seed"
    )
