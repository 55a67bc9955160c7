"""MAML-RL against the MAML paper's baselines on the same held-out tasks, through the one evaluator.

Finn et al. 2017 (arXiv:1703.03400), §5.3, Fig. 4–5: the return after 0..K inner policy-gradient steps on
40 held-out tasks of

- **MAML**: a ``maml_rl`` run (meta-trained θ, fine-tuned with ``test_inner_lrs``);
- **pretrained**: a ``pretrained_rl`` run (one policy trained with the same outer optimiser on all training
  tasks without inner steps, fine-tuned with the same inner steps);
- **random init**: the same learner untrained (a fresh policy from the MAML run's config and seed), fine-tuned
  with the same inner steps.

All three adapt to the held-out task set of the MAML run (``run.eval_seed``). Writes ``<stem>.json``,
``<stem>.md`` and ``<stem>.png`` into ``--out`` and prints the Markdown table. Usage::

    python experiments/compare_maml_baselines.py --maml runs/nav_maml --pretrained runs/nav_pre \\
        --out runs/nav_eval --stem maml_nav2d
"""

from __future__ import annotations

import argparse
from pathlib import Path

from metarl.evaluation import AdaptationCurve, evaluate_adaptation, markdown_table, write_report
from metarl.run import Experiment, load_run, resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maml", type=Path, required=True, help="run dir of a maml_rl run")
    parser.add_argument("--pretrained", type=Path, required=True, help="run dir of a pretrained_rl run")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stem", default="maml_vs_baselines")
    parser.add_argument("--num-tasks", type=int, default=40)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--eval-seed",
        type=int,
        default=None,
        help="held-out task set (default: the MAML run's run.eval_seed; another seed gives tasks that played "
        "no part in choosing best.pt)",
    )
    parser.add_argument("--checkpoint", choices=["latest", "best"], default="latest")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    args = parser.parse_args()

    maml = load_run(args.maml, args.checkpoint, args.device)
    pretrained = load_run(args.pretrained, args.checkpoint, args.device)
    random_init = Experiment.build(maml.config, resolve_device(args.device))
    seed = maml.config.run.eval_seed if args.eval_seed is None else args.eval_seed
    tasks = maml.tasks.held_out(args.num_tasks, seed=seed)
    curves: dict[str, AdaptationCurve] = {
        "MAML": evaluate_adaptation(maml.learner, tasks, args.steps),
        "pretrained": evaluate_adaptation(pretrained.learner, tasks, args.steps),
        "random init": evaluate_adaptation(random_init.learner, tasks, args.steps),
    }
    title = f"{maml.config.env.id}: {args.num_tasks} held-out tasks (seed {seed})"
    paths = write_report(curves, args.out, args.stem, title)
    print(markdown_table(curves))
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
