"""The zoo (``experiments/zoo/<name>/``): every committed run directory evaluates from a fresh clone.

Each entry is a staged training run (see ``experiments/zoo/README.md``): its config must still validate
against today's code, its checkpoints must load into today's learner, and a tiny evaluation (2 tasks,
1 adaptation step) must run and give finite numbers. RL entries go through ``metarl.run.evaluate`` — what
``metarl evaluate experiments/zoo/<name>`` runs — on their own held-out tasks. Omniglot entries cannot read
the real data set here (tests never depend on it): their learner is evaluated on episodes of a generated
folder in Omniglot's layout, which checks everything but the images.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from fewshot_fixtures import make_omniglot

from metarl import run
from metarl.config import resolve
from metarl.evaluation import evaluate_adaptation

ZOO = Path(__file__).resolve().parent.parent / "experiments" / "zoo"
ENTRIES = sorted(p for p in ZOO.iterdir() if (p / "config.json").is_file()) if ZOO.is_dir() else []
MAX_BYTES = 10_000_000


def test_zoo_has_entries_and_an_index() -> None:
    assert ENTRIES, "experiments/zoo holds no run directory"
    index = (ZOO / "README.md").read_text()
    for entry in ENTRIES:
        assert f"`{entry.name}`" in index, f"experiments/zoo/README.md does not list {entry.name}"


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_zoo_entry_evaluates(entry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
    assert size <= MAX_BYTES, f"{entry.name} is {size / 1e6:.1f} MB"
    stages = (entry / "STAGES.md").read_text()
    assert "| 1 |" in stages, "STAGES.md records no stage"
    raw = json.loads((entry / "config.json").read_text())
    config = resolve(raw)  # validates every key against today's code
    copy = tmp_path / entry.name
    shutil.copytree(entry, copy, ignore=shutil.ignore_patterns("tb", "eval"))

    if config.env is not None:
        curve, paths = run.evaluate(copy, num_tasks=2, steps=1)
        assert paths["json"].is_file()
    else:
        monkeypatch.setenv("METARL_CACHE", str(tmp_path / "cache"))
        # 5 test characters × 4 rotations: enough classes for the 20-way entries
        root = make_omniglot(tmp_path / "omniglot", drawers=config.data.shots + 2, characters=5)
        overrides = [f"data.root={json.dumps(str(root))}", "data.split='vinyals'", "data.queries=1"]
        overrides.append("data.within_alphabet=false")  # the mini data set's alphabets hold 20 classes
        exp = run.load_run(copy, "latest", "cpu", overrides)
        steps = min(1, config.run.eval_steps)
        curve = evaluate_adaptation(exp.learner, exp.tasks.held_out(2, seed=0), steps)
    assert all(math.isfinite(m) for m in curve.mean)
    assert curve.num_tasks == 2
