"""glibc malloc settings for a process that moves MiB-sized block buffers.

glibc serves allocations over its mmap threshold (128 KiB, raised on the fly only up to
the largest freed chunk) with a fresh mmap, and returns freed heap tops to the kernel.
Every 1 MiB block buffer then costs 256 page faults and zeroing: on a 4 GiB restore
that was a third of the time (docs/operations.md, "Performance and tuning"). A higher
threshold keeps block buffers in the heap, where freed ones are reused; the heap stays
bounded by the pipeline's bounded windows, so RSS does not grow with disk size.
"""

from __future__ import annotations

import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's own upper bound for the dynamic threshold
TRIM_THRESHOLD = 256 * 1024 * 1024

_done = False


def tune_for_blocks() -> bool:
    """Apply once per process; False where there is no glibc mallopt (musl, macOS)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    _done = ok
    return ok
