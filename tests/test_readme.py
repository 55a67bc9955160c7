"""The README's Python example runs (with a smaller budget)."""

from __future__ import annotations

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path: Path) -> None:
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    code = code.replace('"iterations": 50', '"iterations": 2, "eval_tasks": 3, "eval_steps": 1')
    code = code.replace(
        '"outer_lr": 3e-3}', '"outer_lr": 3e-3, "meta_batch_size": 2, "rollouts_per_task": 2}'
    )
    code = code.replace("held_out(40", "held_out(3")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict = {}
        exec(compile(code, str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert len(namespace["curve"].mean) == 4
    assert (tmp_path / "runs" / "api-demo" / "checkpoints" / "latest.pt").is_file()


def test_readme_commands_match_ci() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    test_line = next(
        line for line in README.read_text().splitlines() if "pytest" in line and "pip install" in line
    )
    assert test_line.strip() in ci
    assert "metarl train experiments/quickstart.toml" in README.read_text()
