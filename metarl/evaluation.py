"""The evaluator: adaptation curves on held-out tasks with 95% confidence intervals.

One function for every meta-learner: :func:`evaluate_adaptation` runs :func:`metarl.core.adaptation_curve`
(metric after 0..K adaptation steps on each task) and summarises each step by its mean over tasks and the
half-width of a 95% Student-t confidence interval. Results serialise to JSON, Markdown and a PNG plot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from envs.base import Task
from metarl import atomic, distributed
from metarl.core import MetaLearner, adaptation_curve, evaluation_randomness

# Two-sided 95% quantiles of Student's t for small samples; larger df use a Cornish-Fisher expansion.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (error < 1e-3 for every df ≥ 1)."""
    if df < 1:
        return math.nan
    if df in _T975:
        return _T975[df]
    z = 1.959963984540054
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * df**4)
    )


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean of ``values [n]`` and the half-width of its 95% confidence interval (t-distribution)."""
    values = values.detach().double().flatten()
    n = values.numel()
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan
    return mean, t_quantile_975(n - 1) * float(values.std(unbiased=True)) / math.sqrt(n)


@dataclasses.dataclass
class AdaptationCurve:
    """Metric after 0..K adaptation steps over held-out tasks.

    Attributes:
        metric: what was measured (``return``, ``accuracy``, ...).
        mean: per step, the mean over tasks.
        ci95: per step, the half-width of the 95% confidence interval of the mean.
        per_task: ``[steps + 1][num_tasks]`` raw values.
    """

    metric: str
    mean: list[float]
    ci95: list[float]
    per_task: list[list[float]]

    @property
    def steps(self) -> list[int]:
        return list(range(len(self.mean)))

    @property
    def num_tasks(self) -> int:
        return len(self.per_task[0]) if self.per_task else 0

    def to_dict(self) -> dict[str, Any]:
        return {"num_tasks": self.num_tasks, "steps": self.steps, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdaptationCurve:
        return cls(data["metric"], list(data["mean"]), list(data["ci95"]), list(data["per_task"]))


def summarise(values: Any, metric: str) -> AdaptationCurve:
    """``[points, tasks]`` per-task values (a tensor, array or nested list) → an :class:`AdaptationCurve`:
    per point, the mean over tasks and the half-width of its 95% confidence interval."""
    values = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    stats = [mean_ci95(row) for row in values]
    return AdaptationCurve(metric, [m for m, _ in stats], [c for _, c in stats], values.tolist())


@contextlib.contextmanager
def _points_bar(num_tasks: int, points: int, show: bool) -> Iterator[Callable[[], Any] | None]:
    """A progress bar over ``points`` evaluated points (on a terminal) when ``show``: its ``update``."""
    if not show or points == 0:
        yield None
        return
    from tqdm import tqdm

    desc = f"evaluating {num_tasks} tasks"
    with tqdm(total=points, desc=desc, unit="point", leave=False, disable=None) as bar:
        yield bar.update


def evaluate_adaptation(
    learner: MetaLearner[Any, Any], tasks: Sequence[Task], steps: int, progress: bool = False
) -> AdaptationCurve:
    """Adapt ``learner`` to each of ``tasks`` for ``0..steps`` steps, with the learner's own random
    streams, and summarise the metric per step (``progress``: a progress bar over the ``steps + 1``
    points)."""
    with _points_bar(len(tasks), steps + 1, progress) as on_point:
        curve = adaptation_curve(learner, tasks, steps, on_point=on_point)
    return summarise(curve, learner.metric_name)


def evaluate_sharded(
    learner: MetaLearner[Any, Any],
    tasks: Sequence[Task],
    steps: int,
    seed: int,
    blocks: int = 1,
    progress: bool = False,
) -> AdaptationCurve:
    """:func:`evaluate_adaptation` over all of ``tasks`` with random streams of their own, by every rank.

    The tasks are split into ``blocks`` contiguous blocks (``np.array_split``'s split; at most one block per
    task) and block ``b`` is adapted to under ``evaluation_randomness(learner, stream_seed(seed, b))``
    (:func:`metarl.core.evaluation_randomness`, :func:`metarl.distributed.stream_seed`): its random numbers
    depend on ``seed`` and the block alone, never on when the evaluation runs or on which process runs it.
    In a data-parallel job rank ``r`` adapts to blocks ``r, r + W, …`` and the per-task values are gathered
    in task order, so the curve is the same under every world size ``W`` (one process runs the blocks in
    turn). ``blocks`` a multiple of the world size spreads the work evenly; one block is the
    single-process evaluation of earlier versions, number for number. This is the trainer's held-out
    evaluation (``run.eval_seed``, ``run.eval_blocks``), ``metarl evaluate``'s and ``metarl compare``'s.
    """
    blocks = max(1, min(blocks, len(tasks)))
    mine = range(distributed.rank(), blocks, distributed.world_size())
    local: list[tuple[int, list[list[float]]]] = []
    with _points_bar(len(tasks), (steps + 1) * len(mine), progress) as on_point:
        for b in mine:
            lo, hi = distributed.split_bounds(len(tasks), blocks, b)
            with evaluation_randomness(learner, distributed.stream_seed(seed, b)):
                curve = adaptation_curve(learner, tasks[lo:hi], steps, on_point=on_point)
            local.append((b, curve.detach().cpu().double().tolist()))
    gathered = sorted(part for parts in distributed.all_gather_object(local) for part in parts)
    per_task = torch.cat([torch.tensor(values, dtype=torch.float64) for _, values in gathered], dim=1)
    return summarise(per_task, learner.metric_name)


def step_unit(learner: MetaLearner[Any, Any]) -> str:
    """What one adaptation step of ``learner`` is, for axis labels (``MetaLearner.step_unit``); the empty
    string for learners with no adaptation steps (ProtoNets, Matching Nets, SNAIL read the support set
    once: their curve is a single point)."""
    return str(getattr(learner, "step_unit", "adaptation steps"))


def markdown_table(curves: Mapping[str, AdaptationCurve], unit: str = "adaptation steps") -> str:
    """One row per method, one column per adaptation step: ``mean ± ci95``.

    With ``unit = ""`` (a learner with no adaptation steps, one-point curves) the single column reads
    ``"<metric> (support set read once)"``.
    """
    steps = max(len(c.mean) for c in curves.values())
    metric = next(iter(curves.values())).metric
    if steps == 1 and not unit:
        columns = [f"{metric} (support set read once)"]
    else:
        columns = [f"{metric} after {k} step{'s' * (k != 1)}" for k in range(steps)]
    head = "| method | " + " | ".join(columns)
    lines = [head + " |", "|---" * (steps + 1) + "|"]
    for name, c in curves.items():
        digits = 4 if all(abs(m) <= 1 for m in c.mean) else 2  # accuracies / MSEs vs returns
        cells = [f"{m:.{digits}f} ± {h:.{digits}f}" for m, h in zip(c.mean, c.ci95, strict=True)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(
    curves: Mapping[str, AdaptationCurve], path: Path, title: str, xlabel: str = "adaptation steps"
) -> None:
    """Mean ± 95% CI against the number of adaptation steps (``xlabel`` says what a step is)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, c in curves.items():
        lo = [m - h for m, h in zip(c.mean, c.ci95, strict=True)]
        hi = [m + h for m, h in zip(c.mean, c.ci95, strict=True)]
        ax.plot(c.steps, c.mean, marker="o", label=name)
        if len(c.steps) == 1:  # one point (no adaptation steps): its interval as an error bar
            ax.errorbar(c.steps, c.mean, yerr=c.ci95, capsize=6, color=ax.lines[-1].get_color())
        ax.fill_between(c.steps, lo, hi, alpha=0.2)
    ax.set_xlabel(xlabel or "no adaptation steps (the support set is read once)")
    ax.set_ylabel(f"{next(iter(curves.values())).metric} (mean ± 95% CI)")
    ax.set_xticks(next(iter(curves.values())).steps)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    curves: Mapping[str, AdaptationCurve],
    out_dir: Path,
    stem: str,
    title: str,
    unit: str = "adaptation steps",
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir``; returns their paths.

    ``unit`` is what one step of the curves is (:func:`step_unit`): the table's columns and the plot's
    x-axis say it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    document = json.dumps({name: c.to_dict() for name, c in curves.items()}, indent=2) + "\n"
    atomic.write_text(paths["json"], document)  # every file whole or not at all (metarl.atomic)
    caption = f"One step: {unit}." if unit else "No adaptation steps: the support set is read once."
    atomic.write_text(paths["md"], f"# {title}\n\n{markdown_table(curves, unit)}\n\n{caption}\n")
    png = io.BytesIO()
    plot(curves, png, title, unit)  # type: ignore[arg-type]  # matplotlib writes PNG to a file object
    atomic.write_bytes(paths["png"], png.getvalue())
    return paths
