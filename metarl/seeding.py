"""Seeded parameter initialisation that leaves torch's global RNG as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block (module construction: ``nn.Module`` initialisers draw from the global RNG) under
    ``torch.manual_seed(seed)``, restoring the global RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
