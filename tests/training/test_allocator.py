"""gkd.training.allocator: after reuse_freed_memory(), a freed large block is reused without faulting pages in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gkd.training.allocator import _glibc, reuse_freed_memory

glibc_only = pytest.mark.skipif(_glibc() is None, reason="needs Linux with glibc")

# Touches every page of a 64 MiB block twice (allocated, freed, allocated again) and prints the minor page
# faults of the second round. Run in a fresh interpreter: the settings are process-wide.
CHILD = """
import resource, sys
from gkd.training.allocator import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
def touch():
    block = bytearray(64 << 20)
    block[::4096] = b"\\x01" * (len(block) // 4096)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = (64 << 20) // 4096


def second_round_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60, check=True)
    return int(out.stdout.strip())


@glibc_only
def test_freed_block_is_reused_without_page_faults() -> None:
    default, reused = second_round_faults("default"), second_round_faults("reuse")
    assert default > PAGES // 2, f"glibc's default should fault a fresh 64 MiB mmap in again ({default} faults)"
    assert reused < PAGES // 20, f"with reuse_freed_memory the block should come back from the heap ({reused})"


@glibc_only
def test_calling_twice_is_harmless() -> None:
    assert reuse_freed_memory() and reuse_freed_memory()
