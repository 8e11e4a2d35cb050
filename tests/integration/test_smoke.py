"""Smoke: psycopg reaches PostgreSQL through pgtenant and lands in its tenant's database."""

from __future__ import annotations

import psycopg

from tests.support.proxyproc import ProxyProcess


def test_select_through_proxy(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("ivan"), autocommit=True) as conn:
        assert conn.execute("SELECT current_database(), count(*) FROM orders").fetchone() == ("initech", 7)


def test_startup_heap_is_frozen(proxy: ProxyProcess) -> None:
    """What the proxy made before serving (modules, parsers, policies) is kept out of the cyclic collector's full
    passes, which would otherwise walk all of it while every session waits."""
    [event] = [e for e in proxy.log_events() if e.get("event") == "heap_frozen"]
    assert event["objects"] > 10_000
