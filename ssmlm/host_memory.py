"""Keep freed host memory in the process, so large CPU tensors stop paying for fresh pages at every step.

glibc's malloc serves large blocks (above a threshold that adapts up to 32 MB) with mmap and unmaps them when they
are freed, so each such allocation comes back as fresh pages that the kernel zeroes on first touch. A training step
over 16k tokens allocates and frees gigabytes in such blocks (the logits alone are 16384 × 8192 floats, 512 MB).
On the 2-core VM of docs/benchmarks.md that cost grew the time per token with the length: Mega-chunk trained 1.3×
slower per token at 16k than at 1k, GSS up to 1.3×, with the log-softmax and the zero-fill of its gradient 70-100×
slower at 16k than at 1k instead of 16×. With mmap off and the heap never trimmed, freed blocks stay mapped and
are reused: both models train as fast per token at 16k as at 1k. The price is that the process holds its peak heap
until it exits, which a training process reaches again at every step anyway.

Only glibc has these knobs (Linux); elsewhere this does nothing. PyTorch's CPU tuning guide suggests the same cure
by another route (jemalloc or tcmalloc preloaded).
"""

import argparse
import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h
NEVER_TRIM = 2**31 - 1  # bytes of free memory at the top of the heap before it is given back: never, in practice

# The same settings for processes started after this one (glibc reads them when a process starts).
ENVIRONMENT = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(NEVER_TRIM)}


def keep_freed_host_memory() -> bool:
    """Turn off mmap for large blocks and heap trimming in this process and in the processes it starts.
    Returns whether this process's allocator took the settings (False off glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    os.environ.update(ENVIRONMENT)
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))


def add_host_allocator_option(parser: argparse.ArgumentParser):
    """--host-allocator for the benchmark and profiling scripts: measure what the trainer runs, or the default."""
    parser.add_argument("--host-allocator", choices=["keep-freed", "system"], default="keep-freed",
                        help="on the CPU, keep freed memory mapped for reuse, as the trainer does (default; "
                             "ssmlm/host_memory.py), or leave glibc's malloc as it is: large blocks mapped afresh "
                             "at every allocation, which slows every model's long sequences")
