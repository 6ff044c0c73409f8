"""Freed host memory is kept for reuse: a large tensor allocated again touches pages that are already there."""

import os
import subprocess
import sys

import pytest

from ssmlm.tooling.memory import ENVIRONMENT

# Page faults while filling a 256 MB tensor, once the same size has been allocated and freed a few times. In a
# process of the trainer's or the benchmark's, which have imported transformers (as this one does): in a bare
# `import torch` process the heap's first large blocks land so that every other refill still faults its pages in.
REFILL_FAULTS = """
import resource, sys, torch, transformers
from ssmlm.tooling.memory import keep_freed_host_memory
print(keep_freed_host_memory() if sys.argv[1] == "keep" else False)
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 * 2**20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def refill_faults(mode: str) -> tuple[bool, int]:
    environment = {name: value for name, value in os.environ.items() if name not in ENVIRONMENT}
    lines = subprocess.run([sys.executable, "-c", REFILL_FAULTS, mode], capture_output=True, text=True,
                           env=environment, check=True).stdout.split()
    return lines[0] == "True", int(lines[1])


@pytest.mark.slow
def test_kept_memory_is_reused_without_page_faults():
    applied, kept_faults = refill_faults("keep")
    if not applied:
        pytest.skip("not glibc: the allocator has no such settings")
    _, system_faults = refill_faults("system")
    assert system_faults > 30_000  # 256 MB of fresh 4 kB pages, each faulted in again (what this fixes)
    assert kept_faults < 1_000
