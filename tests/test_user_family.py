"""A family written only from the contract (nothing from ``envs/`` subclassed) works with every RL learner.

It trains with ``maml_rl``, ``rl2`` and ``pretrained_rl`` (stepped through gymnasium copies), goes through
``metarl compare`` and ``metarl evaluate``, resumes exactly after ``kill -9``; a ``make_batched`` without a
``seed`` parameter is used as it is; each contract violation is one line, exit 2, and no run dir.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from metarl.cli import main

FAMILY = '''
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch


@dataclass(frozen=True)
class Target:
    x: float


class Line(gym.Env):
    """Move along a line to an unseen target; reward -|position - target|."""

    observation_space = gym.spaces.Box(-5.0, 5.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, scale=1.0):
        self.scale, self.task, self.pos = scale, Target(0.0), np.zeros(1, np.float32)

    def sample_tasks(self, n, *, split="train", seed=None):
        rng = np.random.default_rng([0 if seed is None else seed, int(split == "test")])
        return [Target(float(x)) for x in rng.uniform(-self.scale, self.scale, n)]

    def set_task(self, task):
        if not isinstance(task, Target):
            raise TypeError(f"expected a Target, got {task!r}")
        self.task = task

    def get_task(self):
        return self.task

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        self.pos = self.np_random.uniform(-0.05, 0.05, 1).astype(np.float32)
        return self.pos.copy(), {}

    def step(self, action):
        self.pos = np.clip(self.pos + 0.2 * np.clip(action, -1, 1), -5, 5).astype(np.float32)
        return self.pos.copy(), -abs(float(self.pos[0]) - self.task.x), False, False, {}


class BatchedLine:
    """The README's make_batched signature: no seed (the start noise is left out: positions start at 0)."""

    def __init__(self, tasks, envs_per_task, device, horizon):
        self.num_tasks, self.envs_per_task, self.horizon = len(tasks), envs_per_task, horizon
        self.targets = torch.tensor([[t.x] for t in tasks], device=device).expand(-1, envs_per_task)
        self.pos = torch.zeros(len(tasks), envs_per_task, 1, device=device)

    def reset(self):
        self.pos.zero_()
        return self.pos.clone()

    def step(self, actions):
        self.pos = (self.pos + 0.2 * actions.clamp(-1, 1)).clamp(-5, 5)
        reward = -(self.pos[..., 0] - self.targets).abs()
        done = torch.zeros_like(reward, dtype=torch.bool)
        return self.pos.clone(), reward, done, done


class StopsEarly(Line):
    """Terminates on its second step when the target is positive (to test the adapter's masking)."""

    def step(self, action):
        obs, reward, _, truncated, info = super().step(action)
        self.steps = getattr(self, "steps", 0) + 1
        return obs, reward, self.task.x > 0 and self.steps % 2 == 0, truncated, info


class FastLine(Line):
    def make_batched(self, tasks, envs_per_task, device="cpu", horizon=None):
        return BatchedLine(tasks, envs_per_task, device, horizon)


# contract violations, one each
class NoSampleTasks(Line):
    sample_tasks = None


class NotADataclass(Line):
    def sample_tasks(self, n, *, split="train", seed=None):
        return [{"x": 0.1 * i} for i in range(n)]

    def set_task(self, task):
        self.task = task


@dataclass(frozen=True)
class ArrayTarget:
    x: np.ndarray


class NotJSON(Line):
    def sample_tasks(self, n, *, split="train", seed=None):
        return [ArrayTarget(np.full(2, 0.1 * i)) for i in range(n)]

    def set_task(self, task):
        if not isinstance(task, ArrayTarget):
            raise TypeError("not an ArrayTarget")
        self.task = task


class LosesTask(Line):
    def reset(self, *, seed=None, options=None):
        if not options:
            self.task = Target(0.0)  # a plain reset() forgets the task
        return super().reset(seed=seed, options=options)


class AcceptsGarbage(Line):
    def set_task(self, task):
        self.task = task
'''

RUN = """
[run]
iterations = {iterations}
eval_every = {eval_every}
eval_tasks = 2
eval_steps = 1
seed = 1

[env]
id = "line_family:{cls}"
max_episode_steps = 5

[algo]
name = "{algo}"
{algo_keys}
"""

ALGO_KEYS = {
    "maml_rl": 'meta_batch_size = 2\nrollouts_per_task = 2\nhidden_sizes = [8, 8]\nouter = "vpg"',
    "pretrained_rl": 'meta_batch_size = 2\nrollouts_per_task = 2\nhidden_sizes = [8, 8]\nouter = "vpg"',
    "rl2": "meta_batch_size = 4\nnum_minibatches = 2\nhidden_size = 8\nepisodes_per_trial = 2",
}


@pytest.fixture
def family_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "line_family.py").write_text(FAMILY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_run(where: Path, algo: str, cls: str = "Line", iterations: int = 2, eval_every: int = 1) -> Path:
    path = where / f"{algo}_{cls}_{iterations}.toml"
    keys = ALGO_KEYS[algo]
    text = RUN.format(iterations=iterations, eval_every=eval_every, cls=cls, algo=algo, algo_keys=keys)
    path.write_text(text)
    return path


def metric_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


@pytest.mark.parametrize("algo", ["maml_rl", "rl2", "pretrained_rl"])
def test_every_rl_learner_trains_and_evaluates_a_family_without_envs_base(
    family_dir: Path, algo: str, capsys: pytest.CaptureFixture
) -> None:
    run_dir = family_dir / f"run_{algo}"
    config = write_run(family_dir, algo)
    assert main(["train", str(config), "--run-dir", str(run_dir), "--device", "cpu"]) == 0
    saved = json.loads((run_dir / "tasks.json").read_text())
    assert saved["task_type"] == "line_family:Target" and len(saved["tasks"]) == 2
    last = metric_rows(run_dir)[-1]
    assert main(["evaluate", str(run_dir), "--trust-code"]) == 0
    result = json.loads((run_dir / "eval" / "latest_test.json").read_text())[algo]
    # the run's own settings (2 held-out tasks of tasks.json, 1 step) and the training-time numbers
    assert result["num_tasks"] == 2 and result["steps"] == [0, 1]
    assert result["mean"] == pytest.approx([last["meta_test/return_step_0"], last["meta_test/return_step_1"]])
    assert (run_dir / "eval" / "latest_test.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["evaluate", str(run_dir), "--trust-code", "--checkpoint", "best", "--split", "train"]) == 0
    assert (run_dir / "eval" / "best_train.md").is_file() and (run_dir / "eval" / "latest_test.md").is_file()
    capsys.readouterr()


def test_make_batched_without_seed_is_used_by_rl2_and_maml(
    family_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    import line_family
    import torch

    from metarl.rollouts import BatchedFamily, GymBatchedEnv

    assert BatchedFamily(line_family.FastLine).native
    for algo in ("rl2", "maml_rl"):
        run_dir = family_dir / f"fast_{algo}"
        assert main(["train", str(write_run(family_dir, algo, "FastLine")), "--run-dir", str(run_dir)]) == 0
        first = capsys.readouterr().out.splitlines()[0]
        assert f"run dir {run_dir}" in first and "line_family:FastLine" in first and algo in first
        # run.device "auto" is stored as the device it resolved to
        resolved = "cuda" if torch.cuda.is_available() else "cpu"
        assert json.loads((run_dir / "config.json").read_text())["run"]["device"] == resolved
        assert f"device {resolved}" in first
    # and gymnasium copies: the same seed gives the same episodes, another seed other ones
    family = BatchedFamily(lambda: line_family.Line())
    tasks = family.family.sample_tasks(2, seed=0)
    first = [family.make_batched(tasks, 3, horizon=4, seed=s).reset() for s in (7, 7, 8)]
    assert isinstance(family.make_batched(tasks, 1, horizon=4), GymBatchedEnv)
    assert first[0].shape == (2, 3, 1) and first[0].equal(first[1]) and not first[0].equal(first[2])


def test_gym_copies_follow_the_batched_protocol(family_dir: Path) -> None:
    """An episode that ended is not stepped again: last observation, zero reward, terminated until reset;
    truncated for all at the horizon; reset keeps the tasks."""
    import line_family
    import torch

    from metarl.rollouts import BatchedFamily

    family = BatchedFamily(line_family.StopsEarly)
    tasks = [line_family.Target(0.5), line_family.Target(-0.5)]
    env = family.make_batched(tasks, 1, horizon=3, seed=0)
    for _ in range(2):  # two episodes: the second starts from reset with the same tasks
        env.reset()
        flags = []
        for _ in range(3):
            obs, reward, terminated, truncated = env.step(torch.ones(2, 1, 1))
            ended, at_horizon = terminated[:, 0].tolist(), bool(truncated.all())
            flags.append((float(obs[0, 0, 0]), float(reward[0, 0]), ended, at_horizon))
        assert [f[2] for f in flags] == [[False, False], [True, False], [True, False]]
        assert flags[2][0] == flags[1][0] and flags[2][1] == 0.0 and flags[1][1] != 0.0
        assert [f[3] for f in flags] == [False, False, True]
    assert [c.unwrapped.get_task() for c in env.copies] == tasks


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        ("NoSampleTasks", "no sample_tasks method"),
        ("NotADataclass", "is not a dataclass instance"),
        ("NotJSON", "is not JSON-serialisable"),
        ("LosesTask", "the task is lost on a plain reset()"),
        ("AcceptsGarbage", "set_task accepts garbage"),
    ],
)
def test_each_contract_violation_is_one_line_exit_2_and_no_run_dir(
    family_dir: Path, cls: str, message: str, capsys: pytest.CaptureFixture
) -> None:
    run_dir = family_dir / "never"
    assert main(["train", str(write_run(family_dir, "maml_rl", cls)), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err
    assert not run_dir.exists()
    assert main(["check-family", f"line_family:{cls}", "--max-episode-steps", "5"]) == 2
    assert message in capsys.readouterr().out


def test_check_family_prints_what_passed(family_dir: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["line_family:Line", "--kwargs", '{"scale": 2.0}', "--max-episode-steps", "5"]
    assert main(["check-family", *args]) == 0
    out = capsys.readouterr().out
    assert "ok    gymnasium check_env" in out and "gymnasium copies" in out
    assert out.count("ok    ") >= 10


def test_compare_runs_a_family_without_envs_base(family_dir: Path) -> None:
    maml, rl2 = write_run(family_dir, "maml_rl"), write_run(family_dir, "rl2")
    spec = family_dir / "compare.toml"
    spec.write_text(
        f"""
[compare]
budgets = [0, 10]
num_tasks = 2
eval_episodes = 1
transfer_modes = []
oracle = "ppo"
oracle_steps = 10

[env]
id = "line_family:Line"
max_episode_steps = 5

[ppo]
n_steps = 10
batch_size = 10
n_epochs = 1
hidden_sizes = [8]

[[meta]]
name = "MAML"
run = "{family_dir / "cmp_maml"}"
config = "{maml}"
steps = 1

[[meta]]
name = "RL2"
run = "{family_dir / "cmp_rl2"}"
config = "{rl2}"
steps = 1
"""
    )
    out = family_dir / "compare_out"
    assert main(["compare", str(spec), "--out", str(out), "--trust-code"]) == 0
    methods = {m["name"]: m for m in json.loads((out / "compare.json").read_text())["methods"]}
    assert {"MAML", "RL2"} <= set(methods)
    assert methods["MAML"]["budgets"] == [0, 10]  # one step = 2 episodes of 5 steps
    assert methods["RL2"]["budgets"] == [0, 5]  # one segment = one episode of 5 steps


def test_resume_after_kill_9_equals_an_uninterrupted_run(family_dir: Path) -> None:
    config = write_run(family_dir, "maml_rl", iterations=15, eval_every=5)
    env = {"PYTHONPATH": str(family_dir)}
    full = family_dir / "full"
    assert main(["train", str(config), "--run-dir", str(full)]) == 0

    killed = family_dir / "killed"
    child = subprocess.Popen(
        [sys.executable, "-m", "metarl.cli", "train", str(config), "--run-dir", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )
    metrics = killed / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert 2 <= len(metrics.read_text().splitlines()) < 15, "the run must be killed midway"
    proc = run_cli("train", "--run-dir", str(killed), "--resume", "--trust-code", env=env)
    assert proc.returncode == 0, proc.stderr
    assert metric_rows(killed) == metric_rows(full)


HIDE_EXTRAS = "import sys; sys.modules['mujoco'] = None; sys.modules['metaworld'] = None; "


def test_list_and_train_without_the_extras_say_how_to_install_them(tmp_path: Path) -> None:
    """A venv without the mujoco / metaworld extras (their imports hidden; one subprocess): list exits 0
    with the install command of each missing extra; training a MuJoCo family and gym.make say the same one
    line, and training writes nothing."""
    from envs.base import missing_extra

    config = tmp_path / "cheetah.toml"
    config.write_text('[env]\nid = "metarl/HalfCheetahVel-v0"\n[algo]\nname = "maml_rl"\n')
    run_dir = tmp_path / "never"
    args = ["train", str(config), "--run-dir", str(run_dir)]
    code = (
        HIDE_EXTRAS
        + f"""
import gymnasium as gym
import envs
from metarl.cli import main
print("@@list", main(["list"]), flush=True)
print("@@train", main({args!r}), flush=True)
try:
    gym.make("metarl/HalfCheetahVel-v0")
except ImportError as exc:
    print("@@make", exc, flush=True)
"""
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    out = proc.stdout.splitlines()
    assert proc.returncode == 0 and "@@list 0" in out and "@@train 2" in out, (proc.stdout, proc.stderr)
    assert all(name in proc.stdout for name in ("metarl/Navigation2D-v0", "rl2", "protonets", "maml_rl"))
    cheetah = next(line for line in out if "HalfCheetahVel" in line)
    assert cheetah.strip().endswith('pip install "metarl[mujoco]"')
    ml10 = next(line for line in out if "ML10" in line)
    assert ml10.strip().endswith('pip install "metarl[metaworld]"')
    # train: exactly one line on stderr, the missing-extra line; gym.make raises the same line
    assert proc.stderr.strip() == f"metarl: error: {missing_extra('mujoco')}" and not run_dir.exists()
    assert f"@@make {missing_extra('mujoco')}" in out
