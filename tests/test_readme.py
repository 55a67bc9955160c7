"""The README's examples run as written (with smaller budgets patched in): the Python API snippet shows an
adaptation gain, and the own-family section's complete family trains with ``maml_rl`` and ``rl2``, checks
clean with ``metarl check-family`` and evaluates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from metarl.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : None if end == -1 else end]


def block(text: str, lang: str) -> str:
    return re.search(rf"```{lang}\n(.*?)```", text, re.S).group(1)


def patched(code: str, old: str, new: str) -> str:
    assert old in code, f"the README no longer contains {old!r}: update this test"
    return code.replace(old, new)


def test_python_api_snippet_runs_and_adapts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = block(section("Python API"), "python")
    budget = '"iterations": 3, "eval_every": 3, "eval_tasks": 2'
    code = patched(code, '"iterations": 50, "eval_every": 50', budget)
    batch = '"outer_lr": 3e-3, "meta_batch_size": 4, "rollouts_per_task": 10}'
    code = patched(code, '"outer_lr": 3e-3}', batch)
    code = patched(code, "held_out(40", "held_out(20")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    curve = namespace["curve"]
    assert len(curve.mean) == 4
    assert curve.mean[1] > curve.mean[0] + curve.ci95[0]  # one inner step already helps, beyond the noise
    assert (tmp_path / "runs" / "api-demo" / "checkpoints" / "latest.pt").is_file()


def test_own_family_section_trains_with_maml_rl_and_rl2_and_evaluates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    text = section("Your own task family")
    family = block(text, "python")
    assert "envs" not in family  # nothing from envs/ is subclassed or imported
    (tmp_path / "goal_line.py").write_text(family)
    toml = block(text, "toml")
    (tmp_path / "goal_line.toml").write_text(toml)
    rl2 = toml[: toml.index("[algo]")] + '[algo]\nname = "rl2"\nmeta_batch_size = 4\nnum_minibatches = 2\n'
    (tmp_path / "goal_line_rl2.toml").write_text(rl2 + "hidden_size = 8\nepisodes_per_trial = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    commands = block(text, "bash")
    assert "metarl check-family goal_line:GoalLine --max-episode-steps 20" in commands
    assert main(["check-family", "goal_line:GoalLine", "--max-episode-steps", "20"]) == 0
    tiny = ["--set", "run.iterations=2", "--set", "run.eval_tasks=2", "--set", "run.eval_steps=1"]
    maml = ["--set", "algo.meta_batch_size=2", "--set", "algo.rollouts_per_task=2"]
    for config, extra, run_dir in (
        ("goal_line.toml", maml, "runs/goal_line"),
        ("goal_line_rl2.toml", [], "runs/goal_line_rl2"),
    ):
        assert main(["train", config, "--run-dir", run_dir, *tiny, *extra]) == 0
        assert json.loads(Path(run_dir, "tasks.json").read_text())["task_type"] == "goal_line:Goal"
        assert main(["evaluate", run_dir, "--trust-code"]) == 0
        assert Path(run_dir, "eval", "latest_test.png").is_file()
    assert "evaluate runs/goal_line --trust-code" in commands
    capsys.readouterr()


def test_readme_commands_match_ci() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    test_line = next(
        line for line in README.read_text().splitlines() if "pytest" in line and "pip install" in line
    )
    assert test_line.strip() in ci
    assert "metarl train experiments/quickstart.toml" in README.read_text()
    assert "for seed 0" in section("Quickstart")
