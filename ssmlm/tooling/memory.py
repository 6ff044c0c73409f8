"""Memory, measured and managed, in one place: a block of code's peak memory (PeakMemory), the process's resident
size, recognising an out-of-memory failure, the memory available, and glibc's allocator knobs below.

Keeping freed host memory in the process, so large CPU tensors stop paying for fresh pages at every step:

glibc's malloc serves large blocks (above a threshold that adapts up to 32 MB) with mmap and unmaps them when they
are freed, so each such allocation comes back as fresh pages that the kernel zeroes on first touch. A training step
over long sequences allocates and frees gigabytes in such blocks (the logits alone are length × vocabulary
floats), and the page faults made the time per token grow with the length. With mmap off and the heap never
trimmed, freed blocks stay mapped and are reused. The price: the process holds its peak heap until it exits, and
large blocks fragment it; a process that runs several large workloads keeps the high-water mark of all of them.
docs/benchmarks.md ("The host allocator") has the measurements.

The evaluation wants the opposite, on demand: `release_freed_host_memory` hands freed pages back, so that a long
stream's resident size stays flat and a measured peak counts what the measured work allocated.

Only glibc has these knobs (Linux); elsewhere this does nothing. PyTorch's CPU tuning guide suggests the same cure
by another route (jemalloc or tcmalloc preloaded).
"""

import contextlib
import ctypes
import functools
import os
import resource
import sys
import time
from pathlib import Path

import torch

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h
# Free memory at the top of the heap is given back above the trim threshold; -1 (as an unsigned size, the largest)
# means never. A finite one is not enough: freeing one long step's tensors can cross any fixed threshold, and the
# pages handed back are faulted in again by the next step (docs/benchmarks.md, "The host allocator").
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


# ---------------------------------------------------------------------------------------------------------------
# Measuring.

PROC_STATUS, PROC_CLEAR_REFS, PROC_MEMINFO = Path("/proc/self/status"), Path("/proc/self/clear_refs"), \
    Path("/proc/meminfo")


class PeakMemory:
    """The most memory a block of code added over what was in use when it began: bytes allocated on a GPU; on a
    Linux CPU the resident-set high-water mark, reset through /proc/self/clear_refs; None where neither exists.
    On the CPU, freed memory the process still holds is handed back first, so that what ran before does not lend
    the measured code pages it would otherwise have to add.

        with PeakMemory(device) as peak: ...
        peak.bytes, peak.seconds
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.bytes: int | None = None
        self.seconds = 0.0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        else:
            release_freed_host_memory()
            self._baseline = resident_bytes("VmRSS") if reset_resident_peak() else None
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._baseline
        elif self._baseline is not None:
            self.bytes = resident_bytes("VmHWM") - self._baseline
        self.seconds = time.perf_counter() - self._start


def reset_resident_peak() -> bool:
    """Set this process's resident high-water mark (VmHWM) to its current size; False where Linux does not allow it."""
    try:
        PROC_CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def resident_bytes(field: str) -> int:
    """A size from /proc/self/status ("VmRSS" now, "VmHWM" the peak), in bytes."""
    for line in PROC_STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise OSError(f"{PROC_STATUS} has no {field}")


def process_peak_resident_mib() -> float:
    """This process's resident high-water mark since it started, in MiB (ru_maxrss, which Linux gives in kB): what
    a process that measures one workload alone reports."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def available_memory_mib() -> int:
    """MemAvailable from /proc/meminfo (0, meaning no limit, where there is none)."""
    with contextlib.suppress(OSError):
        for line in PROC_MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


# How running out of memory reads in an error message or a child's traceback ("can't allocate memory": the CPU
# allocator's RuntimeError).
OUT_OF_MEMORY_MARKERS = ("memoryerror", "outofmemoryerror", "out of memory", "can't allocate memory")


def mentions_out_of_memory(text: str) -> bool:
    return any(marker in text.lower() for marker in OUT_OF_MEMORY_MARKERS)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or mentions_out_of_memory(str(error))
