"""The heap that the daemon's start freed goes back to the kernel, instead of staying in its RSS.

Start-up allocates and frees a great deal (pydantic building validators, protobuf descriptors,
the first reconciliation), and glibc's allocator returns freed memory to the kernel only from
the top of a heap. ``malloc_trim(0)`` releases the free pages in the middle of every arena too:
called once after the start (about 0.7 MB of an idle daemon's RSS). Where the C library has no
``malloc_trim`` (musl), :func:`trim` does nothing.
"""

from __future__ import annotations

import ctypes


def trim() -> bool:
    """Release the C heap's free pages to the kernel; whether any were (False without glibc)."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return False
    return bool(malloc_trim(0))
