"""Faults forced on purpose: divergence, a second writer, kills mid-write, a full or read-only disk, bad
files, huge sizes, untrusted run dirs. Each must end with one line on stderr, the documented exit code
(2: bad input / file / environment, 3: non-finite values, 130: interrupted), a run dir that is unchanged or
still resumable, no lost metric rows, and an exact resume afterwards (README, "Reliability")."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from metarl import atomic, checkpoint, run
from metarl.cli import main

TOML = """
[run]
iterations = {iterations}
eval_every = {eval_every}
eval_tasks = 3
eval_steps = 1
seed = 1
checkpoint_every = {checkpoint_every}

[env]
id = "metarl/Navigation2D-v0"
max_episode_steps = 8

[algo]
name = "maml_rl"
outer = "vpg"
meta_batch_size = 2
rollouts_per_task = 2
hidden_sizes = [8]
"""

RL2 = """
[run]
iterations = 8
eval_every = 8
eval_tasks = 2
eval_steps = 1
seed = 5

[env]
id = "metarl/Bandit-K5-v0"
kwargs = { num_pulls = 6 }
max_episode_steps = 6

[algo]
name = "rl2"
meta_batch_size = 8
episodes_per_trial = 1
segments_per_episode = 3
hidden_size = 8
lr = 1e6
"""

SINUSOID = """
[run]
iterations = 4
eval_every = 4
eval_tasks = 2
eval_steps = 1

[data]
dataset = "sinusoid"

[algo]
name = "maml_supervised"
network = "mlp"
meta_batch_size = 2
hidden_sizes = [8]
outer_lr = 1e6
"""


def write_config(
    directory: Path, iterations: int = 6, eval_every: int = 3, checkpoint_every: int = 1
) -> Path:
    path = directory / f"tiny_{iterations}_{eval_every}_{checkpoint_every}.toml"
    path.write_text(
        TOML.format(iterations=iterations, eval_every=eval_every, checkpoint_every=checkpoint_every)
    )
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    """Run ``metarl ARGS`` in-process: ``(exit code, stderr lines without the progress bar)``."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [line for line in err.splitlines() if line.strip() and not line.startswith("meta-train")]


def fails(capsys: pytest.CaptureFixture[str], code: int, pattern: str, *args: str) -> str:
    """``metarl ARGS`` exits with ``code`` and exactly one stderr line containing ``pattern``."""
    got, lines = cli(capsys, *args)
    assert got == code, (got, lines)
    assert len(lines) == 1 and lines[0].startswith("metarl: "), lines
    assert pattern in lines[0], lines[0]
    return lines[0]


def rows(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl parsed strictly (a bare NaN / Infinity fails), without wall-clock entries."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-JSON constant {constant} in metrics.jsonl")

    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line, parse_constant=refuse)
        out.append({k: v for k, v in row.items() if not k.startswith("time/")})
    return out


def training(run_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows without held-out evaluations (those depend on the evaluation cadence, training must not)."""
    return [{k: v for k, v in r.items() if not k.startswith("meta_test/")} for r in run_rows]


def learner_state(run_dir: Path, which: str = "latest") -> dict[str, Any]:
    return checkpoint.load(run_dir / "checkpoints" / f"{which}.pt")


def assert_same_state(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_state(x, y)
    else:
        assert a == b


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file's bytes (the lock file's PID excepted)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != run.LOCK_FILE
    }


def interrupt_after(monkeypatch: pytest.MonkeyPatch, updates: int, error: BaseException) -> None:
    """Make the MAML-RL learner raise ``error`` (a kill, a full disk, ...) at meta-update ``updates + 1``."""
    from metarl.algorithms.maml_rl import MAMLRL

    original, calls = MAMLRL.meta_update, {"n": 0}

    def update(self: MAMLRL, tasks: list) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] > updates:
            raise error
        return original(self, tasks)

    monkeypatch.setattr(MAMLRL, "meta_update", update)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 6-iteration run evaluated every 3 iterations."""
    root = tmp_path_factory.mktemp("faults")
    assert main(["train", str(write_config(root)), "--run-dir", str(root / "reference")]) == 0
    return root / "reference"


# -- 1. finite or stop -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("toml", "overrides", "hint"),
    [
        (TOML.format(iterations=6, eval_every=3, checkpoint_every=1), ["algo.outer_lr=1e6"], "algo.outer_lr"),
        (TOML.format(iterations=6, eval_every=3, checkpoint_every=1), ["algo.inner_lr=1e6"], "algo.inner_lr"),
        (RL2, [], "algo.lr"),
        (SINUSOID, [], "algo.outer_lr"),
    ],
    ids=["maml_rl-outer", "maml_rl-inner", "rl2", "maml_supervised"],
)
def test_divergence_stops_with_exit_3(
    toml: str, overrides: list[str], hint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "diverge.toml"
    config.write_text(toml)
    run_dir = tmp_path / "run"
    sets = [a for o in overrides for a in ("--set", o)]
    line = fails(capsys, 3, "non-finite", "train", config, "--run-dir", run_dir, *sets)
    assert "hint: lower" in line and hint in line
    kept = rows(run_dir) if (run_dir / "metrics.jsonl").exists() else []
    assert f"iteration {len(kept) + 1}:" in line  # rows up to the last finite iteration, no more
    state = learner_state(run_dir)
    assert state["iteration"] == len(kept)  # latest.pt is the last finite state (iteration 0 at worst)
    assert checkpoint.first_non_finite(state["learner"]) is None
    # the run can be resumed from there (after lowering the rate it must be restarted: the config differs)
    fails(capsys, 3, "non-finite", "train", "--run-dir", run_dir, "--resume", *sets)
    assert (rows(run_dir) if kept else []) == kept


def test_evaluate_refuses_a_non_finite_checkpoint(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    state = learner_state(copy)
    state["learner"]["policy"]["log_std"][0] = float("nan")
    checkpoint.save(copy / "checkpoints" / "latest.pt", state)
    fails(capsys, 3, "non-finite values (policy.log_std)", "evaluate", copy, "--num-tasks", "3")
    fails(capsys, 3, "non-finite values", "train", "--run-dir", copy, "--resume", "--set", "run.iterations=7")


def test_range_checks_reject_nan_and_inf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)
    for value in ("nan", "inf", "-inf"):
        fails(capsys, 2, "expected a finite number", "train", config, "--set", f"algo.init_std={value}")
    assert not (tmp_path / "runs").exists()


# -- 2. one writer per run dir -----------------------------------------------------------------------------
def test_a_second_writer_is_refused(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    before = snapshot(copy)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
            str(copy / run.LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ("train", "--run-dir", copy, "--resume", "--set", "run.iterations=8")
        fails(capsys, 2, f"another metarl process (PID {holder.pid})", *args)
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(copy) == before
    # in-process as well: a trainer's lock refuses a second trainer started while it runs
    fd = run.lock_run_dir(copy)
    try:
        fails(
            capsys,
            2,
            f"PID {os.getpid()}",
            "train",
            "--run-dir",
            copy,
            "--resume",
            "--set",
            "run.iterations=8",
        )
        # a new run aimed at the busy dir is told who writes it, not to --resume
        fails(
            capsys,
            2,
            f"(PID {os.getpid()}); choose another",
            "train",
            write_config(tmp_path),
            "--run-dir",
            copy,
        )
    finally:
        os.close(fd)
    assert snapshot(copy) == before


# -- 3. atomic rewrites, 4. no dead ends ------------------------------------------------------------------
def test_kill_during_each_rewrite_loses_nothing(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume killed while it rewrites config.json, metrics.jsonl or latest.pt (the write stops half-way)
    leaves each file whole; the next resume is exact."""
    config = write_config(tmp_path)
    killed = tmp_path / "killed"
    interrupt_after(monkeypatch, 4, KeyboardInterrupt())
    fails(capsys, 130, "interrupted", "train", config, "--run-dir", killed)
    monkeypatch.undo()
    with (killed / "metrics.jsonl").open("a") as f:
        f.write('{"iteration": 5, "env_steps"')  # a row torn by a kill
    config_text = (killed / "config.json").read_bytes()
    assert len(rows_text := (killed / "metrics.jsonl").read_text().splitlines()) == 5
    real_fdopen = os.fdopen

    for target in ("config.json", "metrics.jsonl", "latest.pt"):

        class HalfWrite:
            def __init__(self, fd: int, mode: str) -> None:
                self.f = real_fdopen(fd, mode)

            def __enter__(self) -> HalfWrite:
                return self

            def __exit__(self, *exc: object) -> None:
                self.f.close()

            def write(self, data: bytes) -> None:
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                raise KeyboardInterrupt  # killed mid-write

            def __getattr__(self, name: str) -> Any:
                return getattr(self.f, name)

        def fdopen(fd: int, mode: str = "r", *a: Any, target: str = target, **k: Any) -> Any:
            path = os.readlink(f"/proc/self/fd/{fd}")
            return HalfWrite(fd, mode) if Path(path).name.startswith(f".{target}.") else real_fdopen(fd, mode)

        monkeypatch.setattr(atomic.os, "fdopen", fdopen)
        # a new cadence makes resume rewrite config.json; the torn row makes it rewrite metrics.jsonl
        args = ("train", config, "--run-dir", killed, "--resume", "--set", "run.eval_every=2")
        fails(capsys, 130, "interrupted", *args)
        monkeypatch.undo()
        if target == "config.json":
            assert (killed / "config.json").read_bytes() == config_text
        if target != "latest.pt":
            assert (killed / "metrics.jsonl").read_text().splitlines() == rows_text
        assert learner_state(killed)["iteration"] == 4  # the checkpoint of iteration 5 never replaced it
    stale = killed / "checkpoints" / ".latest.pt.abc123.tmp"
    stale.write_bytes(b"left by a kill")
    assert cli(capsys, "train", config, "--run-dir", killed, "--resume")[0] == 0
    assert not stale.exists()
    assert rows(killed) == rows(reference)
    assert_same_state(learner_state(killed)["learner"], learner_state(reference)["learner"])


def test_run_files_get_the_umask_mode(reference: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "tasks.json", "checkpoints/latest.pt", "checkpoints/best.pt"):
        assert (reference / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_kill_before_the_first_checkpoint_resumes(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, checkpoint_every=100)  # the first periodic checkpoint: iteration 100
    killed = tmp_path / "killed"
    interrupt_after(monkeypatch, 2, KeyboardInterrupt())
    fails(capsys, 130, "interrupted", "train", config, "--run-dir", killed)
    monkeypatch.undo()
    assert learner_state(killed)["iteration"] == 0  # written when the run dir was created
    assert len(rows(killed)) == 2
    assert cli(capsys, "train", config, "--run-dir", killed, "--resume")[0] == 0
    assert rows(killed) == rows(reference)
    # a run dir killed before even its checkpoint at 0 (config.json only) starts over from iteration 0
    shutil.rmtree(killed / "checkpoints")
    (killed / "tasks.json").unlink()
    assert cli(capsys, "train", "--run-dir", killed, "--resume")[0] == 0
    assert rows(killed) == rows(reference)
    # and a run dir holding only a lock (killed right after taking it) is free for a new run
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / run.LOCK_FILE).write_text("123\n")
    assert cli(capsys, "train", config, "--run-dir", bare, "--set", "run.iterations=1")[0] == 0


# -- 5. one line, exit 2, for every bad file or environment ------------------------------------------------
def raise_on_write(monkeypatch: pytest.MonkeyPatch, code: int, name: str, after: int = 0) -> None:
    """Atomic writes of files called ``name`` (any, for ``"*"``) fail with ``OSError(code)`` after ``after``
    successful ones — a full disk (ENOSPC) or a read-only file system (EROFS)."""
    real, seen = atomic.write_bytes, {"n": 0}

    def write(path: Path | str, data: bytes) -> None:
        if name in ("*", Path(path).name):
            seen["n"] += 1
            if seen["n"] > after:
                raise OSError(code, os.strerror(code), str(path))
        real(path, data)

    monkeypatch.setattr(atomic, "write_bytes", write)


def test_full_disk_stops_cleanly_and_resumes_exactly(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path)
    run_dir = tmp_path / "full_disk"
    raise_on_write(monkeypatch, errno.ENOSPC, "latest.pt", after=3)  # iteration 0, 1, 2 fit; 3 does not
    fails(capsys, 2, "No space left on device", "train", config, "--run-dir", run_dir)
    monkeypatch.undo()
    assert learner_state(run_dir)["iteration"] == 2
    assert not list(run_dir.rglob("*.tmp"))
    assert cli(capsys, "train", config, "--run-dir", run_dir, "--resume")[0] == 0
    assert rows(run_dir) == rows(reference)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """Mount a tmpfs of ``size`` at ``path``; yields whether that was allowed (root with CAP_SYS_ADMIN)."""
    path.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    mounted = shutil.which("mount") is not None and subprocess.run(cmd, capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)


def test_a_real_full_then_read_only_disk(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run on a 40 KiB tmpfs fills it (a checkpoint, a metrics row or a TensorBoard event cannot be
    written), the same disk remounted read-only refuses a resume without changing a file, and once there
    is room the run resumes exactly. Where mounting is not allowed, patched writes fail the same way."""
    config = write_config(tmp_path)
    disk = tmp_path / "disk"
    run_dir = disk / "run"
    with tmpfs(disk, "40k") as mounted:
        if not mounted:
            raise_on_write(monkeypatch, errno.ENOSPC, "latest.pt", after=2)
        fails(capsys, 2, "No space left on device", "train", config, "--run-dir", run_dir)
        monkeypatch.undo()
        state = learner_state(run_dir)
        assert state["iteration"] < 6 and checkpoint.first_non_finite(state["learner"]) is None
        if mounted:
            remount(disk, "ro")
        else:
            raise_on_write(monkeypatch, errno.EROFS, "*")
        before = snapshot(run_dir)
        fails(capsys, 2, "Read-only file system", "train", config, "--run-dir", run_dir, "--resume")
        assert snapshot(run_dir) == before
        monkeypatch.undo()
        if mounted:
            remount(disk, "rw,size=16m")
        assert cli(capsys, "train", config, "--run-dir", run_dir, "--resume")[0] == 0
        assert rows(run_dir) == rows(reference)
        assert_same_state(learner_state(run_dir)["learner"], learner_state(reference)["learner"])


def test_read_only_file_system(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path)
    raise_on_write(monkeypatch, errno.EROFS, "*")
    fails(capsys, 2, "Read-only file system", "train", config, "--run-dir", tmp_path / "new")
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    before = snapshot(copy)
    fails(
        capsys,
        2,
        "Read-only file system",
        "train",
        "--run-dir",
        copy,
        "--resume",
        "--set",
        "run.iterations=7",
    )
    fails(capsys, 2, "Read-only file system", "evaluate", copy, "--num-tasks", "3")
    assert snapshot(copy) == before


def test_bad_files_are_one_line_exit_2(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)
    resume = ("train", "--run-dir")

    def broken(name: str, damage: Any) -> Path:
        copy = tmp_path / name
        shutil.copytree(reference, copy)
        damage(copy)
        return copy

    def edit_checkpoint(edit: Any) -> Any:
        def damage(copy: Path) -> None:
            state = learner_state(copy)
            edit(state["learner"])
            checkpoint.save(copy / "checkpoints" / "latest.pt", state)

        return damage

    def wrong_shape(learner: dict) -> None:
        learner["policy"]["mean.0.weight"] = torch.zeros(3, 3)

    cases = [
        ("shape", edit_checkpoint(wrong_shape), "does not fit this run's learner"),
        ("keys", edit_checkpoint(lambda s: s.pop("policy")), "does not fit this run's learner"),
        (
            "generator",
            edit_checkpoint(lambda s: s.update(generator=torch.zeros(3, dtype=torch.uint8))),
            "does not fit",
        ),
        ("no_tasks", lambda d: (d / "tasks.json").unlink(), "tasks.json is missing"),
        ("bad_tasks", lambda d: (d / "tasks.json").write_text("{not json"), "tasks.json is corrupted"),
        ("bad_config", lambda d: (d / "config.json").write_text("{"), "config.json is corrupted"),
        (
            "bad_metrics",
            lambda d: (d / "metrics.jsonl").write_text("garbage\n" + (d / "metrics.jsonl").read_text()),
            "line 1 is not a metrics row",
        ),
    ]
    for name, damage, pattern in cases:
        copy = broken(name, damage)
        before = snapshot(copy)
        fails(capsys, 2, pattern, *resume, copy, "--resume", "--set", "run.iterations=7")
        assert snapshot(copy) == before, name
        if name in ("shape", "keys", "generator"):
            fails(capsys, 2, pattern, "evaluate", copy, "--num-tasks", "3")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a run dir")
    fails(capsys, 2, "is not a directory", "train", config, "--run-dir", a_file)
    fails(capsys, 2, "not a run dir", "evaluate", a_file)
    fails(capsys, 2, "run.seed must be <= 9223372036854775807", "train", config, "--seed", str(2**64))
    fails(capsys, 2, "run.seed must be >= 0", "train", config, "--seed", "-1")
    fails(
        capsys,
        2,
        "run.seed is a value, not a table",
        "train",
        config,
        "--set",
        "run.seed=5",
        "--set",
        "run.seed.x=3",
    )
    assert not (tmp_path / "runs").exists()


def test_corrupt_data_files_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fewshot_fixtures import make_image_folder, make_omniglot

    toml = tmp_path / "fewshot.toml"
    toml.write_text(
        '[run]\niterations = 1\n[data]\ndataset = "{dataset}"\nroot = "{root}"\ncache_dir = "{cache}"\n'
        '[algo]\nname = "protonets"\n'
    )
    folder = make_image_folder(tmp_path / "images", train_classes=5, test_classes=5, per_class=3)
    bad_png = folder / "train" / "class01" / "1.png"
    bad_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a truncated PNG
    config = tmp_path / "images.toml"
    config.write_text(toml.read_text().format(dataset="image_folder", root=folder, cache=tmp_path / "cache"))
    fails(
        capsys, 2, f"image {str(bad_png)!r} cannot be decoded", "train", config, "--run-dir", tmp_path / "r1"
    )

    omniglot = make_omniglot(tmp_path / "omniglot")
    split = omniglot / "splits" / "vinyals" / "train.txt"
    split.write_text("Alpha/character01/rot000\nAlpha-character02\n")
    config = tmp_path / "omniglot.toml"
    config.write_text(toml.read_text().format(dataset="omniglot", root=omniglot, cache=tmp_path / "cache"))
    fails(capsys, 2, f"split file {str(split)!r} entry 2", "train", config, "--run-dir", tmp_path / "r2")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_decode_cache_notices_a_changed_image(tmp_path: Path) -> None:
    from fewshot_fixtures import make_omniglot

    from metarl.data import load_omniglot

    root = make_omniglot(tmp_path / "omniglot")
    cache = tmp_path / "cache"
    first = load_omniglot(root, "vinyals", 28, False, cache)[0].images.clone()
    image = next((root / "images_background" / "Alpha" / "character01").iterdir())
    from PIL import Image

    Image.new("L", (28, 28), 0).save(image)  # every pixel ink
    os.utime(image, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = load_omniglot(root, "vinyals", 28, False, cache)[0].images
    assert not torch.equal(first, second) and len(list(cache.iterdir())) == 2


# -- 6. bounded sizes ---------------------------------------------------------------------------------------
def test_huge_sizes_are_refused_before_allocating(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)
    start = time.perf_counter()
    fails(
        capsys, 2, "lower algo.meta_batch_size", "train", config, "--set", "algo.meta_batch_size=1000000000"
    )
    fails(
        capsys,
        2,
        "lower run.eval_tasks",
        "train",
        config,
        "--set",
        "run.eval_tasks=100000",
        "--set",
        "env.max_episode_steps=1000000",
    )
    fails(
        capsys,
        2,
        "env.max_episode_steps must be <= 1000000",
        "train",
        config,
        "--set",
        "env.max_episode_steps=1000000000000",
    )
    fails(capsys, 2, "--num-tasks must be <= 100000", "evaluate", reference, "--num-tasks", "1000000000")
    fails(capsys, 2, "--steps must be <= 10000", "evaluate", reference, "--steps", "1000000000")
    fails(capsys, 2, "run.eval_steps must be <= 10000", "train", config, "--set", "run.eval_steps=1000000000")
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "runs").exists()


# -- 7. exact resume for every accepted change -------------------------------------------------------------
def test_resume_with_a_new_eval_cadence_is_exact(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed at iteration 4 of a run evaluated every 2 iterations, resumed evaluating every 3: training
    equals the uninterrupted run evaluated every 3, and so does the evaluation at iteration 6."""
    killed = tmp_path / "killed"
    interrupt_after(monkeypatch, 4, KeyboardInterrupt())
    fails(capsys, 130, "interrupted", "train", write_config(tmp_path, eval_every=2), "--run-dir", killed)
    monkeypatch.undo()
    assert cli(capsys, "train", "--run-dir", killed, "--resume", "--set", "run.eval_every=3")[0] == 0
    got, want = rows(killed), rows(reference)
    assert training(got) == training(want)
    assert got[-1] == want[-1]  # iteration 6: training metrics and the held-out evaluation
    assert "meta_test/return_step_1" in got[1] and "meta_test/return_step_1" not in want[1]
    assert_same_state(learner_state(killed)["learner"], learner_state(reference)["learner"])


def test_resume_with_evaluation_blocks_keeps_training_exact(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run.eval_blocks`` changes only the evaluation's random streams: a run resumed with 2 blocks trains
    exactly as the uninterrupted run; 0 blocks is one config line, exit 2."""
    fails(capsys, 2, "eval_blocks", "train", write_config(tmp_path), "--set", "run.eval_blocks=0")
    killed = tmp_path / "killed"
    interrupt_after(monkeypatch, 4, KeyboardInterrupt())
    fails(capsys, 130, "interrupted", "train", write_config(tmp_path), "--run-dir", killed)
    monkeypatch.undo()
    assert cli(capsys, "train", "--run-dir", killed, "--resume", "--set", "run.eval_blocks=2")[0] == 0
    got, want = rows(killed), rows(reference)
    assert training(got) == training(want)
    assert "meta_test/return_step_1" in got[-1]
    assert_same_state(learner_state(killed)["learner"], learner_state(reference)["learner"])


def test_extending_a_finished_run_equals_a_longer_run(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = tmp_path / "short"
    assert cli(capsys, "train", write_config(tmp_path, iterations=4), "--run-dir", short)[0] == 0
    assert "meta_test/return_step_1" in rows(short)[3]  # the finished run's final evaluation
    assert cli(capsys, "train", "--run-dir", short, "--resume", "--set", "run.iterations=6")[0] == 0
    assert training(rows(short)) == training(rows(reference))
    assert rows(short)[-1] == rows(reference)[-1]
    assert_same_state(learner_state(short)["learner"], learner_state(reference)["learner"])


def test_evaluate_prints_the_training_time_numbers(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``metarl evaluate`` on the checkpoint of iteration 6 with the run's tasks and steps reproduces the
    ``meta_test`` values logged at iteration 6."""
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    assert cli(capsys, "evaluate", copy, "--num-tasks", "3", "--steps", "1")[0] == 0
    [report] = [p for p in (copy / "eval").glob("*.json")]
    mean = json.loads(report.read_text())["maml_rl"]["mean"]
    last = rows(reference)[-1]
    assert mean == [last["meta_test/return_step_0"], last["meta_test/return_step_1"]]


# -- 8. run dirs from elsewhere ------------------------------------------------------------------------------
def test_a_run_dir_naming_a_module_needs_trust_code(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "planted_family.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    saved = json.loads((copy / "config.json").read_text())
    saved["env"]["id"] = "planted_family:Family"
    (copy / "config.json").write_text(json.dumps(saved))
    fails(capsys, 2, "would import the Python module 'planted_family'", "evaluate", copy)
    fails(capsys, 2, "--trust-code", "train", "--run-dir", copy, "--resume")
    assert not marker.exists()
    code, lines = cli(capsys, "evaluate", copy, "--trust-code")
    assert code == 2 and len(lines) == 1 and marker.exists()  # imported on request (it defines no family)


def test_compare_loads_a_planted_run_dir_only_with_trust_code(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from metarl.compare import MetaMethod, _load_meta
    from metarl.errors import RunDirError

    marker = tmp_path / "imported"
    (tmp_path / "planted_compare.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    saved = json.loads((copy / "config.json").read_text())
    saved["env"]["id"] = "planted_compare:Family"
    (copy / "config.json").write_text(json.dumps(saved))
    method = MetaMethod(run=str(copy), checkpoint="latest")
    with pytest.raises(RunDirError, match="would import the Python module 'planted_compare'"):
        _load_meta(method, "cpu", None, trust_code=False, env_id="metarl/Navigation2D-v0")
    assert not marker.exists()
    # the comparison's own [env] id is the user's, hence trusted; so is --trust-code
    for kwargs in ({"env_id": "planted_compare:Family"}, {"trust_code": True}):
        with pytest.raises(Exception):  # noqa: B017  # imported, then no such family: any error will do
            _load_meta(method, "cpu", None, **kwargs)
        assert marker.exists()
        marker.unlink()
        sys.modules.pop("planted_compare", None)  # import it afresh the next time


@pytest.mark.parametrize("toml", [RL2.replace("lr = 1e6\n", ""), SINUSOID.replace("outer_lr = 1e6\n", "")])
def test_other_learners_resume_exactly_with_a_new_cadence(toml: str, tmp_path: Path) -> None:
    """RL² (its own evaluation generator) and MAML-supervised (no generator): a run stopped at iteration 3
    of 5 with held-out evaluations every iteration, then extended with evaluations every 5, trains exactly
    like an uninterrupted 5-iteration run evaluated every 5."""
    import tomllib

    from metarl.config import resolve

    raw = tomllib.loads(toml)
    full = run.train(resolve(raw, ["run.iterations=5", "run.eval_every=5"]), tmp_path / "full")
    part = run.train(resolve(raw, ["run.iterations=3", "run.eval_every=1"]), tmp_path / "part")
    run.train(resolve(raw, ["run.iterations=5", "run.eval_every=5"]), part, resume=True)
    assert training(rows(part)) == training(rows(full))
    assert rows(part)[-1] == rows(full)[-1]
    assert_same_state(learner_state(part)["learner"], learner_state(full)["learner"])
