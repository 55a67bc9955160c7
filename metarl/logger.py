"""The one place that writes metrics: ``metrics.jsonl`` and TensorBoard, x-axis = environment steps.

``metrics.jsonl`` is strict JSON, one object per line: a missing or non-finite value is ``null`` (never a
bare ``NaN``, which JSON parsers reject).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from metarl import atomic
from metarl.errors import RunDirError


class Logger:
    """Appends one JSON line per iteration to ``metrics.jsonl`` and writes every tag to TensorBoard.

    On resume, ``resume_from=(iteration, env_steps)`` drops what a killed run logged after its last
    checkpoint: later ``metrics.jsonl`` lines are removed (one atomic rewrite, see :func:`rows_up_to`) and
    TensorBoard purges events past ``env_steps``.
    """

    def __init__(self, run_dir: Path, resume_from: tuple[int, int] | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        purge_step = None
        if resume_from is not None:
            iteration, env_steps = resume_from
            self._truncate(iteration)
            purge_step = env_steps + 1
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=purge_step)

    def _truncate(self, iteration: int) -> None:
        if self.path.exists():
            atomic.write_text(self.path, rows_up_to(self.path, iteration))

    def log(self, iteration: int, env_steps: int, metrics: dict[str, float]) -> None:
        """Append one row (non-finite values become ``null``) and write the finite ones to TensorBoard."""
        clean = {k: _finite_or_none(v) for k, v in metrics.items()}
        row = json.dumps({"iteration": iteration, "env_steps": env_steps, **clean}, allow_nan=False)
        with self.path.open("a") as f:
            f.write(row + "\n")
        for tag, value in clean.items():
            if value is not None:
                self.writer.add_scalar(tag, value, global_step=env_steps)
        self.writer.flush()

    def text(self, tag: str, markdown: str) -> None:
        self.writer.add_text(tag, markdown, global_step=0)

    def close(self) -> None:
        self.writer.close()


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def rows_up_to(path: Path, iteration: int) -> str:
    """The content of ``metrics.jsonl`` at ``path`` keeping the rows of iterations ``<= iteration``.

    Every line must be a JSON object with an integer ``"iteration"``; a last line without its newline that
    does not parse is a row torn by a kill and is dropped. Any other bad line raises :class:`RunDirError`
    naming the file and the line, so a resume refuses before it changes anything.
    """
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    kept = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and isinstance(row.get("iteration"), int)
        except json.JSONDecodeError:
            ok = False
            if number == len(lines):  # no newline after it: the write was cut short by a kill
                continue
        if not ok:
            raise RunDirError(
                f"{str(path)!r} line {number} is not a metrics row (a JSON object with an integer "
                "'iteration'); fix or remove that line, then resume"
            )
        if row["iteration"] <= iteration:
            kept.append(line + "\n")
    return "".join(kept)


def config_table(config: dict[str, Any]) -> str:
    """The resolved config as a Markdown table (TensorBoard's text plugin renders it)."""
    rows = ["| key | value |", "|---|---|"]

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            rows.append(f"| {prefix[:-1]} | {json.dumps(value)} |")

    walk("", config)
    return "\n".join(rows)
