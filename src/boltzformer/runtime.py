"""Process-level settings that make PyTorch faster on CPU.

:func:`keep_freed_memory`: glibc's ``malloc`` hands every block over 32 MB straight to the kernel
(``mmap``) and gives it back on ``free``. A 1024 x 1024 forward pass allocates and frees hundreds of
such blocks (a stride-4 map with 512 channels is 128 MB), and each new one is zero-filled by the
kernel page by page on first touch. Measured on 2 vCPUs (``docs/benchmarks.md``, interleaved
runs), that costs 12-16 % of a hiera-s eval at 1024; for a train step two runs disagreed. Asking
glibc to serve large blocks from its heap and to keep freed memory for reuse removes those page
faults; the process then keeps its peak memory instead of returning it between calls (0.5 GB more
peak for that eval).

This is what jemalloc or tcmalloc do when preloaded; it needs no extra library, only ``mallopt``
through ctypes. Nothing in the model calls it: the CLI and the benchmarks do, and a Python user may.
``BOLTZFORMER_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed memory instead of unmapping it (see the module docstring).

    Returns True when the setting is in effect (Linux with glibc, not turned off by
    ``BOLTZFORMER_KEEP_FREED_MEMORY=0``), False otherwise. Safe to call more than once.
    """
    global _done
    if os.environ.get("BOLTZFORMER_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # large blocks from the heap, not mmap; and never give the heap's free top back to the kernel
    _done = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _done
