"""Hands the C allocator's free memory back to the system (glibc keeps freed heap pages resident until trimmed)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

TRIM_INTERVAL = 30.0  # seconds between trims while connections come and go


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim  # glibc only (musl has none)
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_TRIM = _malloc_trim()


def trim() -> bool:
    """Release free heap memory (every arena, holes included: glibc's malloc_trim(0)); True if any was."""
    return bool(_TRIM(0)) if _TRIM is not None else False


def text_cache(maxsize: int, max_chars: int = 2048) -> Callable[[Callable[[str], str]], Callable[[str], str]]:
    """An LRU cache for a function of one SQL text, bounded in bytes too: a text longer than `max_chars` is
    computed and never kept, so the cache holds at most `maxsize` x `max_chars` characters (keys and values)."""

    def wrap(fn: Callable[[str], str]) -> Callable[[str], str]:
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def call(text: str) -> str:
            return cached(text) if len(text) <= max_chars else fn(text)

        call.cache_info = cached.cache_info  # type: ignore[attr-defined]
        return call

    return wrap
