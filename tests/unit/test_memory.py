"""The allocator trim and the byte-bounded text caches (proxy/memory.py), and the proxy's periodic trim."""

from __future__ import annotations

import asyncio
import ctypes
from pathlib import Path
from typing import Any

import pytest

from proxy import memory
from proxy.io import listener
from tests.support.sessions import make_config


def test_text_cache_keeps_short_texts_only() -> None:
    calls: list[str] = []

    @memory.text_cache(4, max_chars=10)
    def upper(text: str) -> str:
        calls.append(text)
        return text.upper()

    long = "x" * 11
    assert [upper("abc"), upper("abc"), upper(long), upper(long)] == ["ABC", "ABC", long.upper(), long.upper()]
    assert calls == ["abc", long, long]  # the short text once, the long one every time
    assert upper.cache_info().currsize == 1  # type: ignore[attr-defined]


def test_statement_kind_and_redact_do_not_keep_long_texts() -> None:
    from proxy.audit import redact
    from proxy.stmtkind import _statement_kind, statement_kind

    before = (_statement_kind.cache_info().currsize, redact.cache_info().currsize)  # type: ignore[attr-defined]
    huge = "  /* c */ SELECT '" + "x" * 100_000 + "'"
    assert statement_kind(huge) == "select"
    assert redact(huge) == "  /* */ SELECT ?"
    assert (_statement_kind.cache_info().currsize, redact.cache_info().currsize) == before  # type: ignore[attr-defined]


def test_trim_gives_freed_heap_back() -> None:
    if memory._TRIM is None:
        pytest.skip("not glibc")
    blocks = [ctypes.create_string_buffer(200_000) for _ in range(50)]  # malloc'd, below the mmap threshold
    del blocks
    assert memory.trim() is True


def test_proxy_trims_only_after_sessions_ended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    monkeypatch.setattr(memory, "trim", lambda: trims.append(1) or True)

    async def scenario() -> list[Any]:
        proxy = listener.Proxy(make_config(tmp_path))
        proxy.server = object()  # type: ignore[assignment]  # listening: the trim re-arms itself
        proxy._trim_memory()
        first = len(trims)
        proxy.client_finished()
        proxy._trim_memory()
        proxy.server = None
        return [first, len(trims), proxy.finished_since_trim]

    assert asyncio.run(scenario()) == [0, 1, 0]
