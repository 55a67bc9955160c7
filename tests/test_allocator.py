"""``metarl.allocator``: large tensors come from the heap, which keeps freed memory, not from own mmaps."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
import torch
if sys.argv[1] == "keep":
    from metarl.allocator import keep_freed_memory
    assert keep_freed_memory()
x = torch.ones(64, 1024, 1024)  # 256 MB, alive while the maps are read
heap = mapped = 0
for line in open("/proc/self/maps"):
    fields = line.split()
    low, high = (int(v, 16) for v in fields[0].split("-"))
    name = fields[5] if len(fields) > 5 else ""
    if name == "[heap]":
        heap = max(heap, high - low)
    elif not name and high - low >= 256 << 20:
        mapped += 1  # an anonymous mapping of its own: malloc's mmap of the tensor
print(heap >= 256 << 20, mapped > 0)
"""


def _where(mode: str) -> str:
    """Where a live 256 MB tensor lives in a fresh interpreter: ``"<in the heap> <own mapping>"``."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout.strip()


def test_large_tensors_come_from_the_heap() -> None:
    """With the C library's defaults a 256 MB tensor is an mmap of its own (unmapped when freed, faulted in
    again by the next one); after ``keep_freed_memory`` it lives in the heap, which keeps freed memory.
    Reads glibc's behaviour through /proc: Linux, the platform metarl runs and is tested on."""
    assert _where("default") == "False True"
    assert _where("keep") == "True False"


def test_metarl_malloc_system_keeps_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from metarl import allocator

    monkeypatch.setenv(allocator.ENV, "system")
    assert allocator.keep_freed_memory() is False
