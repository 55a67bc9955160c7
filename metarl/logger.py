"""The one place that writes metrics: ``metrics.jsonl`` and TensorBoard, x-axis = environment steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter


class Logger:
    """Appends one JSON line per iteration to ``metrics.jsonl`` and writes every tag to TensorBoard.

    On resume, ``resume_from=(iteration, env_steps)`` drops what a killed run logged after its last
    checkpoint: later ``metrics.jsonl`` lines are removed and TensorBoard purges events past ``env_steps``.
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
        if not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)["iteration"] <= iteration
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, iteration: int, env_steps: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"iteration": iteration, "env_steps": env_steps, **metrics}) + "\n")
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, global_step=env_steps)
        self.writer.flush()

    def text(self, tag: str, markdown: str) -> None:
        self.writer.add_text(tag, markdown, global_step=0)

    def close(self) -> None:
        self.writer.close()


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
