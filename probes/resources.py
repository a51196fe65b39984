"""Process resources: peak resident memory (recorded by the benchmarks and the readout report), handing
freed memory back to the operating system between batches, and telling glibc's allocator to keep it.

Example:
    >>> peak_rss_gb() > 0
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import resource
import sys


def peak_rss_gb() -> float:
    """This process's peak resident set size so far (``ru_maxrss``: it only grows), in GB of 10^9 bytes.

    Linux reports ``ru_maxrss`` in KiB, macOS in bytes.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9


@functools.cache
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018  (glibc's; musl has neither)
        return libc
    except (OSError, AttributeError):
        return None


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
KEEP_MMAP_THRESHOLD = 1 << 30
"""Blocks below 1 GiB come from the heap, not from a fresh ``mmap`` each (glibc's default is 128 KiB, raised
dynamically up to 32 MiB)."""
KEEP_TRIM_THRESHOLD = (1 << 31) - 1
"""Free memory at the top of the heap is handed back only past 2 GiB (glibc's default: twice the mmap
threshold)."""
MALLOC_ENV = "WELFARE_AXIS_MALLOC"
"""``WELFARE_AXIS_MALLOC=default`` leaves glibc's allocator settings as they are."""


def keep_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to keep freed memory for reuse instead of handing it back to the OS; True when
    applied (Linux with glibc, and ``WELFARE_AXIS_MALLOC`` not ``default``).

    A training update allocates and frees the same multi-megabyte activation blocks in every layer of every
    pass; with glibc's defaults many of them are fresh ``mmap`` regions or re-grown heap, so every page is
    faulted in and zeroed again by the kernel. With the thresholds :data:`KEEP_MMAP_THRESHOLD` and
    :data:`KEEP_TRIM_THRESHOLD` they are reused (``python -m bench.allocator``). It changes no number,
    only where memory comes from. Process-wide and one-way (glibc's dynamic threshold is not restored), so
    the command line calls it at start-up and a library call never does; :func:`release_freed_memory`
    still hands free pages back where a stage asks for it.
    """
    if os.environ.get(MALLOC_ENV, "").strip().lower() == "default":
        return False
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, KEEP_MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD)
    )


def release_freed_memory() -> None:
    """Return the heap's free pages to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere).

    Batched forwards over texts of varying length free and allocate blocks of many sizes; glibc keeps the
    freed ones in its arenas, so the resident set grows with the number of batches, not with the largest
    batch. Measured on SmolLM2-135M, 72 maze trajectories in batches of 8: peak RSS 3.3 GB without, 1.8 GB
    with a trim after every batch (the largest batch's own peak), at the same speed (90 vs 96 s).
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
