"""Data-parallel meta-training on ``torch.distributed``: the one helper every learner and the trainer use.

A meta-batch is the unit of parallelism (``metarl.core``): every rank draws the *same* meta-batch from the
run's task generator and meta-trains on its contiguous slice (:func:`shard`); the learners average what
their outer step needs over ranks with explicit collectives — gradients before an optimiser step, and for
MAML-TRPO the gradient, every Fisher-vector product and the line search's surrogate and KL — so that every
rank takes the same step, the step one process would take on the whole meta-batch. (Not
``DistributedDataParallel``: it neither synchronises higher-order gradients nor supports
``create_graph=True``; pytorch/pytorch #63929, #63812, #47562. learn2learn shards a meta-batch the same way
in ``examples/vision/distributed_maml.py``.)

Launch with ``torchrun --nproc-per-node N -m metarl train CONFIG`` or ``metarl train CONFIG --nproc N``; the
process group is created by :func:`init` from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): backend ``nccl`` for a CUDA run (one GPU per local rank),
``gloo`` otherwise, with a collective timeout (``METARL_COLLECTIVE_TIMEOUT_S``, default 600 s) so that a
hung peer never blocks a rank for ever (a dead peer's closed connection fails the collective at once).

World size 1 — no launcher, or ``--nproc 1`` — creates no process group and every function here is the
identity: the single-process code path, bit for bit.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from metarl import losses
from metarl.errors import ConfigError

T = TypeVar("T")
#: the random generators a learner draws from (``MetaLearner.generators``)
Generators = Sequence[torch.Generator | np.random.Generator]

#: environment variable: seconds a collective waits for its peers before the rank fails
TIMEOUT_ENV = "METARL_COLLECTIVE_TIMEOUT_S"

#: exit code of a rank that stopped because another rank of the job died or hung (not the cause)
LOST_PEER_EXIT = 4


def launched() -> bool:
    """Whether this process was started by torchrun with more than one rank (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> torch.device:
    """Join the process group torchrun set up (a no-op at world size 1) and return this rank's device.

    ``device``: the run's resolved device. CUDA runs use ``nccl`` and the GPU ``cuda:LOCAL_RANK``; CPU runs
    use ``gloo``. Idempotent: a second call returns the rank's device without re-initialising.
    """
    if not launched():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): run at most one "
                "process per GPU (--nproc-per-node), or run.device = 'cpu'"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timeout)
    return device


def in_group() -> bool:
    """Whether this process has joined a process group (:func:`init` under torchrun)."""
    return dist.is_initialized()


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this is rank 0: the rank that writes the run dir and prints."""
    return rank() == 0


def check_divisible(n: int, key: str) -> None:
    """Refuse a meta-batch of ``n`` tasks (config key ``key``) that the ranks cannot share equally."""
    size = world_size()
    if n % size:
        raise ConfigError(f"{key} = {n} must be divisible by the number of processes ({size})")


def shard(items: Sequence[T]) -> list[T]:
    """This rank's contiguous slice of ``items`` (every rank holds the same sequence).

    Slices differ by at most one element when ``len(items)`` does not divide by the world size (the
    held-out tasks); meta-batches are checked to divide (:func:`check_divisible`) so that the mean over
    ranks of per-rank means is the mean over the meta-batch.
    """
    lo, hi = shard_bounds(len(items))
    return list(items[lo:hi])


def shard_bounds(n: int) -> tuple[int, int]:
    """``[lo, hi)`` of this rank's share of ``n`` items (``np.array_split``'s split)."""
    return split_bounds(n, world_size(), rank())


def split_bounds(n: int, parts: int, index: int) -> tuple[int, int]:
    """``[lo, hi)`` of part ``index`` when ``n`` items are split into ``parts`` contiguous parts whose sizes
    differ by at most one, the larger first (``np.array_split``'s split)."""
    base, extra = divmod(n, parts)
    lo = index * base + min(index, extra)
    return lo, lo + base + (index < extra)


def all_reduce_mean(vector: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of ``vector`` (a new tensor; ``vector`` itself at world size 1)."""
    if world_size() == 1:
        return vector
    out = vector.detach().to(_collective_device(), copy=True)  # nccl reduces GPU tensors only
    dist.all_reduce(out)
    return out.div_(world_size()).to(vector.device)


def all_reduce_mean_(tensors: Iterable[torch.Tensor]) -> None:
    """Replace each tensor by its mean over ranks, in place, with one collective per device and dtype."""
    if world_size() == 1:
        return
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group]).to(_collective_device())
        dist.all_reduce(flat)
        flat = flat.div_(world_size()).to(group[0].device)
        offset = 0
        with torch.no_grad():
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()


def all_reduce_grads_(parameters: Iterable[torch.Tensor] | torch.optim.Optimizer) -> None:
    """Average the ``.grad`` of ``parameters`` (or of every parameter an optimiser updates) over ranks
    before an optimiser step: each rank's loss is the mean over its shard of the meta-batch, so the mean of
    the ranks' gradients is the gradient of the meta-batch's mean loss. Ranks hold the same parameters and
    the same ones lack a gradient."""
    if world_size() == 1:
        return
    if isinstance(parameters, torch.optim.Optimizer):
        parameters = [p for group in parameters.param_groups for p in group["params"]]
    all_reduce_mean_(p.grad for p in parameters if p.grad is not None)


class _SumOverRanks(torch.autograd.Function):
    """``tensor`` summed over ranks, differentiably: the backward pass sums the incoming gradients over ranks
    too (every rank's output depends on every rank's input)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


class CrossRankBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm whose training batch is the whole meta-batch of every rank (a CPU- and GPU-capable
    ``SyncBatchNorm``): the mean and the variance are sums over ranks, differentiable, so the forward pass,
    the gradient and the running statistics are those of one process normalising the whole meta-batch —
    the batch a Prototypical / Matching Network normalises in one process (all episodes of a meta-batch
    through the network at once). Two-pass statistics (mean first, then the centred squares) as one process
    would compute them, up to float rounding. Evaluation (``eval()`` mode) and world size 1 are plain
    :class:`torch.nn.BatchNorm2d`. The state-dict keys are BatchNorm2d's, so checkpoints are interchangeable.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = (0, 2, 3)
        n = torch.tensor(float(x.numel() // x.shape[1]), dtype=torch.float64, device=x.device)
        dist.all_reduce(n)  # the elements per channel over all ranks
        n = n.to(x.dtype)
        mean = _SumOverRanks.apply(x.sum(dims)) / n
        centred = x - mean[None, :, None, None]
        var = _SumOverRanks.apply((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            with torch.no_grad():
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * n / (n - 1).clamp(min=1.0), factor)
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def sync_batch_norm_(module: torch.nn.Module) -> torch.nn.Module:
    """Make every :class:`torch.nn.BatchNorm2d` inside ``module`` a :class:`CrossRankBatchNorm2d` sharing its
    parameters and buffers (an optimiser built on them stays valid); ``module`` itself, unchanged, at world
    size 1. The learners that normalise a meta-batch in one BatchNorm batch (ProtoNets, Matching Nets, SNAIL,
    transfer's pretraining) call it once, after building their network."""
    if world_size() == 1:
        return module
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.BatchNorm2d:
                synced = CrossRankBatchNorm2d(
                    child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
                )
                synced.weight, synced.bias = child.weight, child.bias
                for key, buffer in child.named_buffers(recurse=False):
                    setattr(synced, key, buffer)
                synced.train(child.training)
                setattr(parent, name, synced)
    return module


def normalize_advantages(advantages: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """:func:`metarl.losses.normalize_advantages` with the mean and variance over the valid steps of every
    rank's shard (the statistics one process would compute on the whole meta-batch)."""
    if world_size() == 1:
        return losses.normalize_advantages(advantages, mask, eps)
    moments = torch.stack([(advantages * mask).sum(), mask.sum()])
    dist.all_reduce(moments)
    n = moments[1].clamp(min=1.0)
    mean = moments[0] / n
    squares = (((advantages - mean) * mask) ** 2).sum()
    dist.all_reduce(squares)
    return (advantages - mean) * torch.rsqrt(squares / n + eps) * mask


def all_reduce_scalar(value: float | torch.Tensor, op: str = "mean") -> float:
    """``value`` reduced over ranks (``op``: ``"mean"``, ``"sum"`` or ``"max"``) as a Python float."""
    if world_size() == 1:
        return float(value)
    device = value.device if isinstance(value, torch.Tensor) else _collective_device()
    t = torch.as_tensor(value, dtype=torch.float64, device=device).detach().clone().reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return float(t) / (world_size() if op == "mean" else 1)


def reduce_metrics(metrics: dict[str, float], sums: Sequence[str] = ("env_steps",)) -> dict[str, float]:
    """A learner's metrics over all ranks: the keys in ``sums`` summed (environment steps), the others
    averaged (returns, losses: every rank has as many tasks). One collective for the whole dict."""
    if world_size() == 1:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(values)
    scale = [1.0 if k in sums else 1.0 / world_size() for k in keys]
    return {k: float(v) * s for k, v, s in zip(keys, values.tolist(), scale, strict=True)}


def all_gather_tensor(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along ``dim`` in rank order (sizes along ``dim`` may differ)."""
    if world_size() == 1:
        return tensor
    device = _collective_device()  # nccl gathers GPU tensors
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([tensor.shape[dim]], dtype=torch.int64, device=device))
    pad = list(tensor.shape)
    pad[dim] = int(max(sizes)) - tensor.shape[dim]
    padded = torch.cat([tensor, tensor.new_zeros(pad)], dim=dim).to(device).contiguous()
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    whole = torch.cat([p.narrow(dim, 0, int(n)) for p, n in zip(parts, sizes, strict=True)], dim=dim)
    return whole.to(tensor.device)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj`` in rank order (``[obj]`` at world size 1)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` at world size 1)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_seed(seed: int, index: int = 0) -> int:
    """A 63-bit seed for generator ``index`` of this rank: ``seed`` itself on rank 0 when ``index`` is 0
    (the single-process streams), an independent stream from ``(seed, rank, index)`` otherwise."""
    return stream_seed(seed, rank(), index)


def stream_seed(seed: int, stream: int, index: int = 0) -> int:
    """A 63-bit seed for generator ``index`` of random stream ``stream``: ``seed`` itself for stream 0,
    index 0, an independent seed from ``(seed, stream, index)`` otherwise. Rank ``r`` draws stream ``r``
    (:func:`rank_seed`); block ``b`` of an evaluation draws stream ``b`` wherever it runs
    (:func:`metarl.evaluation.evaluate_sharded`)."""
    if stream == 0 and index == 0:
        return int(seed)
    return int(
        np.random.SeedSequence([int(seed), int(stream), int(index)]).generate_state(1, np.uint64)[0] >> 1
    )


def reseed_for_rank(generators: Generators, seed: int) -> None:
    """Give ranks other than 0 their own environment and policy randomness, from ``(seed, rank)``.

    Learners are built from the run's seed on every rank (identical initial parameters); this reseeds the
    generators they draw from (``MetaLearner.generators``) on ranks > 0, so that each rank's rollouts are
    its own. Rank 0 keeps the streams of a single-process run.
    """
    if rank() == 0:
        return
    for index, g in enumerate(generators):
        if isinstance(g, torch.Generator):
            g.manual_seed(rank_seed(seed, index + 1))
        else:
            g.bit_generator.state = type(g.bit_generator)(rank_seed(seed, index + 1)).state


def generator_states(generators: Generators) -> list[Any]:
    """The states of ``generators`` (torch byte tensors on the CPU, numpy state dicts), for a checkpoint."""
    return [g.get_state() if isinstance(g, torch.Generator) else g.bit_generator.state for g in generators]


def set_generator_states(generators: Generators, states: list[Any]) -> None:
    """Restore what :func:`generator_states` returned."""
    if len(states) != len(generators):
        raise ValueError(f"{len(states)} generator states for {len(generators)} generators")
    for g, state in zip(generators, states, strict=True):
        if isinstance(g, torch.Generator):
            g.set_state(state)
        else:
            g.bit_generator.state = state


def _collective_device() -> torch.device:
    """Where scalar collectives live: the rank's GPU under nccl, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def lost_peer(exc: BaseException) -> str:
    """What a collective's error says when a peer process died or hung (``""`` for any other error)."""
    text = str(exc)
    gone = ("closed by peer", "Connection reset by peer", "Broken pipe", "Timed out")
    if isinstance(exc, dist.DistError) or any(words in text for words in gone):
        return "another process of the job stopped or stopped answering; the job ends (see its own message)"
    return ""


def _blame(rank: int, failure: Any) -> tuple[int, float, int]:
    """Sort key of a failed rank, the cause first: a rank that failed on its own, then one the launcher
    stopped (SIGTERM: it stops the rest of the job when one rank fails), then one that stopped because its
    peer was gone (:data:`LOST_PEER_EXIT`); the earliest within each (timestamps have one-second resolution
    when a rank left no error file, so the rank breaks ties)."""
    import signal

    order = {LOST_PEER_EXIT: 2, -signal.SIGTERM: 1}.get(failure.exitcode, 0)
    return order, failure.timestamp, rank


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m metarl ARGV`` on ``nproc`` local ranks with torch's elastic launcher, in this process
    (``torchrun --standalone --nproc-per-node NPROC -m metarl ARGV``); returns the exit code.

    A rank that fails ends the job (the launcher stops the others at once, no restarts); the launcher's own
    report is replaced by one line naming the first rank that failed and how.
    """
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per rank unless told otherwise
    torchrun = ["--standalone", "--nproc-per-node", str(nproc), "--max-restarts", "0", "-m", "metarl", *argv]
    quiet = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.distributed.run")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.CRITICAL)
    try:
        run(parse_args(torchrun))
    except ChildFailedError as exc:
        failed_rank, failure = min(exc.failures.items(), key=lambda item: _blame(*item))
        if failure.exitcode < 0:
            how = f"was killed by {failure.signal_name()}"
        elif failure.exitcode in (2, 3):  # a metarl error: the rank printed it
            how = f"exited with code {failure.exitcode} (its error is above)"
        else:
            how = f"exited with code {failure.exitcode}"
        train = list(argv[:1]) == ["train"]
        resume = " (continue from checkpoints/latest.pt with --resume)" if train else ""
        resume = "" if failure.exitcode in (2, 3) else resume
        who = f"rank {failed_rank} of {nproc} (pid {failure.pid})"
        print(f"metarl: error: {who} {how}; the job stopped{resume}", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
    finally:
        for log, level in zip(quiet, levels, strict=True):
            log.setLevel(level)
    return 0


def destroy() -> None:
    """Leave the process group (end of a run)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_rank(code: int) -> NoReturn:
    """End a torchrun rank whose command returned ``code``: leave the process group, flush stdout and
    stderr, and exit without the interpreter's teardown (``os._exit``).

    Gloo's worker threads can outlive :func:`destroy` while a Python object still references the group; the
    interpreter's teardown then destroys their tensors without the GIL and the C++ runtime aborts the rank
    ("terminate called without an active exception", SIGABRT) after its work is done and its files are
    written — the launcher reports a failed job. Every file a command writes is closed before it returns
    (checkpoints and reports atomically, TensorBoard's writer explicitly), so nothing is lost by skipping
    the teardown. See pytorch/pytorch#179291.
    """
    destroy()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
