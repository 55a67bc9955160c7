"""Data-parallel meta-training (``metarl.distributed``): 2 gloo ranks on the CPU against 1 process.

The function-level checks give both ranks the same fixed meta-batch (fixed rollouts / episodes); each rank
takes its half, runs one meta-update through the learner's collectives, and the parameters must equal
those of one process updating on the whole meta-batch (max abs difference ≤ 1e-6). One spawn of two
workers runs every check (interpreter start-up dominates); each test compares one learner.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metarl import distributed

NAV = "metarl/Navigation2D-v0"
TOLERANCE = 1e-6


# -- the learners' meta-updates on a fixed meta-batch of 4 tasks -------------------------------------------
Check = Callable[[int, int], dict[str, torch.Tensor]]


def _maml_rl(fvp: str, outer: str = "trpo", **overrides: Any) -> Check:
    """One outer step of MAML-RL on rank ``r``'s share of fixed rollouts of 4 Navigation2D tasks.

    ``cg_damping = 0.1``: at this tiny size the Fisher is nearly singular and 10 undamped conjugate-gradient
    iterations amplify float32 rounding (a mean of two half-batch means vs one mean) far beyond 1e-6; the
    damped system keeps the comparison about the collectives, not about the conditioning.
    """

    def run(r: int, world: int) -> dict[str, torch.Tensor]:
        from metarl.algorithms.maml_rl import MAMLRL, MAMLRLConfig, OldPolicy, _task_slice
        from metarl.families import FamilyTaskSampler, env_factory
        from metarl.rollouts import RolloutSampler

        config = MAMLRLConfig(
            hidden_sizes=(8,),
            meta_batch_size=4,
            rollouts_per_task=3,
            fvp=fvp,
            outer=outer,
            cg_damping=0.1,
            **overrides,
        )
        make_env = env_factory(NAV, {}, 10)
        sampler = RolloutSampler(make_env, 10, config.rollouts_per_task, torch.device("cpu"), 0)
        learner = MAMLRL(config, sampler, 0)
        tasks = FamilyTaskSampler(make_env()).held_out(4, seed=1)
        params, supports = learner.initial(tasks), []
        meta = {k: v.detach() for k, v in learner.meta_parameters().items()}
        for step in range(config.num_inner_steps):
            supports.append(learner.support(tasks, params, step))
            params = learner._inner_step(params, supports[-1], learner._lr(meta, step, True), False)
        query = learner.support(tasks, params, config.num_inner_steps)
        old = learner._old_policy(params, query)
        part = slice(r * 4 // world, (r + 1) * 4 // world)
        step_fn = {"trpo": learner._trpo_step, "vpg": learner._vpg_step, "ppo": learner._ppo_step}[outer]
        step_fn(
            [_task_slice(b, part) for b in supports],
            _task_slice(query, part),
            OldPolicy(*(t[:, part] for t in old)),
        )
        return {k: v.detach().clone() for k, v in learner.meta_parameters().items()}

    return run


CHECKS: dict[str, Check] = {
    "maml_trpo_gauss_newton": _maml_rl("gauss_newton"),
    "maml_trpo_hessian": _maml_rl("hessian"),
    "maml_trpo_meta_sgd": _maml_rl("gauss_newton", learn_inner_lr=True),
    "maml_vpg": _maml_rl("gauss_newton", outer="vpg", outer_lr=0.01),
}


def _worker(r: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=r, world_size=world)
    try:
        torch.save({name: check(r, world) for name, check in CHECKS.items()}, f"{out}.{r}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict[str, torch.Tensor]]]:
    """Every check's parameters on rank 0 and rank 1 of one 2-process gloo group."""
    tmp = tmp_path_factory.mktemp("dist")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = (2, str(tmp / "store"), str(tmp / "out"))
    mp.start_processes(_worker, args=args, nprocs=2, start_method="spawn")
    return [torch.load(tmp / f"out.{r}") for r in range(2)]


@pytest.mark.parametrize("name", list(CHECKS))
def test_one_meta_update_on_two_ranks_equals_one_process(
    name: str, two_ranks: list[dict[str, dict[str, torch.Tensor]]]
) -> None:
    assert distributed.world_size() == 1  # the test process itself has no process group
    single = CHECKS[name](0, 1)
    for r in range(2):
        for key, value in single.items():
            diff = (two_ranks[r][name][key] - value).abs().max().item()
            assert diff <= TOLERANCE, f"{name}: rank {r} differs in {key} by {diff:.2e}"
    # the update moved the parameters (a no-op step would pass trivially)
    fresh = _initial_parameters(name)
    assert any(not torch.equal(fresh[k], single[k]) for k in single)


def _initial_parameters(name: str) -> dict[str, torch.Tensor]:
    """The meta-parameters before the update (a learner built the same way, no step)."""
    from metarl.algorithms.maml_rl import MAMLRL, MAMLRLConfig
    from metarl.families import env_factory
    from metarl.rollouts import RolloutSampler

    meta_sgd = name == "maml_trpo_meta_sgd"
    config = MAMLRLConfig(hidden_sizes=(8,), meta_batch_size=4, rollouts_per_task=3, learn_inner_lr=meta_sgd)
    sampler = RolloutSampler(env_factory(NAV, {}, 10), 10, 3, torch.device("cpu"), 0)
    return {k: v.detach().clone() for k, v in MAMLRL(config, sampler, 0).meta_parameters().items()}


def test_shard_and_collectives_are_the_identity_at_world_size_one() -> None:
    tasks = list(range(6))
    assert distributed.shard(tasks) == tasks and distributed.shard_bounds(6) == (0, 6)
    v = torch.arange(3.0)
    assert distributed.all_reduce_mean(v) is v
    assert distributed.all_gather_tensor(v) is v
    assert distributed.reduce_metrics({"env_steps": 5.0, "x": 2.0}) == {"env_steps": 5.0, "x": 2.0}
    assert distributed.rank_seed(7) == 7
    distributed.check_divisible(5, "algo.meta_batch_size")  # any size divides by 1
