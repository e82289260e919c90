"""Process-wide settings for the command line (never imported by the library code)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Final

M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
# Chunks are 1 MiB buffers allocated and freed thousands of times a second. glibc would hand each one
# back to the kernel (mmap/munmap, or trimming the heap), so every new buffer costs 256 page faults;
# keeping freed memory for reuse cuts the system time of a restore by a third. Memory stays bounded by
# the chunks in flight, which is the peak anyway.
MMAP_THRESHOLD_BYTES: Final = 32 << 20
TRIM_THRESHOLD_BYTES: Final = 128 << 20


def tune_allocator() -> bool:
    """Ask glibc to reuse freed chunk buffers instead of returning them to the kernel; False if not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
