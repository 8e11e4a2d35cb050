"""Smoke: psycopg reaches PostgreSQL through pgtenant and lands in its tenant's database."""

from __future__ import annotations

import psycopg

from tests.support.proxyproc import ProxyProcess


def test_select_through_proxy(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("ivan"), autocommit=True) as conn:
        assert conn.execute("SELECT current_database(), count(*) FROM orders").fetchone() == ("initech", 7)
