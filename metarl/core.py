"""The two interfaces of metarl. Read this file first.

Meta-learning alternates two loops. The *inner* loop adapts a learner to one task from a little task data
(a few rollouts, a support set); the *outer* loop improves the learner so that this adaptation works well on
new tasks. Every meta-learner in metarl — MAML-RL, RL², MAML/ProtoNets/Matching Nets on few-shot
classification — is written against the same small interface (after garage's ``MetaRLAlgorithm`` and
learn2learn's ``adapt`` API):

=====================  ===========================  ===================  ==========================
                        support data                 ``adapt`` returns    ``evaluate`` measures
=====================  ===========================  ===================  ==========================
MAML-RL                 rollouts of the current      fast weights         return of fresh rollouts
                        (adapted) policy
RL²                     one more episode of the      the hidden state     return of the next episode
                        trial
few-shot classifiers    the N-way K-shot support     fast weights /       accuracy on the query set
                        set                          prototypes
=====================  ===========================  ===================  ==========================

``TaskSampler`` is where tasks come from: the task family's train/test splits for RL, an N-way K-shot
episode sampler for supervised learning. The trainer (``metarl.run``) only ever calls
``TaskSampler.sample`` and ``MetaLearner.meta_update``; the evaluator (``metarl.evaluation``) only calls
``initial``/``support``/``adapt``/``evaluate``. Everything is batched: a call receives *all* tasks of a
meta-batch and processes them together (``vmap`` over tasks, one batched rollout), so a meta-batch can later
be sharded across processes without touching the algorithms.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from envs.base import Task

Adapted = TypeVar("Adapted")
Support = TypeVar("Support")
#: A source of random numbers a learner draws from.
RandomGenerator = torch.Generator | np.random.Generator


class TaskSampler(abc.ABC):
    """Draws batches of tasks from a split (``"train"`` or ``"test"``) of a task distribution."""

    @abc.abstractmethod
    def sample(self, n: int, *, split: str, rng: np.random.Generator) -> list[Task]:
        """``n`` tasks of ``split``, drawn with ``rng`` (the run's generator: it makes runs reproducible)."""

    @abc.abstractmethod
    def held_out(self, n: int, *, seed: int) -> list[Task]:
        """The fixed held-out evaluation tasks: the same ``(n, seed)`` always gives the same list."""

    @abc.abstractmethod
    def task_from_dict(self, data: dict[str, Any]) -> Task:
        """Rebuild a task written with ``envs.base.task_to_dict`` (run dirs store held-out tasks as JSON)."""


class MetaLearner(abc.ABC, Generic[Support, Adapted]):
    """A learner that adapts to a task from a little data, and a meta-update that improves adaptation.

    Attributes:
        device: where every tensor of the learner lives.
        metric_name: what ``evaluate`` returns per task (``"return"``, ``"accuracy"``, ``"mse"``).
        higher_is_better: orientation of that metric (used to keep the best checkpoint).
        step_unit: what one adaptation step is, for the x-axis of adaptation curves (``"inner gradient
            steps"``, ``"RL² segments of 10 pulls"``); ``""`` for a learner with no adaptation steps (it
            reads the support set once: its curve is one point).
    """

    device: torch.device
    metric_name: str = "return"
    higher_is_better: bool = True
    step_unit: str = "adaptation steps"

    # -- the inner loop (adaptation), used by the evaluator and inside meta_update -------------------
    @abc.abstractmethod
    def initial(self, tasks: Sequence[Task]) -> Adapted:
        """The un-adapted learner for each task (meta-parameters, empty memory, zero hidden state)."""

    @abc.abstractmethod
    def support(self, tasks: Sequence[Task], adapted: Adapted, step: int) -> Support:
        """Collect the data of adaptation step ``step`` (0-based) for every task."""

    @abc.abstractmethod
    def adapt(self, adapted: Adapted, support: Support, step: int) -> Adapted:
        """One adaptation step from ``support`` (batched over tasks)."""

    @abc.abstractmethod
    def evaluate(self, tasks: Sequence[Task], adapted: Adapted) -> torch.Tensor:
        """The metric of the adapted learner on fresh query data: a ``[num_tasks]`` tensor."""

    # -- the outer loop ------------------------------------------------------------------------------
    @abc.abstractmethod
    def meta_update(self, tasks: Sequence[Task]) -> dict[str, float]:
        """One meta-training iteration on a meta-batch of tasks; returns scalar metrics.

        Keys are TensorBoard tags (``meta_train/…``, ``losses/…``, ``time/…``) and must include
        ``"env_steps"`` (environment steps, or examples seen for supervised learners, consumed by this
        iteration): the trainer's x-axis.
        """

    def selection_score(self, curve_mean: Sequence[float]) -> float:
        """The score that picks ``best.pt`` from a held-out curve (``mean`` per step; higher is better).

        Default: the metric after the last adaptation step. A learner whose objective is the whole curve
        (RL²'s trial return) overrides it.
        """
        return curve_mean[-1] if self.higher_is_better else -curve_mean[-1]

    def adaptation_cost(self) -> tuple[int, int]:
        """``(support_steps, evaluated_steps)`` of an RL learner, per task.

        ``support_steps``: environment steps of experience one ``support`` call gathers for a task;
        ``evaluated_steps``: the length of the episode (or segment) whose return ``evaluate`` reports.
        ``metarl compare`` uses them to put every learner on one x-axis (environment steps of experience
        on the task) and one y-axis (return per episode). Supervised learners do not implement it: their
        adaptation budget is the number of labelled examples in the support set.
        """
        raise NotImplementedError(f"{type(self).__name__} does not report its adaptation cost in env steps")

    def generators(self) -> Sequence[RandomGenerator]:
        """Every random generator the learner draws from (``torch.Generator`` / ``np.random.Generator``),
        including those of its rollout sampler and environments, in a fixed order.

        :func:`evaluation_randomness` reseeds them for an evaluation and restores them afterwards, so that
        evaluating never consumes the training streams: training is the same whatever the evaluation
        cadence, and an evaluation gives the same numbers whenever it runs. A learner that draws random
        numbers must list every generator here; the default (none) is right only for deterministic learners.
        """
        return ()

    # -- persistence ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: parameters, optimiser state, the learner's RNG state."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


def _derived_seed(seed: int, index: int) -> int:
    """A 63-bit seed for generator ``index`` of an evaluation with ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> 1)


@contextlib.contextmanager
def evaluation_randomness(learner: MetaLearner[Any, Any], seed: int) -> Iterator[None]:
    """Run the block (an evaluation) with the learner's generators reseeded from ``seed``, then restore them.

    Each generator of :meth:`MetaLearner.generators` gets the state of a fresh generator seeded with
    ``(seed, its index)``, and torch's global RNG is forked, so the block's random numbers depend only on
    ``seed`` — not on when the evaluation runs or on how far training has gone — and the training streams
    continue afterwards exactly where they were. Used by the trainer's periodic evaluation and by
    ``metarl evaluate`` (with the run's ``eval_seed``).
    """
    generators = list(learner.generators())
    saved = [g.get_state() if isinstance(g, torch.Generator) else g.bit_generator.state for g in generators]
    cuda = [d.index or 0 for d in [getattr(learner, "device", torch.device("cpu"))] if d.type == "cuda"]
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(_derived_seed(seed, len(generators)))
            for index, g in enumerate(generators):
                if isinstance(g, torch.Generator):
                    g.manual_seed(_derived_seed(seed, index))
                else:
                    bits = type(g.bit_generator)(np.random.SeedSequence([int(seed), index]))
                    g.bit_generator.state = bits.state
            yield
    finally:
        for g, state in zip(generators, saved, strict=True):
            if isinstance(g, torch.Generator):
                g.set_state(state)
            else:
                g.bit_generator.state = state


def adaptation_curve(
    learner: MetaLearner[Any, Any],
    tasks: Sequence[Task],
    steps: int,
    on_point: Callable[[], None] | None = None,
) -> torch.Tensor:
    """The metric after ``0..steps`` adaptation steps on each task: a ``[steps + 1, num_tasks]`` tensor.

    This is the one evaluation loop every meta-learner goes through; ``metarl.evaluation`` adds the
    statistics (mean and 95% confidence interval over tasks). ``on_point`` is called after each of the
    ``steps + 1`` points (a progress bar).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    done = on_point or (lambda: None)
    adapted = learner.initial(tasks)
    curve = [learner.evaluate(tasks, adapted)]
    done()
    for step in range(steps):
        adapted = learner.adapt(adapted, learner.support(tasks, adapted, step), step)
        curve.append(learner.evaluate(tasks, adapted))
        done()
    return torch.stack(curve)
