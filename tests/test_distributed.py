"""Data-parallel meta-training (``metarl.distributed``): 2 gloo ranks on the CPU against 1 process.

The function-level checks give both ranks the same fixed meta-batch (fixed rollouts / episodes); each rank
takes its half, runs one meta-update through the learner's collectives, and the parameters must equal
those of one process updating on the whole meta-batch (max abs difference ≤ 1e-6). One spawn of two
workers runs every check (interpreter start-up dominates); each test compares one learner.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metarl import distributed

NAV = "metarl/Navigation2D-v0"
CPU = torch.device("cpu")
TOLERANCE = 1e-6


# -- the learners' meta-updates on a fixed meta-batch of 4 tasks -------------------------------------------
Check = Callable[[int, int], dict[str, torch.Tensor]]


def _maml_rl(fvp: str, outer: str = "trpo", **overrides: Any) -> Check:
    """One outer step of MAML-RL on rank ``r``'s share of fixed rollouts of 4 Navigation2D tasks.

    ``cg_damping = 0.1``: at this tiny size the Fisher is nearly singular and 10 undamped conjugate-gradient
    iterations amplify float32 rounding (a mean of two half-batch means vs one mean) far beyond 1e-6; the
    damped system keeps the comparison about the collectives, not about the conditioning.
    """

    def run(r: int, world: int) -> dict[str, torch.Tensor]:
        from metarl.algorithms.maml_rl import MAMLRL, MAMLRLConfig, OldPolicy, _task_slice
        from metarl.families import FamilyTaskSampler, env_factory
        from metarl.rollouts import RolloutSampler

        config = MAMLRLConfig(
            hidden_sizes=(8,),
            meta_batch_size=4,
            rollouts_per_task=3,
            fvp=fvp,
            outer=outer,
            cg_damping=0.1,
            **overrides,
        )
        make_env = env_factory(NAV, {}, 10)
        sampler = RolloutSampler(make_env, 10, config.rollouts_per_task, torch.device("cpu"), 0)
        learner = MAMLRL(config, sampler, 0)
        tasks = FamilyTaskSampler(make_env()).held_out(4, seed=1)
        params, supports = learner.initial(tasks), []
        meta = {k: v.detach() for k, v in learner.meta_parameters().items()}
        for step in range(config.num_inner_steps):
            supports.append(learner.support(tasks, params, step))
            params = learner._inner_step(params, supports[-1], learner._lr(meta, step, True), False)
        query = learner.support(tasks, params, config.num_inner_steps)
        old = learner._old_policy(params, query)
        part = slice(r * 4 // world, (r + 1) * 4 // world)
        before = _snapshot(learner.meta_parameters())
        step_fn = {"trpo": learner._trpo_step, "vpg": learner._vpg_step, "ppo": learner._ppo_step}[outer]
        step_fn(
            [_task_slice(b, part) for b in supports],
            _task_slice(query, part),
            OldPolicy(*(t[:, part] for t in old)),
        )
        return {**_snapshot(learner.meta_parameters()), **_snapshot(before, "initial/")}

    return run


def _snapshot(params: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().clone() for k, v in params.items()}


def _maml_supervised(r: int, world: int) -> dict[str, torch.Tensor]:
    """One second-order Meta-SGD step of supervised MAML on rank ``r``'s share of 4 fixed sinusoid tasks (the
    tasks carry their data points)."""
    import numpy as np

    from metarl.algorithms.maml_supervised import MAMLSupervised, MAMLSupervisedConfig
    from metarl.data import SinusoidSampler

    config = MAMLSupervisedConfig(
        meta_batch_size=4, num_inner_steps=2, inner_lr=0.01, network="mlp", learn_inner_lr=True
    )
    sampler = SinusoidSampler()
    learner = MAMLSupervised(config, sampler, torch.device("cpu"), ways=0, seed=0)
    tasks = sampler.sample(4, split="train", rng=np.random.default_rng(1))
    before = {**learner.state_dict()["params"], **learner.state_dict()["inner_lrs"]}
    learner.meta_update(tasks[r * 4 // world : (r + 1) * 4 // world])
    after = {**learner.state_dict()["params"], **learner.state_dict()["inner_lrs"]}
    return {**after, **_snapshot(before, "initial/")}


def _rl2(r: int, world: int) -> dict[str, torch.Tensor]:
    """Two PPO epochs of RL² (the advantage normaliser, the value normaliser's moments and the gradients over
    ranks) on rank ``r``'s trials of one fixed rollout of 4 bandit tasks."""
    import numpy as np

    from metarl.algorithms import ALGORITHMS
    from metarl.config import resolve

    env = {"id": "metarl/Bandit-K5-v0", "kwargs": {"num_pulls": 10}, "max_episode_steps": 10}
    algo = {"name": "rl2", "meta_batch_size": 4, "episodes_per_trial": 1, "hidden_size": 16, "lr": 0.01}
    raw = {"run": {"seed": 0}, "env": env, "algo": {**algo, "ppo_epochs": 2, "num_minibatches": 1}}
    family, learner = ALGORITHMS["rl2"].build(resolve(raw), torch.device("cpu"))
    tasks = family.sample(4, split="train", rng=np.random.default_rng(1))
    env_ = learner._make_env(tasks, 1, learner.generator)
    segments = learner.config.segments_per_trial
    traj, _ = learner._rollout(env_, learner.zero_state(4), segments, learner.generator)
    rows = slice(r * 4 // world, (r + 1) * 4 // world)  # one trial per task, task-major rows
    mine = type(traj)(*(t[:, rows] for t in traj))
    learner._make_env = lambda *args: None  # the fixed rollout instead of a fresh one
    learner._rollout = lambda *args: (mine, None)
    before = _snapshot(learner.net.state_dict(), "initial/")
    learner.meta_update(tasks[rows])
    return {**_snapshot(learner.net.state_dict()), **before}


CHECKS: dict[str, Check] = {
    "maml_supervised_meta_sgd": _maml_supervised,
    "rl2_ppo": _rl2,
    "maml_trpo_gauss_newton": _maml_rl("gauss_newton"),
    "maml_trpo_hessian": _maml_rl("hessian"),
    "maml_trpo_meta_sgd": _maml_rl("gauss_newton", learn_inner_lr=True),
    "maml_vpg": _maml_rl("gauss_newton", outer="vpg", outer_lr=0.01),
    "maml_ppo": _maml_rl("gauss_newton", outer="ppo", outer_lr=0.01),
    "pretrained_rl_trpo": _maml_rl("gauss_newton", num_inner_steps=0),  # registered as pretrained_rl
}


#: the learners that put a whole meta-batch through BatchNorm at once: algo table of each
BATCHNORM_LEARNERS: dict[str, dict[str, Any]] = {
    "protonets": {"hidden_channels": 8},
    "matching_nets": {"hidden_channels": 8},
    "snail": {"hidden_channels": 8, "tc_filters": 8, "key_sizes": [8, 8, 8], "value_sizes": [8, 8, 8]},
    "transfer": {"hidden_channels": 8, "replay_examples": 4},
}


def _batchnorm_learner(name: str, r: int, world: int, images: Path) -> dict[str, torch.Tensor]:
    """Two meta-updates of learner ``name`` (built by the registry) on rank ``r``'s share of 4 episodes: its
    network, BatchNorm's running statistics included, and the episodes it counted.

    Its Adam is swapped for SGD: Adam's first step is ``lr · sign(g)``, and the conv biases in front of
    BatchNorm have an exact gradient of 0, i.e. pure float rounding, whose sign changes with any change of
    summation order (two half-batch sums instead of one); SGD keeps the comparison about the collectives.
    SNAIL's support-set shuffles: rank 1 first draws rank 0's rows, so every rank uses the rows of the one
    shuffle that one process draws for the whole meta-batch.
    """
    import numpy as np
    from fewshot_fixtures import make_image_folder

    from metarl.algorithms import ALGORITHMS
    from metarl.config import resolve

    data = {"dataset": "image_folder", "root": str(make_image_folder(images, 6, 3, 4)), "ways": 3}
    data |= {"shots": 1, "queries": 2}
    algo = {"name": name, "meta_batch_size": 4, **BATCHNORM_LEARNERS[name]}
    tasks, learner = ALGORITHMS[name].build(resolve({"run": {"seed": 0}, "data": data, "algo": algo}), CPU)
    learner.optimizer = torch.optim.SGD(learner.net.parameters(), lr=0.01)
    before = _snapshot(learner.net.state_dict(), "initial/")
    rng = np.random.default_rng(1)
    lo, hi = r * 4 // world, (r + 1) * 4 // world
    for _ in range(2):
        if name == "snail" and lo:
            torch.rand(lo, 3, generator=learner.generator)  # the rows of the ranks before this one
        learner.meta_update(tasks.sample(4, split="train", rng=rng)[lo:hi])
        if name == "snail" and hi < 4:
            torch.rand(4 - hi, 3, generator=learner.generator)  # the rows of the ranks after this one
    seen = {"episodes_seen": torch.tensor(learner.episodes_seen)} if name != "transfer" else {}
    return {**_snapshot(learner.net.state_dict()), **before, **seen}


def _worker(r: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=r, world_size=world)
    try:
        results = {name: check(r, world) for name, check in CHECKS.items()}
        for name in BATCHNORM_LEARNERS:
            results[name] = _batchnorm_learner(name, r, world, Path(f"{out}.images.{r}.{name}"))
        torch.save(results, f"{out}.{r}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict[str, torch.Tensor]]]:
    """Every check's parameters on rank 0 and rank 1 of one 2-process gloo group."""
    tmp = tmp_path_factory.mktemp("dist")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = (2, str(tmp / "store"), str(tmp / "out"))
    mp.start_processes(_worker, args=args, nprocs=2, start_method="spawn")
    return [torch.load(tmp / f"out.{r}") for r in range(2)]


@pytest.mark.parametrize("name", list(CHECKS))
def test_one_meta_update_on_two_ranks_equals_one_process(
    name: str, two_ranks: list[dict[str, dict[str, torch.Tensor]]]
) -> None:
    assert distributed.world_size() == 1  # the test process itself has no process group
    single = CHECKS[name](0, 1)
    for r in range(2):
        for key, value in single.items():
            diff = (two_ranks[r][name][key] - value).abs().max().item()
            assert diff <= TOLERANCE, f"{name}: rank {r} differs in {key} by {diff:.2e}"
    after = [k for k in single if not k.startswith("initial/")]
    assert any(not torch.equal(single[k], single["initial/" + k]) for k in after)  # the step did something


@pytest.mark.parametrize("name", list(BATCHNORM_LEARNERS))
def test_batchnorm_over_the_meta_batch_of_two_ranks_equals_one_process(
    name: str, two_ranks: list[dict[str, dict[str, torch.Tensor]]], tmp_path: Path
) -> None:
    """ProtoNets, Matching Nets, SNAIL and transfer's pretraining normalise the whole meta-batch in one
    BatchNorm batch; on 2 ranks their BatchNorm sums over ranks (``distributed.sync_batch_norm_``), so two
    meta-updates give one process's network — weights and running statistics — and count its episodes."""
    single = _batchnorm_learner(name, 0, 1, tmp_path / "images")
    for r in range(2):
        for key, value in single.items():
            diff = (two_ranks[r][name][key].double() - value.double()).abs().max().item()
            assert diff <= TOLERANCE, f"{name}: rank {r} differs in {key} by {diff:.2e}"
    stats = [k for k in single if k.endswith("running_mean") and not k.startswith("initial/")]
    assert stats and all(not torch.equal(single[k], single["initial/" + k]) for k in stats)
    assert name == "transfer" or int(single["episodes_seen"]) == 2 * 4


def test_shard_and_collectives_are_the_identity_at_world_size_one() -> None:
    tasks = list(range(6))
    assert distributed.shard(tasks) == tasks and distributed.shard_bounds(6) == (0, 6)
    v = torch.arange(3.0)
    assert distributed.all_reduce_mean(v) is v
    assert distributed.all_gather_tensor(v) is v
    assert distributed.reduce_metrics({"env_steps": 5.0, "x": 2.0}) == {"env_steps": 5.0, "x": 2.0}
    assert distributed.rank_seed(7) == 7
    distributed.check_divisible(5, "algo.meta_batch_size")  # any size divides by 1


def test_ranks_share_the_meta_batch_of_the_task_stream() -> None:
    """The trainer's ``shard(sample(...))`` on 2 ranks: rank 0's slice then rank 1's is the meta-batch one
    process draws, iteration after iteration (every rank draws from the same task stream)."""
    import numpy as np

    from metarl.families import FamilyTaskSampler, env_factory

    family = FamilyTaskSampler(env_factory(NAV, {}, 10)())
    single_rng, rank_rngs = np.random.default_rng(3), [np.random.default_rng(3) for _ in range(2)]
    for _ in range(3):
        batch = family.sample(4, split="train", rng=single_rng)
        shards = []
        for r, rng in enumerate(rank_rngs):
            with _as_rank(r, 2):
                shards += distributed.shard(family.sample(4, split="train", rng=rng))
        assert [t.to_dict() for t in shards] == [t.to_dict() for t in batch]
    with _as_rank(1, 2), pytest.raises(Exception, match="algo.meta_batch_size = 3 must be divisible by"):
        distributed.check_divisible(3, "algo.meta_batch_size")


class _as_rank:
    """Pretend to be rank ``r`` of ``world`` (``world_size`` / ``rank`` only: no collective is called)."""

    def __init__(self, r: int, world: int) -> None:
        self.patch = pytest.MonkeyPatch()
        self.patch.setattr(distributed, "world_size", lambda: world)
        self.patch.setattr(distributed, "rank", lambda: r)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.patch.undo()


# -- whole runs: metarl train --nproc 2, kill -9 of a rank, --resume, two "nodes" ---------------------------
RUN_TOML = """
[run]
iterations = {iterations}
eval_every = 4
eval_tasks = 3
eval_steps = 1
eval_blocks = {eval_blocks}
seed = 3
num_threads = 1
checkpoint_every = 1

[env]
id = "metarl/Navigation2D-v0"
max_episode_steps = 10

[algo]
name = "maml_rl"
meta_batch_size = 2
rollouts_per_task = 2
hidden_sizes = [8]
"""


def _metarl(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "metarl", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "METARL_COLLECTIVE_TIMEOUT_S": "60"}


def _rows(run_dir: Path) -> list[dict[str, float]]:
    """metrics.jsonl without the wall-clock keys (time/*)."""
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted 12-iteration run on 2 processes: ``(config, run dir)``."""
    import subprocess

    tmp = tmp_path_factory.mktemp("runs")
    config = tmp / "run.toml"
    config.write_text(RUN_TOML.format(eval_blocks=2, iterations=12))
    run_dir = tmp / "uninterrupted"
    done = subprocess.run(
        _metarl("train", str(config), "--nproc", "2", "--run-dir", str(run_dir)),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return config, run_dir


def test_two_rank_run_draws_the_single_process_task_stream(
    two_rank_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """Same held-out tasks, same task-stream position after every checkpoint, env steps summed over ranks."""
    import subprocess

    config, two = two_rank_run
    one = tmp_path / "one"
    args = _metarl("train", str(config), "--run-dir", str(one))
    done = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (one / "tasks.json").read_text() == (two / "tasks.json").read_text()
    assert [r["env_steps"] for r in _rows(one)] == [r["env_steps"] for r in _rows(two)]
    single = torch.load(one / "checkpoints" / "latest.pt", weights_only=False)
    assert "world_size" not in single  # a single process writes today's checkpoint
    two_ckpt = torch.load(two / "checkpoints" / "latest.pt", weights_only=False)
    assert single["task_rng"] == two_ckpt["task_rng"]  # 12 meta-batches drawn from the same stream
    assert two_ckpt["world_size"] == 2 and len(two_ckpt["rank_generators"]) == 2
    noise = [states[0] for states in two_ckpt["rank_generators"]]  # the action-noise generators
    assert not torch.equal(noise[0], noise[1])  # each rank its own rollouts


def test_kill_of_a_rank_stops_the_job_and_resume_gives_the_uninterrupted_metrics(
    two_rank_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import subprocess
    import time

    config, uninterrupted = two_rank_run
    run_dir = tmp_path / "killed"
    job = subprocess.Popen(
        _metarl("train", str(config), "--nproc", "2", "--run-dir", str(run_dir)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert job.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
        time.sleep(0.05)
    victim = next(pid for pid in _children(job.pid) if _environ(pid).get("RANK") == "1")
    os.kill(victim, 9)
    killed_at = time.monotonic()
    _, stderr = job.communicate(timeout=60)
    assert time.monotonic() - killed_at < 30  # the whole job ends within seconds
    assert job.returncode != 0
    last = stderr.strip().splitlines()[-1]
    assert f"rank 1 of 2 (pid {victim}) was killed by SIGKILL" in last, stderr[-2000:]
    assert torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)["iteration"] >= 1

    from metarl.cli import main

    assert main(["train", "--resume", "--run-dir", str(run_dir)]) == 2  # 1 process: refused, one line
    assert "written by 2 process(es), this run has 1" in capsys.readouterr().err
    resumed = subprocess.run(
        _metarl("train", "--resume", "--run-dir", str(run_dir), "--nproc", "2"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _rows(run_dir) == _rows(uninterrupted)


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux ``/proc``)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _environ(pid: int) -> dict[str, str]:
    items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in items if b"=" in item)


def test_two_nodes_rendezvous_on_localhost_and_train(tmp_path: Path) -> None:
    """``torchrun --nnodes 2 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT`` twice (two "nodes" of one
    process each): they meet, rank 0 writes the run dir, 2 iterations are trained."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "run.toml"
    config.write_text(RUN_TOML.format(eval_blocks=2, iterations=2))
    run_dir = tmp_path / "two_nodes"
    nodes = [
        subprocess.Popen(
            [
                *_metarl()[:1],
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(node),
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "metarl-test",
                "--max-restarts",
                "0",
                "-m",
                "metarl",
                "train",
                str(config),
                "--run-dir",
                str(run_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        for node in range(2)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-1500:] for o in outputs)
    assert sum("on 2 processes" in o for o in outputs) == 1  # one writer
    rows = _rows(run_dir)
    assert [r["iteration"] for r in rows] == [1, 2]
    assert rows[0]["env_steps"] == 2 * 2 * 2 * 10  # 2 tasks × 2 episodes × (support + query) × 10 steps


def test_evaluate_on_two_ranks_gives_the_training_time_numbers(two_rank_run: tuple[Path, Path]) -> None:
    """The held-out evaluation does not depend on the world size: ``metarl evaluate --nproc 2`` and
    ``metarl evaluate`` in one process of a 2-rank run (3 tasks in 2 blocks: rank 0 takes 2 tasks, rank 1 one)
    both give the ``meta_test/*`` its training printed at the last iteration; rank 0 alone writes the
    report."""
    import json
    import subprocess

    _, run_dir = two_rank_run
    last = _rows(run_dir)[-1]
    curves = []
    for nproc in ("2", "1"):
        args = _metarl("evaluate", str(run_dir), "--nproc", nproc)
        done = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.count("wrote ") == 1
        curve = json.loads((run_dir / "eval" / "latest_test.json").read_text())["maml_rl"]
        assert curve["mean"] == [last[f"meta_test/return_step_{k}"] for k in range(len(curve["mean"]))]
        assert len(curve["per_task"][0]) == 3  # every held-out task, gathered from the ranks' blocks
        curves.append(curve)
    assert curves[0] == curves[1]


def test_evaluation_blocks_change_only_the_evaluation_streams(two_rank_run: tuple[Path, Path]) -> None:
    """One block vs two blocks: the same tasks, different random streams (a block draws its own), so the
    per-task numbers differ — the check that blocks really are reseeded, not run in one batch."""
    import torch

    from metarl.evaluation import evaluate_sharded
    from metarl.run import load_run

    _, run_dir = two_rank_run
    exp = load_run(run_dir, "latest", "cpu")
    tasks = exp.tasks.held_out(3, seed=0)
    one, two, again = (evaluate_sharded(exp.learner, tasks, 1, 0, blocks) for blocks in (1, 2, 2))
    assert two.per_task == again.per_task  # a block's numbers depend on the seed and the block alone
    assert one.per_task != two.per_task
    assert torch.tensor(one.per_task).isfinite().all()


def test_compare_on_two_ranks_gives_the_single_process_curves(tmp_path: Path) -> None:
    """``metarl compare --nproc 2``: the held-out tasks sharded (3 tasks: 2 + 1), PPO from scratch, the
    transfer fine-tuning, the analytic oracle and the meta run's adaptation give one process's per-task
    numbers exactly (a task's PPO seeds come from its index in the whole list; each rank pretrains the same
    transfer policy; the meta run is evaluated in its ``run.eval_blocks`` blocks with their own streams), and
    rank 0 alone reports."""
    import json
    import subprocess

    from test_compare import write_rl_compare

    config = write_rl_compare(tmp_path, NAV, "analytic")
    settings = ["--set", "compare.transfer_modes=['head']"]
    outputs = {}
    for nproc in (1, 2):  # the first also trains the meta run (one process), the second loads it
        out = tmp_path / f"out{nproc}"
        command = _metarl("compare", str(config), "--out", str(out), *settings, "--nproc", str(nproc))
        done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("compare finished") == 1
        outputs[nproc] = {m["name"]: m for m in json.loads((out / "compare.json").read_text())["methods"]}
    assert list(outputs[1]) == list(outputs[2])
    for name, single in outputs[1].items():
        assert outputs[2][name]["per_task"] == single["per_task"], name


def test_a_rank_ends_with_its_command_exit_code_and_its_whole_output() -> None:
    """A torchrun rank (``WORLD_SIZE`` > 1) ends through ``os._exit`` after leaving the group, skipping the
    interpreter teardown that can abort a gloo rank after its work is done: its exit code is the command's
    and its buffered output reaches the pipe."""
    import subprocess

    env = {**_env(), "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    env.pop("PYTHONUNBUFFERED", None)  # stdout to a pipe is block-buffered, as under the launcher
    single = subprocess.run(_metarl("list"), capture_output=True, text=True, env=_env(), timeout=120)
    rank = subprocess.run(_metarl("list"), capture_output=True, text=True, env=env, timeout=120)
    assert single.returncode == 0 and rank.returncode == 0
    assert rank.stdout == single.stdout and len(rank.stdout.splitlines()) > 10
    refused = subprocess.run(
        _metarl("train", "no-such.toml"), capture_output=True, text=True, env=env, timeout=120
    )
    assert refused.returncode == 2 and refused.stderr.startswith("metarl: error:")


def test_the_launcher_blames_the_rank_that_failed_not_the_ranks_stopped_after_it() -> None:
    """torchrun SIGTERMs the other ranks once one fails, and a rank whose peer vanished exits with
    LOST_PEER_EXIT; both can carry the same one-second timestamp as the cause, and a lower rank."""
    import signal
    from types import SimpleNamespace

    failures = {
        0: SimpleNamespace(exitcode=-signal.SIGTERM, timestamp=100),
        1: SimpleNamespace(exitcode=-signal.SIGKILL, timestamp=100),
        2: SimpleNamespace(exitcode=distributed.LOST_PEER_EXIT, timestamp=99),
    }
    assert min(failures.items(), key=lambda item: distributed._blame(*item))[0] == 1
    del failures[1]
    assert min(failures.items(), key=lambda item: distributed._blame(*item))[0] == 0  # SIGTERM by a user
    gone = RuntimeError("[pair.cc:537] Read error [127.0.0.1]:19141: Connection reset by peer")
    assert distributed.lost_peer(gone)
    assert not distributed.lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
