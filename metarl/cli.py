"""``metarl`` command line: ``train``, ``evaluate``, ``compare``, ``list``, ``check-family``.

It parses arguments and calls ``metarl.run`` / ``metarl.compare``.

Every user error (bad config, unknown family, corrupted checkpoint, unwritable or full disk, …) ends with one
line on stderr and exit code 2, without a traceback and without touching an existing run dir. Exit codes:
0 success, 2 bad input / file / environment, 3 a non-finite value (the run diverged, or a checkpoint holds
NaN), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from metarl.config import MAX_ADAPTATION_STEPS, MAX_TASKS
from metarl.errors import MetarlError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metarl", description="Meta-reinforcement learning toolkit.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    train = sub.add_parser("train", help="meta-train from a TOML experiment")
    train.add_argument("config", nargs="?", help="experiment TOML (optional with --resume)")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set algo.inner_lr=0.05 (repeatable; default: none)",
    )
    train.add_argument(
        "--device",
        choices=["cpu", "cuda", "auto"],
        help="override run.device (default: the config's run.device, itself 'auto' = CUDA when available)",
    )
    train.add_argument(
        "--seed", type=int, help="override run.seed (default: the config's run.seed, itself 0)"
    )
    train.add_argument(
        "--data-root", help="override data.root of a supervised data set (default: the config's data.root)"
    )
    train.add_argument(
        "--run-dir",
        type=Path,
        help="run directory (default: runs/<family>__<algo>__s<seed>__<time>)",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir from its last checkpoint (default: off, start a new run)",
    )
    train.add_argument(
        "--amend",
        action="store_true",
        help="with --resume: continue under changed config values (e.g. a step-size schedule), each change "
        "recorded in the run dir's amendments.jsonl; the run then equals no uninterrupted run (default: "
        "off, a resume must keep the run's config)",
    )
    train.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel training on N processes of this machine, the meta-batch sharded across them "
        "(torchrun --nproc-per-node N -m metarl train ...; README, Distributed training) (default: 1)",
    )
    _trust_code(train)

    ev = sub.add_parser(
        "evaluate",
        help="adaptation table of a trained run on held-out tasks",
        description="Adaptation curve of a trained run (mean ± 95% CI over tasks); writes "
        "RUN_DIR/eval/<checkpoint>_<split>.{json,md,png}.",
    )
    ev.add_argument("run_dir", type=Path, help="a run directory written by metarl train")
    ev.add_argument(
        "--split",
        choices=["test", "train"],
        default="test",
        help="test: the run's held-out tasks (tasks.json); train: training-split tasks (default: test)",
    )
    ev.add_argument(
        "--num-tasks",
        type=int,
        help="tasks to evaluate (default: the run's run.eval_tasks; with --split test, tasks.json's tasks)",
    )
    ev.add_argument(
        "--steps",
        type=int,
        help="adaptation steps: the curve covers 0..steps (default: the run's run.eval_steps)",
    )
    ev.add_argument(
        "--checkpoint",
        choices=["latest", "best"],
        default="latest",
        help="which checkpoint to evaluate (default: latest)",
    )
    ev.add_argument(
        "--device", choices=["cpu", "cuda", "auto"], help="where to evaluate (default: the run's run.device)"
    )
    ev.add_argument(
        "--data-root",
        help="where the supervised data set lies on this machine (default: the run's data.root)",
    )
    ev.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="evaluate on N processes of this machine, the tasks sharded across them (default: 1)",
    )
    ev.add_argument(
        "--protocol",
        choices=["metarl", "metaworld"],
        default="metarl",
        help="metarl: the run's own held-out tasks; metaworld: Meta-World v3's official meta-RL evaluation "
        "(its held-out test goals / environments, 10 adaptation episodes, success rate) for Meta-World "
        "maml_rl / pretrained_rl / rl2 runs; --steps sets its adaptation steps (default: metarl)",
    )
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
        help="override a key, e.g. --set compare.num_tasks=10 (repeatable; default: none)",
    )
    cmp.add_argument("--out", type=Path, help="output directory (default: runs/compare/<config name>)")
    cmp.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="run on N processes of this machine, the held-out tasks sharded across them (default: 1)",
    )
    cmp.add_argument(
        "--device",
        choices=["cpu", "cuda", "auto"],
        help="override compare.device (default: the file's compare.device, itself 'auto')",
    )
    cmp.add_argument(
        "--data-root", help="override data.root of a supervised data set (default: the file's data.root)"
    )
    _trust_code(cmp)

    sub.add_parser("list", help="task families (with the extra each needs) and learners")

    check = sub.add_parser(
        "check-family",
        help="check a task family against the contract of envs/base.py (and gymnasium's check_env)",
        description="Build the family once and check the task-family contract (the same checks metarl "
        "train runs before it writes anything), then gymnasium's check_env. Exit 0 when all pass, else 2.",
    )
    check.add_argument("env_id", metavar="ID", help="a registered id, 'module:Class' or 'module:EnvId'")
    check.add_argument(
        "--kwargs",
        default="{}",
        metavar="JSON",
        help="constructor keyword arguments as a JSON object, e.g. '{\"goal_range\": 2.0}' (default: {})",
    )
    check.add_argument(
        "--max-episode-steps",
        type=int,
        help="horizon when the family registers none (default: the registration's)",
    )
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

    if args.amend and not args.resume:
        raise MetarlError("--amend changes the config of a resumed run: pass it with --resume --run-dir DIR")
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
    run.train(cfg.resolve(raw, overrides), args.run_dir, resume=args.resume, amend=args.amend)


def _evaluate(args: argparse.Namespace) -> None:
    from metarl import run

    if args.num_tasks is not None and args.num_tasks < 2:
        raise MetarlError(f"--num-tasks must be >= 2 for a confidence interval, got {args.num_tasks}")
    if args.steps is not None and args.steps < 0:
        raise MetarlError(f"--steps must be >= 0, got {args.steps}")
    if args.num_tasks is not None and args.num_tasks > MAX_TASKS:
        raise MetarlError(f"--num-tasks must be <= {MAX_TASKS}, got {args.num_tasks}")
    if args.steps is not None and args.steps > MAX_ADAPTATION_STEPS:
        raise MetarlError(f"--steps must be <= {MAX_ADAPTATION_STEPS}, got {args.steps}")
    if args.protocol == "metaworld":
        _evaluate_metaworld(args)
        return
    _, paths = run.evaluate(
        args.run_dir,
        args.split,
        args.num_tasks,
        args.steps,
        args.checkpoint,
        args.device,
        trust_code=args.trust_code,
        data_root=args.data_root,
    )
    if paths:  # rank 0 writes the report (the other ranks of an --nproc evaluation return none)
        print("wrote " + ", ".join(str(p) for p in paths.values()))


def _evaluate_metaworld(args: argparse.Namespace) -> None:
    """``metarl evaluate RUN --protocol metaworld``: Meta-World's own evaluation of a Meta-World run."""
    import dataclasses

    from metarl import metaworld_protocol as protocol
    from metarl import run
    from metarl.core import evaluation_randomness

    if args.nproc > 1 or args.split != "test" or args.num_tasks is not None:
        raise MetarlError(
            "--protocol metaworld takes --steps, --checkpoint, --device (not --nproc, --split, --num-tasks)"
        )
    exp = run.load_run(args.run_dir, args.checkpoint, args.device, trust_code=args.trust_code)
    if exp.config.env is None:
        raise MetarlError("--protocol metaworld evaluates Meta-World RL runs; this is a supervised run")
    protocol.check(exp.config.env.id, exp.config.algo_name)
    settings = protocol.ProtocolConfig()
    if args.steps is not None:
        settings = dataclasses.replace(settings, adaptation_steps=args.steps)
    print(f"Meta-World protocol on {exp.config.env.id} ({args.checkpoint} checkpoint): {settings}")
    with evaluation_randomness(exp.learner, exp.config.run.eval_seed):
        report = protocol.evaluate(
            exp.learner, exp.config.algo_name, exp.config.env.id, exp.config.env.kwargs, settings
        )
    title = (
        f"{exp.config.algo_name} on {exp.config.env.id}: Meta-World protocol ({args.checkpoint} checkpoint)"
    )
    paths = protocol.write(report, Path(args.run_dir) / "eval", f"{args.checkpoint}_metaworld", title)
    print(protocol.markdown(report, title))
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
    """Every registered family (with its task distribution, or the install command of its missing extra)
    and every learner. Imports each family's module, never builds an env."""
    import importlib

    import envs
    from metarl.algorithms import ALGORITHMS

    print("Task families (env.id):")
    for spec in envs.FAMILIES:
        module, _, name = spec.entry_point.partition(":")
        try:
            if spec.extra:  # the extra's own package (Meta-World's module imports it only when built)
                importlib.import_module(spec.extra)
            dist = getattr(importlib.import_module(module), name).task_distribution
        except ImportError:
            dist = f'not installed: pip install "metarl[{spec.extra}]"' if spec.extra else "not importable"
        print(f"  {spec.id:<28} {dist}")
    print("  (your own: env.id = 'my_module:MyFamily'; check it with metarl check-family my_module:MyFamily)")
    print("\nLearners (algo.name):")
    for name, algo in ALGORITHMS.items():
        print(f"  {name:<28} {algo.summary} [{'task family' if algo.source == 'env' else 'data set'}]")


def _check_family(args: argparse.Namespace) -> int:
    """``metarl check-family``: print each check that passed, or each problem; 0 when all pass, else 2."""
    import json
    import re
    import warnings

    from gymnasium.utils.env_checker import check_env

    from metarl.families import CHECKS, check_family, env_factory
    from metarl.rollouts import BatchedFamily

    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as exc:
        raise MetarlError(f"--kwargs is not valid JSON ({exc}): {args.kwargs!r}") from None
    if not isinstance(kwargs, dict):
        raise MetarlError(f"--kwargs must be a JSON object, got {args.kwargs!r}")
    make_env = env_factory(args.env_id, kwargs, args.max_episode_steps, check=False)
    problems = check_family(make_env())
    if problems:
        for problem in problems:
            print(f"FAIL  {problem}")
        print(f"{args.env_id}: {len(problems)} contract violation(s); see envs/base.py")
        return 2
    for line in CHECKS:
        print(f"ok    {line}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(make_env().unwrapped, skip_render_check=True)
    except Exception as exc:  # a user's env: report gymnasium's finding as one line
        print(f"FAIL  gymnasium check_env: {type(exc).__name__}: {' '.join(str(exc).split())}")
        return 2
    first = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(caught[0].message).split())) if caught else ""
    note = f" ({len(caught)} warning(s), first: {first})" if caught else ""
    print("ok    gymnasium check_env" + note)
    batched = BatchedFamily(make_env)
    how = "its own make_batched" if batched.native else "gymnasium copies (no make_batched: GymBatchedEnv)"
    print(f"{args.env_id} follows the task-family contract; learners step it through {how}")
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    """``argv`` without its ``--nproc N`` / ``--nproc=N`` (what each rank of the launched job runs)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    from metarl import allocator

    allocator.keep_freed_memory()  # large tensors reuse heap memory instead of faulting fresh pages in
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.command is None:  # bare `metarl`: what it can do
        parser.print_help()
        return 2
    try:
        if args.command in ("train", "evaluate", "compare"):
            if args.nproc < 1:
                raise MetarlError(f"--nproc must be >= 1, got {args.nproc}")
            world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun on every rank
            if world == 1 and args.nproc > 1:
                from metarl import distributed

                return distributed.launch(args.nproc, _without_nproc(argv))
            if args.nproc not in (1, world):
                raise MetarlError(f"--nproc {args.nproc} inside a torchrun job of {world} processes")
        if args.command == "train":
            _train(args)
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "compare":
            _compare(args)
        elif args.command == "check-family":
            return _check_family(args)
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
    except RuntimeError as exc:  # a data-parallel rank whose peer died: one line, not gloo's traceback
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            raise
        from metarl import distributed

        if not distributed.lost_peer(exc):
            raise
        print(f"metarl: error: rank {distributed.rank()}: {distributed.lost_peer(exc)}", file=sys.stderr)
        return distributed.LOST_PEER_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
