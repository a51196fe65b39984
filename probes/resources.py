"""Process resources the benchmarks and the readout report record: peak resident memory.

Example:
    >>> peak_rss_gb() > 0
    True
"""

from __future__ import annotations

import resource
import sys


def peak_rss_gb() -> float:
    """This process's peak resident set size so far (``ru_maxrss``: it only grows), in GB of 10^9 bytes.

    Linux reports ``ru_maxrss`` in KiB, macOS in bytes.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9
