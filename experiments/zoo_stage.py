"""Commit one stage of a long, staged training run into the zoo: ``experiments/zoo/<name>/``.

A run longer than one sitting is trained in stages (``metarl train ... --run-dir DIR`` in the background,
then ``metarl train --resume --run-dir DIR`` next time; resume is exact, so the staged run equals an
uninterrupted one). At the end of each stage this script copies what a user needs to evaluate or continue
the run into the zoo entry, keeps the entry small, and appends the stage to its ``STAGES.md``::

    python experiments/zoo_stage.py /path/to/run_dir experiments/zoo/maml_omniglot_5w1s \
        --code-commit dcb083f --note "started from a snapshot of main"

What is copied: ``config.json``, ``tasks.json``, ``metrics.jsonl``, ``checkpoints/{latest,best}.pt``,
``eval/`` and the TensorBoard events of ``tb/`` (thinned to at most ``--tb-points`` points per tag when
the events would not fit). The entry must stay under ``--max-mb`` (10 MB): the script refuses otherwise.
The source may be the entry itself (a stage resumed in place): then only ``tb/`` is thinned and the
``STAGES.md`` line appended.

The stage ends at the run's latest checkpoint (metric rows logged after it are dropped, as ``--resume``
drops them). The stage line records: the stage number, the date, the code commit that trained it, the
iterations and environment steps (examples for few-shot learners) reached, the wall-clock of the stage's
iterations (the sum of ``time/iteration_s``, or RL²'s rollout + update times, over its metric rows) and the
latest held-out evaluation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

FILES = ("config.json", "tasks.json", "metrics.jsonl")
CHECKPOINTS = ("latest.pt", "best.pt")


def read_metrics(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def previous_iteration(stages: Path) -> int:
    """The iteration the last recorded stage ended at (0 without stages)."""
    if not stages.is_file():
        return 0
    last = 0
    for line in stages.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 3 and cells[0].isdigit():
            last = int(cells[3])
    return last


def stage_count(stages: Path) -> int:
    if not stages.is_file():
        return 0
    return sum(
        1
        for line in stages.read_text().splitlines()
        if line.startswith("|") and line[1:].strip()[:1].isdigit()
    )


def thin_tensorboard(src: Path, dst: Path, max_points: int) -> None:
    """Rewrite the scalar events of ``src`` into ``dst`` keeping at most ``max_points`` per tag (the last
    point of every tag is always kept)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    acc = EventAccumulator(str(src), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    dst.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(dst))
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        stride = max(1, -(-len(events) // max_points))
        keep = events[::stride]
        if keep[-1] is not events[-1]:
            keep.append(events[-1])
        for event in keep:
            writer.add_scalar(tag, event.value, global_step=event.step, walltime=event.wall_time)
    for tag in acc.Tags().get("tensors", []):  # the config text table
        for event in acc.Tensors(tag)[:1]:
            text = event.tensor_proto.string_val
            if text:
                writer.add_text(tag.removesuffix("/text_summary"), text[0].decode(), global_step=event.step)
    writer.close()


def iteration_seconds(row: dict) -> float:
    """Wall-clock of one metric row: ``time/iteration_s``, else its parts (RL²: rollout + update)."""
    if row.get("time/iteration_s") is not None:
        return float(row["time/iteration_s"])
    return float(sum(row.get(k) or 0.0 for k in ("time/rollout_s", "time/update_s")))


def held_out(row: dict) -> tuple[str, dict[int, float]]:
    """A metric row's held-out evaluation: the metric's name and its value after each adaptation step."""
    curve = {
        int(k.rsplit("_", 1)[1]): v for k, v in row.items() if k.startswith("meta_test/") and v is not None
    }
    metric = (
        next(k for k in row if k.startswith("meta_test/")).removeprefix("meta_test/").rsplit("_step_", 1)[0]
    )
    return metric, curve


def summarise(row: dict, algo: str) -> str:
    """The held-out evaluation of a metric row in a few words: RL²'s trial return (the sum of its
    segments' returns), otherwise the metric before adaptation and after the last step."""
    metric, curve = held_out(row)
    last = max(curve)
    if algo == "rl2":
        text = f"trial {metric} {sum(curve.values()):.4g}"
    elif last == 0:
        text = f"{metric} {curve[0]:.4g}"
    else:
        text = f"{metric} {curve[0]:.4g} after 0 steps, {curve[last]:.4g} after {last}"
    return f"{text} (iteration {row['iteration']}, the run's eval_tasks)"


def plot_curve(rows: list[dict], algo: str, path: Path, title: str, x_label: str) -> None:
    """``curve.png``: the held-out evaluations over training against environment steps (examples for the
    supervised learners) — RL²'s trial return, otherwise the metric before adaptation and after the last
    step — one point per evaluation the run logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in rows if any(k.startswith("meta_test/") and r[k] is not None for k in r)]
    if not evals:
        return
    series: dict[str, list[tuple[float, float]]] = {}
    for r in evals:
        metric, curve = held_out(r)
        last = max(curve)
        if algo == "rl2":
            points = {f"trial {metric}": sum(curve.values())}
        elif last == 0 or algo in ("protonets", "matching_nets", "snail"):
            points = {metric: curve[last]}
        else:
            points = {f"{metric}, 0 steps": curve[0], f"{metric}, {last} steps": curve[last]}
        for name, value in points.items():
            series.setdefault(name, []).append((float(r["env_steps"]), float(value)))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, points in series.items():
        ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name)
    ax.set_xlabel(x_label)
    ax.set_ylabel("held-out " + next(iter(series)).split(",")[0])
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the run directory the stage trained in")
    parser.add_argument("entry", type=Path, help="the zoo entry, experiments/zoo/<name>")
    parser.add_argument("--code-commit", help="commit of the code that trained the stage (default: HEAD)")
    parser.add_argument("--note", default="", help="a remark for the stage line (e.g. code changes)")
    parser.add_argument("--tb-points", type=int, default=500, help="max TensorBoard points per tag (500)")
    parser.add_argument("--max-mb", type=float, default=10.0, help="size limit of the entry (10 MB)")
    args = parser.parse_args(argv)

    src, entry = args.run_dir.resolve(), args.entry.resolve()
    for name in (*FILES, "checkpoints/latest.pt"):
        if not (src / name).is_file():
            print(f"zoo_stage: error: {src} holds no {name}", file=sys.stderr)
            return 2
    commit = (
        args.code_commit
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    entry.mkdir(parents=True, exist_ok=True)
    if src != entry:
        for name in FILES:
            shutil.copy2(src / name, entry / name)
        (entry / "checkpoints").mkdir(exist_ok=True)
        for name in CHECKPOINTS:
            if (src / "checkpoints" / name).is_file():
                shutil.copy2(src / "checkpoints" / name, entry / "checkpoints" / name)
        if (src / "eval").is_dir():
            shutil.copytree(src / "eval", entry / "eval", dirs_exist_ok=True)
        if (src / "amendments.jsonl").is_file():  # config changes between stages (`train --amend`)
            shutil.copy2(src / "amendments.jsonl", entry / "amendments.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        thin_tensorboard(src / "tb", Path(tmp) / "tb", args.tb_points)
        shutil.rmtree(entry / "tb", ignore_errors=True)
        shutil.copytree(Path(tmp) / "tb", entry / "tb")

    # the stage ends at the latest checkpoint: rows logged after it are dropped, as a resume drops them
    import torch

    state = torch.load(entry / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    rows = [r for r in read_metrics(entry / "metrics.jsonl") if r["iteration"] <= state["iteration"]]
    (entry / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stages = entry / "STAGES.md"
    start = previous_iteration(stages)
    stage_rows = [r for r in rows if r["iteration"] > start]
    last = {"iteration": state["iteration"], "env_steps": state["env_steps"]}
    wall_s = sum(iteration_seconds(r) for r in stage_rows)
    config = json.loads((entry / "config.json").read_text())
    algo = config["algo"]["name"]
    x_label = "environment steps" if config.get("env") else "training episodes"  # RL run or supervised
    evals = [r for r in rows if any(k.startswith("meta_test/") and r[k] is not None for k in r)]
    held_out = summarise(evals[-1], algo) if evals else "none yet"
    if not stages.is_file():
        stages.write_text(
            f"# Stages of `{entry.name}`\n\n"
            "Each line is one stage: trained with `metarl train` (first) or `metarl train --resume` (later) "
            "on 2 shared CPU cores, one torch thread. Wall-clock is the sum of the stage's iteration "
            "times.\n\n"
            "| stage | date | code commit | iterations | env steps / examples | stage wall-clock | "
            "latest held-out evaluation | note |\n|---|---|---|---|---|---|---|---|\n"
        )
    number = stage_count(stages) + 1
    plot_curve(
        rows, algo, entry / "curve.png", f"{entry.name}: held-out evaluations, stages 1–{number}", x_label
    )
    with stages.open("a") as f:
        f.write(
            f"| {number} | {date.today().isoformat()} | {commit} | {last['iteration']} | "
            f"{last['env_steps']} | "
            f"{wall_s / 3600:.2f} h | {held_out} | {args.note} |\n"
        )
    size = directory_bytes(entry)
    print(f"{entry}: stage {number}, iteration {last['iteration']}, {size / 1e6:.2f} MB")
    if size > args.max_mb * 1e6:
        print(f"zoo_stage: error: {entry} is {size / 1e6:.1f} MB > {args.max_mb} MB", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
