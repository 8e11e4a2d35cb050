"""Real clients through a proxy in transaction mode whose pool is smaller than its clients (issue 16).

Tenant ``poolco`` (database strategy, its own database and role) gets 2 servers; while a test's client runs,
three background clients of the same tenant (``Churn``) keep taking and giving back servers, so a client's
transactions land on whichever server is free and every pinned state is tested against contention. The churn
clients check on every round that nothing of the client under test (settings, notifications, cancels) reaches
them. Covered: psycopg (simple, extended, binary prepared, pipeline, COPY through a temp table, WITH HOLD cursor
loops across commits, LISTEN/NOTIFY, cancel, session SETs), asyncpg with its statement cache, psql (FETCH_COUNT,
\\copy, Ctrl-C), pgJDBC (server-prepared S_n after five executions, named portals, cancel, Tableau's temp-table
sequence), psqlODBC with UseDeclareFetch=1 (Tableau's ODBC settings), SQLAlchemy + pandas with a client-side pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.integration import test_asyncpg as base_asyncpg
from tests.integration import test_psycopg as base_psycopg
from tests.support.pgcluster import PgCluster
from tests.support.pooling import Churn, pool_count, pool_row, server_pids, start_pooled
from tests.support.proxyproc import ProxyProcess
from tests.support.psql import find_psql, interrupt_psql, run_psql

DB = "pool_clients"
ROLE = ("pgt_r_poolco", "poolco-role-pw")
TENANT, USER = "poolco", "pcu"
TENANTS = {TENANT: {"keys": {"strategy": "database", "database": DB, "backend_user": ROLE[0], "allow_writes": True},
                    "user": USER}}
POOL_SIZE = 2
# A client that waits this long for a server fails with the pool's error (not the test's timeout): a session that
# stays pinned when it should not shows up as that error in the test that caused it.
POOL = {"pool_mode": "transaction", "pool_size": POOL_SIZE, "query_wait_timeout": 30.0}
ROWS = 7  # orders in the tenant's database

# What every churn client checks on every round: its own settings, never those of the client under test.
CHURN_PROBE = ("SELECT pg_backend_pid(), current_setting('application_name'), current_setting('TimeZone'), "
               "current_setting('DateStyle'), current_setting('search_path'), current_setting('work_mem'), "
               "current_setting('statement_timeout'), (SELECT count(*) FROM orders)")


@pytest.fixture(scope="module")
def pooled(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    p = start_pooled(pg, tmp_path_factory.mktemp("pool-clients"), TENANTS, dict([ROLE]), POOL, ROWS)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def defaults(pg: PgCluster) -> tuple[str, ...]:
    """The settings a fresh session of the tenant's role has (TimeZone, DateStyle, search_path, work_mem,
    statement_timeout), read directly."""
    rows = pg.execute("SELECT current_setting('TimeZone'), current_setting('DateStyle'), "
                      "current_setting('search_path'), current_setting('work_mem'), "
                      "current_setting('statement_timeout')", dbname=DB)
    return tuple(rows[0])


@pytest.fixture
def churn(pooled: ProxyProcess, defaults: tuple[str, ...]) -> Iterator[Churn]:
    def check(row: tuple[Any, ...]) -> None:
        assert row[1] == "churn" and tuple(row[2:7]) == defaults and row[7] == ROWS, row

    with Churn(pooled.dsn(USER, application_name="churn"), clients=3, probe=CHURN_PROBE, check=check) as c:
        yield c
        assert c.rounds > 0  # the churn ran alongside the test
        assert c.notifies == []  # nothing the client under test listens to reached another client


def _dsn(pooled: ProxyProcess, **params: str | int) -> str:
    return pooled.dsn(USER, **params)


def _pid(conn: psycopg.Connection) -> int:
    """The server the client is on now (never a prepared statement of its own: the probe changes nothing)."""
    row = conn.execute("SELECT pg_backend_pid()", prepare=False).fetchone()
    assert row is not None
    return int(row[0])


def _pinned(pooled: ProxyProcess) -> int:
    return pool_count(pool_row(pooled, TENANT), "pinned")


# --- the pool is smaller than the clients ----------------------------------------------------------------


def test_idle_clients_hold_no_server(pooled: ProxyProcess, pg: PgCluster) -> None:
    conns = [psycopg.connect(_dsn(pooled), autocommit=True) for _ in range(4 * POOL_SIZE)]
    try:
        pids = {_pid(c) for c in conns}
        assert len(pids) <= POOL_SIZE, pids
        assert [c.execute("SELECT count(*) FROM orders").fetchone() for c in conns] == [(ROWS,)] * len(conns)
        # Every client is idle: PostgreSQL has at most the pool's servers for the tenant, whatever the clients.
        assert len(server_pids(pg, DB, ROLE[0])) <= POOL_SIZE
        # BackendKeyData is the proxy's own: every client has its own key, whichever server it is on.
        keys = {c.info.backend_pid for c in conns}
        assert len(keys) == len(conns)
        assert _pinned(pooled) == 0
    finally:
        for c in conns:
            c.close()


# --- psycopg ---------------------------------------------------------------------------------------------


def test_psycopg_protocols_under_contention(pooled: ProxyProcess, churn: Churn) -> None:
    with psycopg.connect(_dsn(pooled), autocommit=True) as conn:
        assert conn.execute("SELECT 1, 'two'").fetchone() == (1, "two")
        assert conn.execute("SELECT %s::int + 1, %s::text", (41, "x")).fetchone() == (42, "x")
        cur = conn.cursor()
        cur.execute("SELECT 1; SELECT 2")
        assert cur.fetchone() == (1,) and cur.nextset() and cur.fetchone() == (2,)
        bcur = conn.cursor(binary=True)
        for i in range(10):  # psycopg prepares it server-side (_pg3_N) from the 5th execution on
            bcur.execute("SELECT %s::int8 * 2, %s::numeric, (SELECT count(*) FROM orders)", (i, "1.50"))
            assert bcur.fetchone() == (2 * i, Decimal("1.50"), ROWS)
        with conn.pipeline():
            curs = [conn.execute("SELECT %s::int", (i,)) for i in range(50)]
        assert [c.fetchone()[0] for c in curs] == list(range(50))
        base_psycopg.test_error_mid_stream_then_recovery(conn)  # an error, then in a transaction, rolled back
        base_psycopg.test_transaction_status_tracked(conn)


def test_psycopg_copy_through_a_temp_table_keeps_its_server(pooled: ProxyProcess, churn: Churn) -> None:
    with psycopg.connect(_dsn(pooled), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE t_copy (id int, name text)")
        pid = _pid(conn)
        with conn.cursor().copy("COPY t_copy FROM STDIN") as cp:
            for i in range(1000):
                cp.write_row((i, f"name {i}"))
        assert _pid(conn) == pid
        assert conn.execute("SELECT count(*), sum(id) FROM t_copy").fetchone() == (1000, 499500)
        with conn.cursor().copy("COPY t_copy TO STDOUT (FORMAT binary)") as cp:
            cp.set_types(["int4", "text"])
            rows = list(cp.rows())
        assert len(rows) == 1000 and rows[5] == (5, "name 5")
        assert _pinned(pooled) == 1
        assert {_pid(conn) for _ in range(5)} == {pid}  # pinned: every transaction on the temp table's server
        conn.execute("DROP TABLE t_copy")
        assert _pinned(pooled) == 0  # unpinned once the table is gone


def test_session_settings_follow_the_client(pooled: ProxyProcess, churn: Churn, defaults: tuple[str, ...]) -> None:
    app = f"reporting-{uuid.uuid4().hex[:6]}"
    with psycopg.connect(_dsn(pooled, application_name=app, options="-c TimeZone=Asia/Tokyo"),
                         autocommit=True) as conn:
        conn.execute("SET DateStyle = 'SQL, DMY'")
        conn.execute("SET search_path = pc_extra, public")
        conn.execute("SET statement_timeout = '45s'")
        conn.execute("SELECT set_config('work_mem', '3MB', false)")
        conn.execute("SET extra_float_digits = 1")
        expected = (app, "Asia/Tokyo", "SQL, DMY", "pc_extra, public", "3MB", "45s", ROWS)
        pids = set()
        for _ in range(20):
            row = conn.execute(CHURN_PROBE, prepare=False).fetchone()  # (settings, not prepared statements, here)
            assert row is not None and tuple(row[1:]) == expected, row
            pids.add(row[0])
        assert conn.execute("SELECT 0.1::float8::text").fetchone() == ("0.1",)  # extra_float_digits 1
        assert conn.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert conn.info.parameter_status("DateStyle") == "SQL, DMY"
        assert conn.info.parameter_status("application_name") == app
        # BEGIN … SET LOCAL … COMMIT changes nothing after the transaction, wherever the next one lands
        conn.execute("BEGIN")
        conn.execute("SET LOCAL DateStyle = 'ISO, MDY'")
        conn.execute("COMMIT")
        assert conn.execute("SHOW DateStyle").fetchone() == ("SQL, DMY",)
        assert _pinned(pooled) == 0  # ordinary settings are replayed, not pinned
    # The other clients kept their own settings all along (the churn's check), and a new client starts afresh.
    with psycopg.connect(_dsn(pooled), autocommit=True) as fresh:
        row = fresh.execute(CHURN_PROBE).fetchone()
        assert row is not None and tuple(row[2:7]) == defaults, row


def test_reset_returns_to_the_clients_startup_values(pooled: ProxyProcess, churn: Churn,
                                                     defaults: tuple[str, ...]) -> None:
    # On a direct connection RESET (and RESET ALL) go back to what the startup packet asked for, not to the
    # server's defaults; so they must through the pool, where the server was started without them.
    with psycopg.connect(_dsn(pooled, application_name="startup-app", options="-c TimeZone=Asia/Tokyo"),
                         autocommit=True) as conn:
        conn.execute("SET TimeZone = 'Europe/Paris'")
        conn.execute("SET work_mem = '2MB'")
        assert conn.execute("SHOW TimeZone").fetchone() == ("Europe/Paris",)
        conn.execute("RESET TimeZone")
        assert [conn.execute("SHOW TimeZone").fetchone() for _ in range(5)] == [("Asia/Tokyo",)] * 5
        conn.execute("RESET ALL")
        for _ in range(5):
            row = conn.execute("SELECT current_setting('TimeZone'), current_setting('work_mem'), "
                               "current_setting('application_name')").fetchone()
            assert row == ("Asia/Tokyo", defaults[3], "startup-app")
        assert conn.info.parameter_status("TimeZone") == "Asia/Tokyo"


def test_with_hold_cursor_loops_across_commits(pooled: ProxyProcess, churn: Churn) -> None:
    with psycopg.connect(_dsn(pooled), autocommit=True) as conn:
        conn.prepare_threshold = None  # the cursor pins here, not a FETCH text psycopg would prepare by its 5th run
        conn.execute("BEGIN")
        conn.execute('DECLARE "SQL_CUR0x1" CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 300) g')
        conn.execute("COMMIT")
        pid = _pid(conn)
        got: list[int] = []
        for i in range(7):  # a loop of FETCHes, every other one inside its own transaction
            if i % 2:
                conn.execute("BEGIN")
            got += [r[0] for r in conn.execute('FETCH 50 IN "SQL_CUR0x1"').fetchall()]
            if i % 2:
                conn.execute("COMMIT")
            assert _pid(conn) == pid
        assert got == list(range(1, 301))
        assert _pinned(pooled) == 1
        conn.execute('CLOSE "SQL_CUR0x1"')
        assert _pinned(pooled) == 0
        # psqlODBC's own wrapper (UseDeclareFetch=1): one Query opens it, others page, the last closes and commits
        cur = conn.cursor()
        cur.execute('BEGIN;declare "SQL_CUR0x2" cursor with hold for SELECT id FROM orders ORDER BY id;'
                    'fetch 3 in "SQL_CUR0x2"')
        rows = _last_rows(cur)
        cur.execute('SAVEPOINT _EXEC_SVP_0x1;fetch 3 in "SQL_CUR0x2"')
        rows += _last_rows(cur)
        cur.execute('close "SQL_CUR0x2";commit')
        assert rows == [1, 2, 3, 4, 5, 6]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def _last_rows(cur: psycopg.Cursor) -> list[Any]:
    """The first column of the last result of a multi-statement Query."""
    rows: list[Any] = []
    while True:
        if cur.description is not None:
            rows = [r[0] for r in cur.fetchall()]
        if not cur.nextset():
            return rows


def test_listen_notify_reaches_the_listener_only(pooled: ProxyProcess, churn: Churn) -> None:
    with psycopg.connect(_dsn(pooled), autocommit=True) as listener, \
            psycopg.connect(_dsn(pooled), autocommit=True) as sender:
        listener.execute("LISTEN pool_ch")
        sender.execute("NOTIFY pool_ch, 'payload-1'")
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=20, stop_after=1)]
        assert got == [("pool_ch", "payload-1")]
        assert _pinned(pooled) == 1  # the listener keeps its server
        listener.execute("UNLISTEN pool_ch")
        assert _pinned(pooled) == 0
        listener.execute("LISTEN pool_marker")
        sender.execute("NOTIFY pool_ch, 'after-unlisten'; NOTIFY pool_marker, 'end'")  # one transaction: in order
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=20, stop_after=1)]
        assert got == [("pool_marker", "end")]
        listener.execute("UNLISTEN *")


@pytest.mark.parametrize("how", ["cancel_safe", "cancel"])
def test_cancel_reaches_the_running_query(pooled: ProxyProcess, churn: Churn, how: str) -> None:
    with psycopg.connect(_dsn(pooled), autocommit=True) as conn:
        timer = threading.Timer(0.5, getattr(conn, how))
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled, match="due to user request"):
            conn.execute("SELECT pg_sleep(20)")
        timer.join()
        assert conn.execute("SELECT 3").fetchone() == (3,)
    # churn.stop() (the fixture) fails if any churn client's query was cancelled instead


# --- asyncpg ---------------------------------------------------------------------------------------------


def test_asyncpg_statement_cache_under_contention(pooled: ProxyProcess, churn: Churn) -> None:
    async def client(n: int) -> None:
        conn = await asyncpg.connect(pooled.url(USER), ssl=False)  # statement cache on (asyncpg's default)
        try:
            for i in range(20):  # every query is a named __asyncpg_stmt_N__, prepared once, then cached
                assert await conn.fetchval("SELECT $1::int * 2 + $2::int", i, n) == 2 * i + n
                assert await conn.fetchval("SELECT count(*) FROM orders WHERE id <= $1", 3) == 3
            stmt = await conn.prepare("SELECT $1::int8 * 2, $2::numeric, $3::text[]")
            for i in range(6):
                row = await stmt.fetchrow(i, "2.5", ["a", str(n)])
                assert tuple(row) == (2 * i, Decimal("2.5"), ["a", str(n)])
            async with conn.transaction():
                total = 0
                async for r in conn.cursor("SELECT g FROM generate_series(1, 2000) g", prefetch=100):
                    total += r[0]
                assert total == 2000 * 2001 // 2
            # as on a direct connection: the client's own __asyncpg_stmt_N__ (the listing's too), none of the others'
            # (every client sends the same texts: another session's statement would list one text twice)
            rows = [tuple(r) for r in await conn.fetch("SELECT name, statement FROM pg_prepared_statements")]
            texts = {t for _, t in rows}
            assert all(re.fullmatch(r"__asyncpg_stmt_[0-9a-f]+__", x) for x, _ in rows), rows
            assert len(texts) == len(rows) and "SELECT $1::int8 * 2, $2::numeric, $3::text[]" in texts, rows
        finally:
            await conn.close()

    async def main() -> None:
        await asyncio.gather(*(client(n) for n in range(2 * POOL_SIZE + 1)))

    asyncio.run(main())


def test_asyncpg_cancel_via_timeout(pooled: ProxyProcess) -> None:
    # (ivan: tenant initech, pooled in transaction mode too; its own churn, whose queries must not be cancelled)
    with Churn(pooled.dsn("ivan"), clients=3, probe="SELECT pg_backend_pid(), pg_sleep(0.01)") as churn:
        base_asyncpg.test_cancel_via_timeout(pooled)
    assert churn.rounds > 0


# --- psql ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def psql_exe() -> str:
    exe = find_psql()
    if exe is None:
        pytest.skip("psql not found")
    return exe


def test_psql_sessions_in_parallel(pooled: ProxyProcess, psql_exe: str, churn: Churn) -> None:
    script = (
        "SET DateStyle = 'German';\n"
        "\\set FETCH_COUNT 10\n"
        "SELECT g, (SELECT string_agg(name, ',') FROM pg_cursors) FROM generate_series(1, 25) g;\n"
        "\\unset FETCH_COUNT\n"
        "CREATE TEMP TABLE tmp_import (id int, name text);\n"
        "\\copy tmp_import FROM STDIN\n"
        "1\tone\n2\ttwo\n"
        "\\.\n"
        "SELECT count(*), max(name), (SELECT count(*) FROM orders) FROM tmp_import;\n"
        "SELECT current_setting('DateStyle');\n"
    )

    def one(_: int) -> list[str]:
        res = run_psql(pooled.dsn(USER), script, password=pooled.password(USER), args=("-A", "-t", "-F", "|"),
                       check=True)
        return [ln for ln in res.stdout.splitlines() if ln.strip()]

    with concurrent.futures.ThreadPoolExecutor(2 * POOL_SIZE) as ex:
        outputs = list(ex.map(one, range(2 * POOL_SIZE)))
    expected = ["SET", *(f"{i}|_psql_cursor" for i in range(1, 26)), "CREATE TABLE", "COPY 2", f"2|two|{ROWS}",
                "German, DMY"]
    assert outputs == [expected] * (2 * POOL_SIZE)


def test_psql_ctrl_c_cancels_the_running_query(pooled: ProxyProcess, pg: PgCluster, psql_exe: str,
                                               churn: Churn) -> None:
    def active() -> list[tuple[Any, ...]]:
        return pg.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
                          "AND query = 'SELECT pg_sleep(30)'", (DB,))

    res = interrupt_psql(psql_exe, pooled.dsn(USER), pooled.password(USER), "SELECT pg_sleep(30)",
                         f"psql-cancel-{uuid.uuid4().hex[:8]}", lambda: bool(active()))
    assert "canceling statement due to user request" in res.stderr, res
    assert not active()


# --- pgJDBC ----------------------------------------------------------------------------------------------


def _jdbc(pooled: ProxyProcess, scenario: str, *args: str | int) -> Any:
    from tests.support.jdbc import run_jdbc

    return run_jdbc(pooled.jdbc_url(USER, sslmode="disable"), USER, pooled.password(USER), scenario, *args)


@pytest.fixture
def jdbc() -> None:
    from tests.support.jdbc import require_jdbc

    require_jdbc()


def test_jdbc_server_prepared_statements_in_parallel(pooled: ProxyProcess, jdbc: None, churn: Churn) -> None:
    with concurrent.futures.ThreadPoolExecutor(POOL_SIZE + 1) as ex:
        outs = list(ex.map(lambda _: _jdbc(pooled, "prepared", 10), range(POOL_SIZE + 1)))
    for out in outs:
        rows, threshold = out["rows"], out["prepare_threshold"]
        assert threshold == 5
        assert [r["sum"] for r in rows] == [i * 1000 + 1 for i in range(1, 11)]
        assert [r["product"] for r in rows] == [f"{2 * i}.50" for i in range(1, 11)]
        assert [r["server_prepared"] for r in rows] == [i >= threshold for i in range(1, 11)]
        assert [r["binary"] for r in rows[threshold:]] == [[True, True]] * (10 - threshold), rows
        assert out["prepared_statements"] == ["S_1"], out  # as on a direct connection, whichever server it is on


def test_jdbc_fetch_size_and_cancel(pooled: ProxyProcess, jdbc: None, churn: Churn) -> None:
    out = _jdbc(pooled, "fetchsize", 1000, 100)
    assert (out["count"], out["sum"]) == (1000, 500500)
    assert "C_1" in out["portals"], out
    out = _jdbc(pooled, "cancel", 1000, 30)
    assert out["sqlstate"] == "57014", out
    assert out["cancel_error"] is None and out["usable_after"] is True


TABLEAU_TEMP = (
    'SELECT * INTO TEMPORARY TABLE "#Tableau_1_1_Connect_CheckSelectIntoCap" FROM (SELECT 1 AS COL) AS CHECKTEMP',
    'CREATE LOCAL TEMPORARY TABLE "#Tableau_1_2_Connect_CheckCreateTempTableCap" (COL INTEGER) '
    "ON COMMIT PRESERVE ROWS",
    'DROP TABLE "#Tableau_1_1_Connect_CheckSelectIntoCap"',
    'DROP TABLE "#Tableau_1_2_Connect_CheckCreateTempTableCap"',
    # a filter materialized into a temp table, then joined into the query, over several transactions
    'CREATE LOCAL TEMPORARY TABLE "#Tableau_2_1_Filter" ("id" INTEGER) ON COMMIT PRESERVE ROWS',
    'INSERT INTO "#Tableau_2_1_Filter" ("id") VALUES (2), (4), (6)',
    'SELECT sum("orders"."amount") AS "sum:amount:ok" FROM "public"."orders" "orders" '
    'INNER JOIN "#Tableau_2_1_Filter" "f" ON ("orders"."id" = "f"."id")',
    "SELECT pg_backend_pid()",
    'SELECT count(*) FROM "#Tableau_2_1_Filter"',
    "SELECT pg_backend_pid()",
    'DROP TABLE "#Tableau_2_1_Filter"',
    "SELECT count(*) FROM orders",
)


def test_jdbc_tableau_temp_table_sequence(pooled: ProxyProcess, jdbc: None, churn: Churn) -> None:
    steps = _jdbc(pooled, "script", *TABLEAU_TEMP)
    assert [s.get("sqlstate") for s in steps] == [None] * len(steps), steps
    assert steps[6]["results"][0]["rows"] == [["12"]]
    assert steps[7]["results"][0]["rows"] == steps[9]["results"][0]["rows"]  # the temp table kept its server
    assert steps[8]["results"][0]["rows"] == [["3"]]
    assert steps[11]["results"][0]["rows"] == [[str(ROWS)]]


# --- psqlODBC (Tableau's settings) -----------------------------------------------------------------------


@pytest.fixture
def odbc() -> Any:
    from tests.support.odbc import require_odbc

    require_odbc()
    import pyodbc

    return pyodbc


def _odbc_connect(pooled: ProxyProcess, odbc: Any, autocommit: bool = True) -> Any:
    from tests.support.odbc import connection_string

    connstr = connection_string(port=pooled.port, database=TENANT, user=USER, password=pooled.password(USER),
                                options={"UseDeclareFetch": 1, "Fetch": 2048})
    return odbc.connect(connstr, autocommit=autocommit, timeout=10)


def test_odbc_declare_fetch_in_parallel(pooled: ProxyProcess, odbc: Any, churn: Churn) -> None:
    def one(_: int) -> tuple[int, int]:
        conn = _odbc_connect(pooled, odbc)
        try:
            cur = conn.cursor()
            # BEGIN;declare "SQL_CUR…" cursor with hold for …;fetch 2048 in …, then more fetches after the COMMIT
            rows = cur.execute("SELECT g, md5(g::text) FROM generate_series(1, 5000) g").fetchall()
            again = cur.execute("SELECT count(*) FROM orders WHERE id > ?", 2).fetchone()[0]
            return len(rows), again
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(POOL_SIZE + 1) as ex:
        assert list(ex.map(one, range(POOL_SIZE + 1))) == [(5000, ROWS - 2)] * (POOL_SIZE + 1)


def test_odbc_tableau_temp_table_probes(pooled: ProxyProcess, odbc: Any, churn: Churn) -> None:
    conn = _odbc_connect(pooled, odbc)
    try:
        cur = conn.cursor()
        # Under UseDeclareFetch the SELECT INTO probe is wrapped in a cursor: PostgreSQL refuses it (42601),
        # psqlODBC rolls back, and Tableau takes it as "no SELECT INTO".
        with pytest.raises(odbc.Error) as info:
            cur.execute('SELECT * INTO TEMPORARY TABLE "#Tableau_1_1_Connect_CheckSelectIntoCap" '
                        "FROM (SELECT 1 AS COL) AS CHECKTEMP")
        assert info.value.args[0] == "42601", info.value.args
        cur.execute('CREATE LOCAL TEMPORARY TABLE "#Tableau_1_2_Connect_CheckCreateTempTableCap" (COL INTEGER) '
                    "ON COMMIT PRESERVE ROWS")
        cur.execute('INSERT INTO "#Tableau_1_2_Connect_CheckCreateTempTableCap" VALUES (1), (2)')
        for _ in range(3):
            assert cur.execute('SELECT count(*) FROM "#Tableau_1_2_Connect_CheckCreateTempTableCap"').fetchone()[0] == 2
        cur.execute('DROP TABLE "#Tableau_1_2_Connect_CheckCreateTempTableCap"')
        assert cur.execute("SELECT count(*) FROM orders").fetchone()[0] == ROWS
    finally:
        conn.close()


# --- SQLAlchemy + pandas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_sqlalchemy_pool_over_the_proxys_pool(pooled: ProxyProcess, churn: Churn, driver: str) -> None:
    import pandas as pd
    import sqlalchemy as sa

    url = sa.URL.create(f"postgresql+{driver}", username=USER, password=pooled.password(USER), host="127.0.0.1",
                        port=pooled.port, database=TENANT, query={"sslmode": "disable"})
    eng = sa.create_engine(url, pool_size=2 * POOL_SIZE, max_overflow=0)  # more client connections than servers
    try:
        def one(n: int) -> tuple[list[str], int, int]:
            tables = sa.inspect(eng).get_table_names()
            frame = pd.read_sql(sa.text("SELECT id, amount FROM orders WHERE id > :low ORDER BY id"), eng,
                                params={"low": n % 3})
            with eng.connect() as conn:
                total = conn.execute(sa.text("SELECT sum(amount) FROM orders")).scalar_one()
            return tables, len(frame), int(total)

        with concurrent.futures.ThreadPoolExecutor(2 * POOL_SIZE) as ex:
            results = list(ex.map(one, range(4 * POOL_SIZE)))
    finally:
        eng.dispose()
    assert results == [(["orders"], ROWS - n % 3, ROWS * (ROWS + 1) // 2) for n in range(4 * POOL_SIZE)]
