"""``metarl.allocator``: large tensors reuse freed heap memory instead of faulting in fresh pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, statistics, sys
import torch
if sys.argv[1] == "keep":
    from metarl.allocator import keep_freed_memory
    assert keep_freed_memory()
faults = []
for _ in range(12):  # a 256 MB tensor allocated, written and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64, 1024, 1024).sum()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults))
"""


def _page_faults(mode: str) -> float:
    """The median page faults of one 256 MB tensor's life in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=120
    )
    return float(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings (Linux)")
def test_freed_tensors_stay_in_the_heap() -> None:
    """A 256 MB tensor: with the C library's defaults every one faults its 65k pages in again; with kept heap
    memory the typical one reuses pages already there."""
    default, kept = _page_faults("default"), _page_faults("keep")
    assert default > 60_000
    assert kept < default / 50


def test_metarl_malloc_system_keeps_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from metarl import allocator

    monkeypatch.setenv(allocator.ENV, "system")
    assert allocator.keep_freed_memory() is False
