"""Process resources: peak resident memory (recorded by the benchmarks and the readout report), and
handing freed memory back to the operating system between batches.

Example:
    >>> peak_rss_gb() > 0
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource
import sys


def peak_rss_gb() -> float:
    """This process's peak resident set size so far (``ru_maxrss``: it only grows), in GB of 10^9 bytes.

    Linux reports ``ru_maxrss`` in KiB, macOS in bytes.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


def release_freed_memory() -> None:
    """Return the heap's free pages to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere).

    Batched forwards over texts of varying length free and allocate blocks of many sizes; glibc keeps the
    freed ones in its arenas, so the resident set grows with the number of batches, not with the largest
    batch. Measured on SmolLM2-135M, 72 maze trajectories in batches of 8: peak RSS 3.3 GB without, 1.8 GB
    with a trim after every batch (the largest batch's own peak), at the same speed (90 vs 96 s).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
