"""Keep freed host memory in the process, so large CPU tensors stop paying for fresh pages at every step.

glibc's malloc serves large blocks (above a threshold that adapts up to 32 MB) with mmap and unmaps them when they
are freed, so each such allocation comes back as fresh pages that the kernel zeroes on first touch. A training step
over 16k tokens allocates and frees gigabytes in such blocks (the logits alone are 16384 × 8192 floats, 512 MB).
On the 2-core VM of docs/benchmarks.md this made the time per token grow with the length: a Mega-chunk
training step at 16k took 6.9 s of CPU instead of 4.2 s, the log-softmax over the logits and the zero-filling of
their gradient 70-105x slower than at 1k instead of 16x. With mmap off and the heap never trimmed, freed blocks
stay mapped and are reused, and GSS and Mega-chunk train as fast per token at 16k as at 1k. The price: the
process holds its peak heap until it exits, and large blocks fragment it (up to 30% more peak resident memory at
16k tokens). One model training repeats one allocation pattern and its heap settles; a process that runs several
large workloads keeps the high-water mark of all of them (the benchmark's four models interleaved at 64k tokens
outgrew a 24 GB machine that way).

The evaluation wants the opposite, on demand: `release_freed_host_memory` hands freed pages back, so that a long
stream's resident size stays flat and a measured peak counts what the measured work allocated.

Only glibc has these knobs (Linux); elsewhere this does nothing. PyTorch's CPU tuning guide suggests the same cure
by another route (jemalloc or tcmalloc preloaded).
"""

import argparse
import ctypes
import functools
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h
# Free memory at the top of the heap is given back above the trim threshold; -1 (as an unsigned size, the largest)
# means never. A finite one is not enough: 2 GB was crossed by freeing one long step's tensors, and the next
# allocation spent 0.4 s of system time handing them back, to fault them in again later.
NEVER_TRIM = -1

# The same settings for processes started after this one (glibc reads them when a process starts).
ENVIRONMENT = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**64 - 1)}


@functools.cache
def glibc():
    """The C library when it is glibc (the one with these knobs), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        library = ctypes.CDLL("libc.so.6")
        library.mallopt, library.malloc_trim  # glibc's own: another C library (musl) raises here
    except (OSError, AttributeError):
        return None
    return library


def release_freed_host_memory() -> None:
    """Give the pages of freed blocks back to the system (glibc's malloc_trim); elsewhere nothing. Where small
    live blocks sit between freed large ones, glibc keeps the freed pages resident, so a process that allocates and
    frees around long-lived small tensors (a recurrent state carried from chunk to chunk) grows without using more;
    and a measurement of the memory a piece of work adds must start from what is really in use."""
    library = glibc()
    if library is not None:
        library.malloc_trim(0)


def keep_freed_host_memory() -> bool:
    """Turn off mmap for large blocks and heap trimming in this process and in the processes it starts.
    Returns whether this process's allocator took the settings (False off glibc)."""
    library = glibc()
    if library is None:
        return False
    os.environ.update(ENVIRONMENT)
    return bool(library.mallopt(M_MMAP_MAX, 0)) and bool(library.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))


def add_host_allocator_option(parser: argparse.ArgumentParser):
    """--host-allocator for the benchmark and profiling scripts: measure what the trainer runs, or the default."""
    parser.add_argument("--host-allocator", choices=["keep-freed", "system"], default="keep-freed",
                        help="on the CPU, keep freed memory mapped for reuse, as the trainer does (default; "
                             "ssmlm/host_memory.py), or leave glibc's malloc as it is: large blocks mapped afresh "
                             "at every allocation, which slows every model's long sequences. A kept heap holds "
                             "the high-water mark of all the process ran: several models at 64k tokens outgrew a "
                             "24 GB machine with memory kept, and fit with the system allocator")
