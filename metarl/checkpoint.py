"""Checkpoints: written atomically, loaded safely.

``save`` writes to a temporary file in the same directory, flushes it to disk and renames it over the
target, so a run killed at any moment leaves either the old or the new checkpoint, never half of one.
``load`` uses ``torch.load(..., weights_only=True)``: a checkpoint is tensors and plain containers only, so
loading one from elsewhere cannot run code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from metarl.errors import CheckpointError

FORMAT_VERSION = 1


def save(path: Path, state: dict[str, Any]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
