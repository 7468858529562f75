"""Keep freed memory in the process for reuse, instead of asking the kernel for fresh pages.

glibc's malloc serves every allocation above 32 MB with its own `mmap` and unmaps it on free, so
each training step of a long history faults in (and the kernel zeroes) its large activations again:
CM's step at L = 5,000 took 6.2 s that way and 3.6 s with the heap kept (L = 1,000: 0.72 and
0.68 s), for 11 % more peak memory (4.5 against 5.0 GB). The `cmrec` command calls
`keep_freed_memory` before it imports torch; a library user decides for their own process.
``CMREC_SYSTEM_MALLOC=1`` leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
# Trim the heap back to the kernel only when this much is free at its top (mallopt takes a C int:
# the largest, 2 GiB).
KEEP_BYTES = 2**31 - 1


def keep_freed_memory() -> bool:
    """Serve large allocations from the heap and never trim it (glibc); whether it was applied."""
    if os.environ.get("CMREC_SYSTEM_MALLOC") == "1" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    # In this order (measured with glibc 2.36: with other orders or more settings the freed pages
    # still went back to the kernel); `tests/test_allocator.py` checks that a freed block is reused
    # without page faults.
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
