"""glibc's allocator settings: large freed blocks go back to the operating system, so RSS returns after big messages."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache
from typing import Any

_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
LARGE = 1 << 20  # bytes: a block at least this large is mapped on its own and unmapped when freed


@lru_cache(maxsize=1)
def _libc() -> Any:
    """glibc, or None (another C library, or none found): then these calls do nothing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def return_large_blocks() -> bool:
    """Map every block of LARGE bytes or more on its own (glibc otherwise raises that threshold up to 32 MiB after
    freeing one, and keeps later big blocks in its heap, where a freed one seldom goes back). True if applied."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, LARGE))


def trim() -> bool:
    """Give the free memory of glibc's heap back to the operating system (after freeing a lot of it)."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
