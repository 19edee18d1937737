"""Memory as a cost: glibc allocator settings, giving freed memory back, reading RSS.

Why (measured by benchmarks/memory.py on the default job): glibc keeps freed heap memory for
reuse and, each time a large block is freed, raises its mmap threshold (up to 32 MiB), so
activation buffers of a few MiB end up on the heap, fragment it and stay in RSS. The default
job's RSS crept from 0.9 to 1.7 GiB over two rounds while its live memory stayed under
1.1 GiB. `tune_allocator` pins the threshold at 2 MiB (such blocks get their own mapping
and go back to the OS when freed), and `trim` hands the heap's free pages back between
clients and after evaluations. Neither changes a number the job computes.

The price is page faults (a fresh mapping is faulted in again); torch's
`THP_MEM_ALLOC_ENABLE=1`, which must be in the environment before torch allocates its first
tensor, backs blocks of 2 MiB and more with huge pages and takes that price away.
`FEDFM_ALLOCATOR=glibc` leaves glibc's defaults alone (the "before" of the benchmark).
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

ALLOCATOR_ENV = "FEDFM_ALLOCATOR"  # "tuned" (default) or "glibc" (leave the defaults alone)
MMAP_THRESHOLD = 2 << 20  # blocks from 2 MiB up (activations, eval buffers) are own mappings
TRIM_THRESHOLD = 256 << 20  # no automatic trimming in the middle of a step; `trim` does it
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>


def tuned() -> bool:
    """Whether allocator tuning is on (`FEDFM_ALLOCATOR` is not `glibc`)."""
    return os.environ.get(ALLOCATOR_ENV, "tuned") != "glibc"


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (it has `mallopt` and `malloc_trim`), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return None
    return libc


def tune_allocator() -> bool:
    """Pin glibc's mmap threshold at 2 MiB and turn off automatic heap trimming.

    Affects later allocations only; calling it again is harmless.

    Returns:
        True if the settings were applied (glibc, and `FEDFM_ALLOCATOR` is not `glibc`).
    """
    libc = _glibc()
    if libc is None or not tuned():
        return False
    # Setting either parameter also stops glibc from raising the mmap threshold by itself.
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok


def trim() -> None:
    """Give the heap's free pages back to the OS (glibc `malloc_trim`); a no-op elsewhere.

    Freed activations otherwise stay in RSS, and the next client's buffers land beside them.
    """
    libc = _glibc()
    if libc is not None and tuned():
        libc.malloc_trim(0)


def rss_bytes() -> int:
    """Current resident set size of this process (0 where /proc is missing)."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (VmHWM; ru_maxrss without /proc)."""
    peak = _status_kib("VmHWM")
    if peak:
        return peak * 1024
    import resource
    import sys

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # macOS: bytes, Linux: KiB


def _status_kib(key: str) -> int:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0
