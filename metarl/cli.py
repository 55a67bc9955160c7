"""``metarl`` command line: ``train``, ``evaluate``, ``compare``, ``list``.

It parses arguments and calls ``metarl.run`` / ``metarl.compare``.

Every user error (bad config, unknown family, corrupted checkpoint, unwritable or full disk, …) ends with one
line on stderr and exit code 2, without a traceback and without touching an existing run dir. Exit codes:
0 success, 2 bad input / file / environment, 3 a non-finite value (the run diverged, or a checkpoint holds
NaN), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from metarl.config import MAX_TASKS
from metarl.errors import MetarlError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metarl", description="Meta-reinforcement learning toolkit.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="meta-train from a TOML experiment")
    train.add_argument("config", nargs="?", help="experiment TOML (optional with --resume)")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set algo.inner_lr=0.05 (repeatable)",
    )
    train.add_argument("--device", choices=["cpu", "cuda", "auto"], help="override run.device")
    train.add_argument("--seed", type=int, help="override run.seed")
    train.add_argument("--data-root", help="override data.root (supervised data sets)")
    train.add_argument(
        "--run-dir",
        type=Path,
        help="run directory (default: runs/<family>__<algo>__s<seed>__<time>)",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir from its last checkpoint",
    )
    _trust_code(train)

    ev = sub.add_parser("evaluate", help="adaptation table of a trained run on held-out tasks")
    ev.add_argument("run_dir", type=Path)
    ev.add_argument("--split", choices=["test", "train"], default="test")
    ev.add_argument("--num-tasks", type=int, default=40)
    ev.add_argument("--steps", type=int, default=3, help="adaptation steps (the curve covers 0..steps)")
    ev.add_argument("--checkpoint", choices=["latest", "best"], default="latest")
    ev.add_argument("--device", choices=["cpu", "cuda", "auto"])
    _trust_code(ev)

    cmp = sub.add_parser(
        "compare", help="learning from scratch vs transfer vs meta-learning on the same held-out tasks"
    )
    cmp.add_argument("config", help="compare TOML (experiments/compare_*.toml)")
    cmp.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, e.g. --set compare.num_tasks=10 (repeatable)",
    )
    cmp.add_argument("--out", type=Path, help="output directory (default: runs/compare/<config name>)")
    cmp.add_argument("--device", choices=["cpu", "cuda", "auto"], help="override compare.device")
    cmp.add_argument("--data-root", help="override data.root (supervised data sets)")
    _trust_code(cmp)

    sub.add_parser("list", help="task families and algorithms")
    return parser


def _trust_code(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="allow a run dir's config.json to import the Python module its env.id names "
        "('module:Class'); without it such a run dir is refused (default: off)",
    )


def _train(args: argparse.Namespace) -> None:
    import json

    from metarl import config as cfg
    from metarl import run

    if args.config is None:
        if not (args.resume and args.run_dir):
            raise MetarlError(
                "train needs CONFIG (or --resume --run-dir DIR to continue a run with its own config)"
            )
        raw = run.read_config(args.run_dir, "cannot resume")
        run.require_trust(raw, args.run_dir / run.CONFIG_FILE, args.trust_code)
    else:
        raw = cfg.load_toml(args.config)
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"run.device='{args.device}'")
    if args.seed is not None:
        overrides.append(f"run.seed={args.seed}")
    if args.data_root is not None:
        overrides.append(f"data.root={json.dumps(args.data_root)}")
    if args.resume and args.run_dir is None:
        raise MetarlError("--resume needs --run-dir DIR (the run to continue)")
    run.train(cfg.resolve(raw, overrides), args.run_dir, resume=args.resume)


def _evaluate(args: argparse.Namespace) -> None:
    from metarl import run

    if args.num_tasks < 2:
        raise MetarlError(f"--num-tasks must be >= 2 for a confidence interval, got {args.num_tasks}")
    if args.steps < 0:
        raise MetarlError(f"--steps must be >= 0, got {args.steps}")
    if args.num_tasks is not None and args.num_tasks > MAX_TASKS:
        raise MetarlError(f"--num-tasks must be <= {MAX_TASKS}, got {args.num_tasks}")
    _, paths = run.evaluate(
        args.run_dir,
        args.split,
        args.num_tasks,
        args.steps,
        args.checkpoint,
        args.device,
        trust_code=args.trust_code,
    )
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def _compare(args: argparse.Namespace) -> None:
    from metarl import compare

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"compare.device='{args.device}'")
    spec = compare.load(args.config, overrides)
    out = args.out or Path("runs") / "compare" / Path(args.config).stem
    compare.run_compare(spec, out, args.data_root, trust_code=args.trust_code)


def _list() -> None:
    import gymnasium as gym

    import envs
    from metarl.algorithms import ALGORITHMS

    print("Task families (env.id):")
    for spec in envs.FAMILIES:
        try:
            cls = gym.registry[spec.id].entry_point
            module, _, name = cls.partition(":")
            dist = getattr(__import__(module, fromlist=[name]), name).task_distribution
        except ImportError as exc:
            dist = f"(needs an extra: {exc})"
        extra = f"  [extra: {spec.extra}]" if spec.extra else ""
        print(f"  {spec.id:<28} {dist}{extra}")
    print("\nAlgorithms (algo.name):")
    for name, algo in ALGORITHMS.items():
        print(f"  {name:<28} {algo.summary}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            _train(args)
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "compare":
            _compare(args)
        else:
            _list()
    except MetarlError as exc:
        print(f"metarl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # read-only or full disk, a run dir that is a file, permissions, ...
        where = f": {exc.filename!r}" if exc.filename else ""
        print(f"metarl: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except MemoryError:
        print("metarl: error: out of memory; lower algo.meta_batch_size or the batch sizes", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metarl: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
