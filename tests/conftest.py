"""Shared fixtures: a tiny MAML-RL experiment config and a helper to run the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _build_fused_gru() -> None:
    """Compile RL²'s fused GRU kernel once, before any test (and its subprocesses) needs it: the first
    build takes about a minute and is cached on disk for every later process (metarl/fused_gru.py)."""
    from metarl import fused_gru

    fused_gru.available()


TINY_TOML = """
[run]
iterations = {iterations}
eval_every = 2
eval_tasks = 4
eval_steps = 1
seed = 3
num_threads = 1

[env]
id = "{env_id}"

[algo]
name = "maml_rl"
meta_batch_size = 3
rollouts_per_task = 4
hidden_sizes = [16, 16]
outer_lr = 0.003
"""


@pytest.fixture
def tiny_config(tmp_path: Path):
    def write(iterations: int = 4, env_id: str = "metarl/Navigation2D-v0", extra: str = "") -> Path:
        path = tmp_path / f"tiny_{iterations}.toml"
        path.write_text(TINY_TOML.format(iterations=iterations, env_id=env_id) + extra)
        return path

    return write


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m metarl.cli ARGS`` in a subprocess (what a user's shell runs)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "metarl.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=300,
    )
