"""Transaction pooling on a real PostgreSQL with one server per pool: two psycopg clients of one tenant take turns
on the same backend, each with its own settings and ParameterStatus; a temporary table pins its session (the other
waits) until it is dropped; a bad startup parameter is refused at login with PostgreSQL's own error."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.pools import console, pooled_proxy, until_waiting
from tests.support.proxyproc import ProxyProcess


@pytest.fixture(scope="module")
def one_server(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    p = pooled_proxy(pg, tmp_path_factory.mktemp("txn"), pool_mode="transaction", pool_size=1,
                     query_wait_timeout=20.0)
    yield p
    p.stop()


def settings(conn: psycopg.Connection) -> tuple[object, ...]:
    row = conn.execute("SELECT pg_backend_pid(), current_setting('application_name'), current_setting('DateStyle'), "
                       "current_setting('pgtenant.tenant_id')").fetchone()
    assert row is not None
    return tuple(row)


def test_two_clients_take_turns_on_one_server_each_with_its_own_settings(one_server: ProxyProcess) -> None:
    a = psycopg.connect(one_server.dsn("alice", application_name="client-a", options="-c DateStyle=SQL,DMY"),
                        autocommit=True)
    b = psycopg.connect(one_server.dsn("alice", application_name="client-b"), autocommit=True)
    try:
        pid, *rest = settings(a)
        assert rest == ["client-a", "SQL, DMY", "acme"]
        assert settings(b) == (pid, "client-b", "ISO, MDY", "acme")  # the same backend, its own settings
        a.execute("SET DateStyle = German")
        b.execute("SET work_mem = '8MB'")
        for _ in range(3):
            assert settings(a) == (pid, "client-a", "German, DMY", "acme")
            assert a.execute("SHOW work_mem").fetchone() == ("4MB",)
            assert settings(b) == (pid, "client-b", "ISO, MDY", "acme")
            assert b.execute("SHOW work_mem").fetchone() == ("8MB",)
        assert a.info.parameter_status("application_name") == "client-a"
        assert a.info.parameter_status("DateStyle") == "German, DMY"
        assert b.info.parameter_status("application_name") == "client-b"
        assert b.info.parameter_status("DateStyle") == "ISO, MDY"
        a.execute("RESET ALL")  # back to its own startup settings, not the server's
        assert settings(a) == (pid, "client-a", "SQL, DMY", "acme")
        with b.transaction():  # a transaction holds the server to its end
            b.execute("SET LOCAL DateStyle = 'Postgres'")
            assert settings(b)[2] == "Postgres, MDY"
        assert settings(b)[2] == "ISO, MDY"
    finally:
        a.close()
        b.close()


def test_a_temporary_table_pins_its_session_until_it_is_dropped(one_server: ProxyProcess) -> None:
    a = psycopg.connect(one_server.dsn("alice"), autocommit=True)
    b = psycopg.connect(one_server.dsn("alice"), autocommit=True)
    try:
        a.execute("CREATE TEMP TABLE scratch (n int)")
        a.execute("INSERT INTO scratch VALUES (1), (2)")
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(b.execute("SELECT 41 + 1").fetchone()))
        waiter.start()
        until_waiting(one_server, "acme")  # a holds the only server while its table exists
        assert a.execute("SELECT count(*) FROM scratch").fetchone() == (2,)
        pinned = {r["tenant"]: r for r in console(one_server, "SHOW POOLS;")}["acme"]
        assert pinned["sv_pinned"] == "1"
        a.execute("DROP TABLE scratch")
        waiter.join(20)
        assert got == [(42,)]
        with pytest.raises(psycopg.errors.UndefinedTable):
            b.execute("SELECT * FROM pg_temp.scratch")  # nothing of a's is left on the server b now holds
    finally:
        a.close()
        b.close()


def test_a_refused_startup_parameter_is_postgresqls_own_error(one_server: ProxyProcess) -> None:
    with pytest.raises(psycopg.OperationalError, match='invalid value for parameter "DateStyle"'):
        psycopg.connect(one_server.dsn("alice", options="-c DateStyle=nonsense"))
    with psycopg.connect(one_server.dsn("alice"), autocommit=True) as conn:  # the server stays usable
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_idle_clients_hold_no_server(one_server: ProxyProcess) -> None:
    conns = [psycopg.connect(one_server.dsn("alice"), autocommit=True) for _ in range(5)]
    try:
        pids = {c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in conns}  # type: ignore[index]
        assert len(pids) == 1
    finally:
        for c in conns:
            c.close()


def test_an_idle_clients_server_ended_by_postgresql_costs_it_nothing(pg: PgCluster, one_server: ProxyProcess) -> None:
    """Between transactions a client holds no server: PostgreSQL ending the pool's idle server (pg_terminate_backend,
    a restart of one backend) closes that server only; the client's next query gets another one (in session pooling
    the held server's FATAL ends the session: test_faults.py)."""
    with psycopg.connect(one_server.dsn("alice"), autocommit=True) as conn:
        (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()  # type: ignore[misc]
        assert pg.execute(f"SELECT pg_terminate_backend({pid})") == [(True,)]
        until(lambda: not pg.execute(f"SELECT 1 FROM pg_stat_activity WHERE pid = {pid}"), what="the server gone")
        (again,) = conn.execute("SELECT pg_backend_pid()").fetchone()  # type: ignore[misc]
        assert again != pid
        assert conn.execute("SELECT current_setting('pgtenant.tenant_id')").fetchone() == ("acme",)


def _last(cur: psycopg.Cursor) -> list[tuple[object, ...]]:
    """The rows of a query string's last statement."""
    while cur.nextset():
        pass
    return [tuple(r) for r in cur.fetchall()]


def test_reset_of_a_startup_setting_is_the_startup_value_at_once(one_server: ProxyProcess) -> None:
    """RESET of a setting the client gave at startup: its startup value at once, inside a transaction block and in a
    query string with statements after it, as on a direct connection (PostgreSQL resets to the value its own
    connection started with; a pooled server's is the tenant's): PostgreSQL gets the SET of the startup value, the
    client RESET's tag and ParameterStatus; a rollback takes it back; the next client of that server (the pool of
    one: interleaved) keeps its own values."""
    dsn = one_server.dsn("alice", application_name="client-a", options="-c DateStyle=SQL,DMY")
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(one_server.dsn("alice"), autocommit=True) as b:
        with a.transaction():
            a.execute("SET DateStyle = German")
            a.execute("SET application_name = 'other'")
            assert a.execute("RESET DateStyle").statusmessage == "RESET"
            assert a.execute("SHOW DateStyle").fetchone() == ("SQL, DMY",)
            assert a.info.parameter_status("DateStyle") == "SQL, DMY"
            assert a.execute("RESET application_name", prepare=True).statusmessage == "RESET"  # (a named Parse)
            assert settings(a)[1:3] == ("client-a", "SQL, DMY")
        pid, name, style, _ = settings(b)
        assert (pid, name, style) == (settings(a)[0], "", "ISO, MDY")  # the same server, b's own values
        assert _last(a.execute("SET DateStyle = German; RESET DateStyle; SHOW DateStyle")) == [("SQL, DMY",)]
        with a.transaction():
            a.execute("SET DateStyle = Postgres")
            a.execute("SET application_name = 'other'")
            assert a.execute("RESET ALL").statusmessage == "RESET"
            assert settings(a)[1:3] == ("client-a", "SQL, DMY")
            assert a.info.parameter_status("application_name") == "client-a"
        a.execute("SET DateStyle = Postgres")
        with a.transaction():
            a.execute("RESET DateStyle")
            assert settings(a)[2] == "SQL, DMY"
            raise psycopg.Rollback()
        assert settings(a)[2] == "Postgres, DMY"  # the RESET rolled back with its transaction
        assert settings(b)[1:3] == ("", "ISO, MDY")
        a.execute("RESET DateStyle")  # outside a transaction block: as on a direct connection at once
        assert a.execute("SHOW DateStyle").fetchone() == ("SQL, DMY",)
        assert settings(b)[1:3] == ("", "ISO, MDY")


@pytest.fixture(scope="module")
def session_server(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    p = pooled_proxy(pg, tmp_path_factory.mktemp("ses"), pool_mode="session", pool_size=1, query_wait_timeout=20.0)
    yield p
    p.stop()


def test_reset_of_a_startup_setting_in_session_pooling(session_server: ProxyProcess) -> None:
    """Session pooling too: a server of the pool never started with the client's settings, so a RESET inside a
    transaction gives the startup value at once there as well; the next session on that server has its own."""
    dsn = session_server.dsn("alice", application_name="client-a", options="-c DateStyle=SQL,DMY")
    with psycopg.connect(dsn, autocommit=True) as a:
        pid = settings(a)[0]
        with a.transaction():
            a.execute("SET DateStyle = German")
            assert a.execute("RESET DateStyle").statusmessage == "RESET"
            assert settings(a)[1:3] == ("client-a", "SQL, DMY")
            assert a.execute("RESET ALL").statusmessage == "RESET"
            assert settings(a)[1:3] == ("client-a", "SQL, DMY")
    with psycopg.connect(session_server.dsn("alice"), autocommit=True) as b:
        assert settings(b)[:3] == (pid, "", "ISO, MDY")
