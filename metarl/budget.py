"""Bounded sizes: refuse, before allocating, a meta-batch that cannot fit in the machine's memory.

A typo such as ``algo.meta_batch_size = 1000000000`` would otherwise grow for minutes (gigabytes of task
objects, then rollout buffers) before a ``MemoryError``. :func:`check` estimates the bytes one meta-batch's
data needs — rollouts of ``meta_batch_size × rollouts × horizon`` steps for MAML-RL, trials for RL²,
``meta_batch_size`` episodes of ``ways × (shots + queries)`` images for few-shot learners — and the held-out
evaluation batch of RL learners (all ``eval_tasks`` at once), and raises :class:`ConfigError` naming the keys
to lower when the estimate exceeds the memory available (``MemAvailable`` of ``/proc/meminfo`` on CPU, free
device memory on CUDA).

The estimates are deliberately low (the data itself plus the activations of one forward pass, no allocator
overhead): they refuse configs that certainly cannot fit and never one that might.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from metarl.errors import ConfigError

FLOAT_BYTES = 4


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``: CUDA's free device memory, else ``MemAvailable`` (``None`` if unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rl_rollouts(config: Any, learner: Any, tasks: int) -> int:
    """MAML-RL / pretrained: the support and query episodes of ``tasks`` tasks (obs, actions, rewards,
    mask, advantages) and one layer of policy activations per step."""
    sampler, algo = learner.sampler, config.algo
    batches = algo.num_inner_steps + 1
    per_step = sampler.obs_dim + sampler.action_dim + 3 + sum(algo.hidden_sizes)
    return batches * tasks * sampler.envs_per_task * sampler.horizon * per_step * FLOAT_BYTES


def _rl2_trials(config: Any, learner: Any, tasks: int, trials: int) -> int:
    """RL²: ``tasks × trials`` trials of ``segments × segment_steps`` steps (inputs, actions, log-probs,
    values, rewards, mask, advantages) and the GRU's hidden states."""
    algo = learner.config
    steps = algo.segments_per_trial * learner.segment_steps
    per_step = learner.input_dim + learner.action_dim + 6 + algo.hidden_size
    return tasks * trials * steps * per_step * FLOAT_BYTES


def _episodes(config: Any, tasks: int) -> int:
    """Few-shot learners: ``tasks`` episodes of ``ways × (shots + queries)`` images (or sinusoid points)."""
    data = config.data
    ways = data.train_ways or data.ways
    examples = ways * ((data.train_shots or data.shots) + (data.train_queries or data.queries))
    if data.dataset == "sinusoid":
        return tasks * examples * 2 * FLOAT_BYTES
    return tasks * examples * data.channels * data.image_size**2 * FLOAT_BYTES


def estimates(config: Any, learner: Any) -> list[tuple[int, str]]:
    """``(bytes, keys to lower)`` of each batch the run will hold at once: the meta-batch and, for RL
    learners, the held-out evaluation batch."""
    name, algo, n = config.algo_name, config.algo, config.algo.meta_batch_size
    horizon = "env.max_episode_steps"
    if name in ("maml_rl", "pretrained_rl") and hasattr(learner, "sampler"):
        keys = f"algo.meta_batch_size, algo.rollouts_per_task or {horizon}"
        return [
            (_rl_rollouts(config, learner, n), keys),
            (_rl_rollouts(config, learner, config.run.eval_tasks), f"run.eval_tasks or {horizon}"),
        ]
    if name == "rl2" and hasattr(learner, "segment_steps"):
        keys = f"algo.meta_batch_size, algo.trials_per_task, algo.episodes_per_trial or {horizon}"
        return [
            (_rl2_trials(config, learner, n, algo.trials_per_task), keys),
            (
                _rl2_trials(config, learner, config.run.eval_tasks, algo.eval_trials_per_task),
                "run.eval_tasks",
            ),
        ]
    if config.data is not None:
        return [(_episodes(config, n), "algo.meta_batch_size, data.ways, data.shots or data.queries")]
    return []


def check(config: Any, learner: Any, device: torch.device) -> None:
    """Raise :class:`ConfigError` when a batch of the run is estimated not to fit in available memory."""
    free = available_bytes(device)
    if free is None:
        return
    for needed, keys in estimates(config, learner):
        if needed > free:
            raise ConfigError(
                f"one batch needs at least {_gib(needed)} but {_gib(free)} of {device.type} memory is "
                f"available; lower {keys}"
            )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**27 else f"{math.ceil(n / 2**20)} MiB"
