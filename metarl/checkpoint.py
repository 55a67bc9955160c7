"""Checkpoints: written atomically, loaded safely, checked for non-finite values.

``save`` serialises the state in memory and hands the bytes to :func:`metarl.atomic.write_bytes` (temp file
in the same directory, fsync, rename), so a run killed at any moment leaves either the old or the new
checkpoint, never half of one, and a full disk raises a plain ``OSError`` (ENOSPC) with the old checkpoint
intact. ``load`` uses ``torch.load(..., weights_only=True)``: a checkpoint is tensors and plain containers
only, so loading one from elsewhere cannot run code. :func:`first_non_finite` finds a NaN or infinity in a
(nested) state with one fused check per tensor.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from metarl import atomic
from metarl.errors import CheckpointError

FORMAT_VERSION = 1


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain containers) to ``path`` atomically, with the format version."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **state}, buffer)
    atomic.write_bytes(path, buffer.getvalue())


def load(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to unpickle means the file cannot be trusted
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupted or truncated ({reason[:120]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a metarl checkpoint (format {FORMAT_VERSION})"
        )
    return state


def _floating_tensors(state: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(dotted key, tensor)`` for every floating-point tensor in a nested dict / list state."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() or state.is_complex():
            yield prefix or "<root>", state
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from _floating_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, list | tuple):
        for i, value in enumerate(state):
            yield from _floating_tensors(value, f"{prefix}[{i}]")


def first_non_finite(state: Any) -> str | None:
    """The key of the first floating tensor of ``state`` holding a NaN or an infinity, or ``None``.

    The tensors of each ``(device, dtype)`` are flattened into one vector and checked with a single
    ``isfinite().all()`` on their device (one host sync per group: a few for a whole learner); only when
    something is non-finite are the tensors looked at one by one to name it.
    """
    tensors = list(_floating_tensors(state))
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for _, t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t.detach().reshape(-1))
    if all(bool(torch.isfinite(torch.cat(group)).all()) for group in groups.values()):
        return None
    return next(key for key, t in tensors if not bool(torch.isfinite(t.detach()).all()))
