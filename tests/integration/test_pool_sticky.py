"""Sticky servers on a real PostgreSQL (transaction pooling, `[pool] sticky_servers`): a session keeps its server
between transactions while nobody needs it (no handoff per transaction, yet counted idle), another client of the
pool gets it at once, a tenant waiting on the database budget is not starved by it, and nothing a session left on it
(settings, statements) or sends late (a cancel) reaches the next holder. Pools of one, clients interleaving."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.integration.test_pool_io import RawClient, SlowCancels, b_runs
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.pools import console, pooled_proxy
from tests.support.proxyproc import ProxyProcess


@pytest.fixture(scope="module")
def one(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """Transaction pooling (sticky servers by default), one server per pool."""
    p = pooled_proxy(pg, tmp_path_factory.mktemp("sticky"), pool_mode="transaction", pool_size=1,
                     query_wait_timeout=10.0)
    yield p
    p.stop()


def grants(p: ProxyProcess, tenant: str = "acme") -> int:
    """How many times the pool handed a server to a client of `tenant` (pgtenant_pool_wait_seconds_count)."""
    with urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    found = [ln for ln in lines if ln.startswith(f'pgtenant_pool_wait_seconds_count{{tenant="{tenant}"}}')]
    return int(float(found[0].split()[-1])) if found else 0


def pool_row(p: ProxyProcess, tenant: str = "acme") -> dict[str, str]:
    return next(r for r in console(p, "SHOW POOLS;") if r["tenant"] == tenant)


def pid(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]


def test_a_session_keeps_its_server_between_transactions_counted_idle(one: ProxyProcess) -> None:
    with psycopg.connect(one.dsn("alice"), autocommit=True) as a:
        pid(a)
        before = grants(one)
        for _ in range(5):
            assert a.execute("SELECT count(*) FROM orders").fetchone()[0] > 0  # type: ignore[index]
        assert grants(one) == before  # five transactions, no handoff: its kept server each time
        row = pool_row(one)
        assert (row["cl_active"], row["sv_active"], row["sv_idle"]) == ("0", "0", "1")  # between transactions: idle
        clients = [r for r in console(one, "SHOW CLIENTS;") if r.get("user") == "alice"]
        assert clients and all(r["state"] == "idle" for r in clients), clients


def test_another_client_gets_the_kept_server_at_once_and_nothing_of_its_session(one: ProxyProcess) -> None:
    """Pool of one: A's kept server goes to B as soon as B asks (B does not wait for A's next request), then back
    to A; each sees only its own settings and prepared statements, whoever held the server last."""
    with (psycopg.connect(one.dsn("alice"), autocommit=True) as a,
          psycopg.connect(one.dsn("alice"), autocommit=True) as b):
        a.execute("SET DateStyle = German")
        a.execute("SET application_name = 'client-a'")
        server = pid(a)
        for i in range(4):
            assert pid(b) == server  # taken back from A, given to B (one server)
            assert b.execute("SHOW DateStyle").fetchone() == ("ISO, MDY",)
            assert b.info.parameter_status("DateStyle") == "ISO, MDY"  # (its own ParameterStatus, never A's)
            assert b.execute("SHOW application_name").fetchone() != ("client-a",)
            assert b.execute("SELECT %s::int + 1", (i,), prepare=True).fetchone() == (i + 1,)
            assert pid(a) == server
            assert a.execute("SHOW DateStyle").fetchone() == ("German, DMY",)
            assert a.info.parameter_status("DateStyle") == "German, DMY"
            assert a.execute("SHOW application_name").fetchone() == ("client-a",)
            assert a.execute("SELECT %s::text || 'a'", (str(i),), prepare=True).fetchone() == (f"{i}a",)
        row = pool_row(one)
        assert (row["cl_waiting"], row["sv_idle"]) == ("0", "1")


def test_a_cancel_of_a_session_whose_kept_server_went_to_another_never_reaches_it(
        one: ProxyProcess, pg: PgCluster) -> None:
    """A keeps its server; B takes it and runs pg_sleep; A's cancel (nothing of A's runs) must not cancel it."""
    a = RawClient(one)
    try:
        a.value("SELECT 1")  # A keeps the server
        outcome: list[object] = []
        b_thread = b_runs(one, outcome)
        until(lambda: _sleeping(pg), timeout=20, interval=0.02, what="B's pg_sleep running")
        cancel = a.cancel()
        assert cancel.recv(1) == b""  # answered (closed) without reaching B's backend
        cancel.close()
        b_thread.join(30)
        assert outcome and isinstance(outcome[0], tuple) and outcome[0][0] == "done", outcome
        assert a.value("SELECT 2") == "2"  # A goes on (its next request takes the server back from B)
    finally:
        a.close()


def _sleeping(pg: PgCluster) -> bool:
    with psycopg.connect(pg.dsn(), autocommit=True) as su:
        return su.execute("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(2)' "
                          "AND state = 'active'").fetchone()[0] == 1  # type: ignore[index]


def test_a_cancel_in_flight_at_the_ready_for_query_keeps_the_server_from_being_kept(
        pg: PgCluster, tmp_path: Path) -> None:
    """A's cancel is on its way (held back by a slow forwarder) while A's query ends: A's server is released, not
    kept, and goes to B, who waits meanwhile, only once the cancel connection closed; B's pg_sleep runs to its end."""
    slow = SlowCancels(pg.host, pg.port, delay=1.0)
    p = pooled_proxy(pg, tmp_path, backend=("127.0.0.1", slow.port), pool_mode="transaction", pool_size=1)
    try:
        a = RawClient(p)
        a.send("SELECT pg_sleep(0.2)")
        cancel = a.cancel()
        until(lambda: slow.cancels == 1, timeout=10, interval=0.01, what="the cancel at the forwarder")
        a.results()  # A's query ended (cancelled or not): ReadyForQuery 'I'
        outcome: list[object] = []
        b_thread = b_runs(p, outcome)
        assert cancel.recv(1) == b""
        cancel.close()
        b_thread.join(30)
        assert outcome and isinstance(outcome[0], tuple) and outcome[0][0] == "done", outcome
        assert a.value("SELECT 3") == "3"
        a.close()
    finally:
        p.stop()
        slow.close()


def test_a_tenant_waiting_on_the_budget_is_not_starved_by_another_tenants_kept_server(
        pg: PgCluster, tmp_path: Path) -> None:
    """max_db_connections 1 over acme and bigco (one database): each one's kept server is closed for the other's
    request (it holds more than its share while the other waits), turn after turn, no request times out."""
    p = pooled_proxy(pg, tmp_path, pool_mode="transaction", max_db_connections=1, query_wait_timeout=10.0)
    try:
        with (psycopg.connect(p.dsn("alice"), autocommit=True) as a,
              psycopg.connect(p.dsn("bruno"), autocommit=True) as b):
            for _ in range(3):
                assert a.execute("SELECT current_setting('pgtenant.tenant_id')").fetchone() == ("acme",)
                assert b.execute("SELECT current_setting('pgtenant.tenant_id')").fetchone() == ("bigco",)
            rows = {r["tenant"]: r for r in console(p, "SHOW POOLS;")}
            assert sum(int(r["sv_idle"]) + int(r["sv_active"]) for r in rows.values()) <= 1
    finally:
        p.stop()


def test_a_kept_server_closed_by_its_idle_timeout_or_by_postgresql_costs_the_session_nothing(
        pg: PgCluster, tmp_path: Path) -> None:
    p = pooled_proxy(pg, tmp_path, pool_mode="transaction", pool_size=1, server_idle_timeout=1.0)
    try:
        with psycopg.connect(p.dsn("alice"), autocommit=True) as a:
            a.execute("SET DateStyle = German")
            first = pid(a)
            until(lambda: pool_row(p)["sv_idle"] == "0", timeout=20, interval=0.1, what="the idle timeout")
            second = pid(a)  # a new server, the session's setting replayed on it
            assert second != first and a.execute("SHOW DateStyle").fetchone() == ("German, DMY",)
            with psycopg.connect(pg.dsn(), autocommit=True) as su:
                su.execute("SELECT pg_terminate_backend(%s)", (second,))
            until(lambda: pool_row(p)["sv_idle"] == "0", timeout=20, interval=0.1, what="the lost server forgotten")
            assert pid(a) not in (first, second)
            assert a.execute("SHOW DateStyle").fetchone() == ("German, DMY",)
    finally:
        p.stop()


def test_a_waiter_of_the_same_pool_gets_the_kept_server_while_its_holder_idles(one: ProxyProcess) -> None:
    """The holder never sends anything again: the waiter is served from its kept server, not after a timeout."""
    a = RawClient(one)
    try:
        a.value("SELECT 1")
        got: list[object] = []
        thread = threading.Thread(target=lambda: got.append(_one_query(one)))
        thread.start()
        thread.join(30)
        assert got == [1]
        assert pool_row(one)["cl_waiting"] == "0"
    finally:
        a.close()


def _one_query(p: ProxyProcess) -> int:
    with psycopg.connect(p.dsn("alice"), autocommit=True, connect_timeout=10) as c:
        return c.execute("SELECT 1").fetchone()[0]  # type: ignore[index]

