"""Prepared statements kept by pgtenant and the server-side statement cache, with real clients and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import psycopg
import pytest
from psycopg import pq

from tests.support.certs import TlsFiles
from tests.support.jdbc import jdbc_missing_reason, run_jdbc
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.proxyproc import TENANT_ROLES, ProxyProcess, prepare_backend


@pytest.fixture(scope="module")
def cached(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, tls_certs: TlsFiles) -> Iterator[ProxyProcess]:
    """pgtenant with the statement cache on (a small one: 8 statements per server)."""
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("pgtenant"), tls=tls_certs,
                     backend_sslmode="require" if pg.ssl_enabled else "disable",
                     pool={"statement_cache": True, "statement_cache_size": 8})
    p.start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def pooled(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, tls_certs: TlsFiles) -> Iterator[ProxyProcess]:
    """pgtenant in transaction pooling with one server per pool: clients take turns on it between transactions."""
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("pgtenant"), tls=tls_certs,
                     backend_sslmode="require" if pg.ssl_enabled else "disable",
                     pool={"pool_mode": "transaction", "pool_size": 1})
    p.start()
    yield p
    p.stop()


@pytest.fixture
def table(pg: PgCluster) -> Iterator[str]:
    """A table of tenant initech (database strategy) whose row type a test changes behind the session's back."""
    owner = "pgt_role_2"
    pg.execute(f'DROP TABLE IF EXISTS stale_t; CREATE TABLE stale_t (a int); INSERT INTO stale_t VALUES (1), (2);'
               f'ALTER TABLE stale_t OWNER TO "{owner}"', dbname="initech")
    yield "stale_t"
    pg.execute("DROP TABLE IF EXISTS stale_t", dbname="initech")


@pytest.fixture(scope="module")
def session(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, tls_certs: TlsFiles) -> Iterator[ProxyProcess]:
    """pgtenant in session pooling without the statement cache: the client's names reach the server as they are."""
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("pgtenant"), tls=tls_certs,
                     backend_sslmode="require" if pg.ssl_enabled else "disable",
                     pool={"pool_mode": "session", "statement_cache": False})
    p.start()
    yield p
    p.stop()


@pytest.fixture(scope="module", autouse=True)
def server_view(pg: PgCluster) -> None:
    """A view the database's owner made over pg_prepared_statements: the policy does not look into it, so it shows
    the server's own statements (pgtenant's pgt_ names), which the tenant's pg_prepared_statements never lists."""
    prepare_backend(pg)
    pg.execute("CREATE OR REPLACE VIEW public.server_prepared AS SELECT name FROM pg_catalog.pg_prepared_statements;"
               "GRANT SELECT ON public.server_prepared TO PUBLIC", dbname="initech")


def server_statements(conn: psycopg.Connection) -> list[str]:
    """The statements prepared on the server this session holds, as PostgreSQL lists them (`server_view`)."""
    return [r[0] for r in conn.execute("SELECT name FROM server_prepared ORDER BY name").fetchall()]


def listed(conn: psycopg.Connection) -> list[str]:
    """The names the session's pg_prepared_statements lists."""
    sql = "SELECT name FROM pg_prepared_statements ORDER BY name"
    return [r[0] for r in conn.execute(sql, prepare=False).fetchall()]


def direct_dsn(pg: PgCluster) -> str:
    """A direct connection as tenant initech's backend role (what the listings must equal)."""
    role, password = TENANT_ROLES["initech"]
    return pg.dsn(role, password, dbname="initech")


def test_repeated_unnamed_statements_become_a_server_statement(cached: ProxyProcess) -> None:
    with psycopg.connect(cached.dsn("ivan"), autocommit=True, prepare_threshold=None) as c:
        for i in range(6):  # psycopg never prepares here: an unnamed Parse each time
            assert c.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)
        names = server_statements(c)
        assert len(names) == 1 and names[0].startswith("pgt_")
        assert c.execute("SELECT 'once', %s::int", (1,)).fetchone() == ("once", 1)  # seen once: not admitted
        assert len(server_statements(c)) == 1
        assert listed(c) == []  # as on a direct connection: the unnamed statement is not listed


def test_a_changed_row_type_is_retried_transparently(cached: ProxyProcess, pg: PgCluster, table: str) -> None:
    with psycopg.connect(cached.dsn("ivan"), autocommit=True, prepare_threshold=None) as c:
        for _ in range(3):
            assert c.execute(f"SELECT * FROM {table} WHERE a > %s ORDER BY a", (0,)).fetchall() == [(1,), (2,)]
        pg.execute(f"ALTER TABLE {table} ADD COLUMN b text DEFAULT 'x'", dbname="initech")  # not through pgtenant
        # A direct connection parses the unnamed statement again: so does the retry (the 0A000 never shows).
        assert c.execute(f"SELECT * FROM {table} WHERE a > %s ORDER BY a", (0,)).fetchall() == [(1, "x"), (2, "x")]


def test_a_changed_row_type_in_a_transaction_block_fails_once(cached: ProxyProcess, pg: PgCluster,
                                                               table: str) -> None:
    with psycopg.connect(cached.dsn("ivan"), prepare_threshold=None) as c:
        for _ in range(3):
            c.execute(f"SELECT * FROM {table} WHERE a > %s", (0,)).fetchall()
            c.commit()
        pg.execute(f"ALTER TABLE {table} ADD COLUMN b text DEFAULT 'x'", dbname="initech")
        c.execute("SELECT 1")  # a transaction block is open: the error cannot be retried without its effects
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="cached plan must not change result type"):
            c.execute(f"SELECT * FROM {table} WHERE a > %s", (0,))
        c.rollback()
        assert c.execute(f"SELECT * FROM {table} WHERE a > %s ORDER BY a", (0,)).fetchall() == [(1, "x"), (2, "x")]


def test_ddl_through_the_session_closes_its_cached_statements(cached: ProxyProcess) -> None:
    with psycopg.connect(cached.dsn("ivan"), prepare_threshold=None) as c:
        c.execute("CREATE TEMP TABLE tmp_t (a int)")
        c.execute("INSERT INTO tmp_t VALUES (1)")
        for _ in range(3):
            assert c.execute("SELECT * FROM tmp_t WHERE a > %s", (0,)).fetchall() == [(1,)]
        assert server_statements(c)
        c.execute("DROP TABLE tmp_t")  # in the same transaction block: a stale plan could not be retried
        assert server_statements(c) == []
        c.execute("CREATE TEMP TABLE tmp_t (a int, b text DEFAULT 'y')")
        c.execute("INSERT INTO tmp_t VALUES (2)")
        assert c.execute("SELECT * FROM tmp_t WHERE a > %s", (0,)).fetchall() == [(2, "y")]
        c.commit()


def test_psycopg_prepared_statements_and_errors(cached: ProxyProcess) -> None:
    with psycopg.connect(cached.dsn("ivan"), autocommit=True) as c:
        for i in range(8):  # named _pg3_N from the fifth execution on
            assert c.execute("SELECT %s::int8 * 2", (i,), prepare=i > 1).fetchone() == (2 * i,)
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute("SELECT 1 / %s::int", (0,), prepare=True)
        assert c.execute("SELECT %s::int8 * 2", (21,)).fetchone() == (42,)
        c.execute("DEALLOCATE ALL")
        assert c.execute("SELECT %s::int8 * 3", (2,), prepare=True).fetchone() == (6,)
        c.execute("DISCARD ALL")
        assert c.execute("SELECT %s::int8 * 3", (3,), prepare=True).fetchone() == (9,)


def test_more_statements_than_the_cache_holds(cached: ProxyProcess) -> None:
    with psycopg.connect(cached.dsn("ivan"), autocommit=True) as c:
        for round_ in range(2):
            for i in range(20):  # 20 named statements on a server that keeps 8
                assert c.execute(f"SELECT %s::int + {i}", (round_,), prepare=True).fetchone() == (round_ + i,)
        assert len(server_statements(c)) <= 8


def test_asyncpg_statement_cache_and_errors(cached: ProxyProcess) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(cached.url("ivan"), ssl=False)
        try:
            stmt = await conn.prepare("SELECT $1::int8 * 2")
            for i in range(10):
                assert await stmt.fetchval(i) == 2 * i
            for i in range(10):  # asyncpg's statement cache: one named statement, executed again and again
                assert await conn.fetchval("SELECT $1::int + 1", i) == i + 1
            with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
                await conn.fetchval("SELECT 1 / $1::int", 0)
            async with conn.transaction():
                assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
            await conn.execute("DEALLOCATE ALL")  # as on a direct connection: asyncpg's cached statement is gone
            with pytest.raises(asyncpg.exceptions.InvalidSQLStatementNameError):
                await conn.fetchval("SELECT $1::int + 1", 1)
            stmt = await conn.prepare("SELECT $1::int + 1")
            assert await stmt.fetchval(1) == 2
        finally:
            await conn.close()

    asyncio.run(main())


# --- transaction pooling: every client's statements on whichever server its transaction lands on ---------------


def test_psycopg_prepared_statements_of_two_clients_interleaving(pooled: ProxyProcess) -> None:
    with psycopg.connect(pooled.dsn("ivan"), autocommit=True) as a, \
            psycopg.connect(pooled.dsn("ivan"), autocommit=True) as b:
        for i in range(8):  # both clients name their statements _pg3_0, _pg3_1...
            assert a.execute("SELECT %s::int * 2", (i,), prepare=True).fetchone() == (2 * i,)
            assert b.execute("SELECT %s::int * 3", (i,), prepare=True).fetchone() == (3 * i,)
        with a.transaction():  # a transaction keeps its server: a's statements run there, b waits its turn
            assert a.execute("SELECT %s::int * 2", (21,), prepare=True).fetchone() == (42,)
        with pytest.raises(psycopg.errors.DivisionByZero):
            b.execute("SELECT 1 / %s::int", (0,), prepare=True)
        assert b.execute("SELECT %s::int * 3", (3,), prepare=True).fetchone() == (9,)


def test_asyncpg_statement_cache_in_transaction_pooling(pooled: ProxyProcess) -> None:
    async def main() -> None:
        a = await asyncpg.connect(pooled.url("ivan"), ssl=False)
        b = await asyncpg.connect(pooled.url("ivan"), ssl=False)
        try:
            for i in range(10):  # the same __asyncpg_stmt_N__ names in both, other texts
                assert await a.fetchval("SELECT $1::int + 1", i) == i + 1
                assert await b.fetchval("SELECT $1::int + 2", i) == i + 2
            stmt = await a.prepare("SELECT $1::int8 * 2, $2::text")
            for i in range(5):
                assert tuple(await stmt.fetchrow(i, "x")) == (2 * i, "x")
                assert await b.fetchval("SELECT $1::int + 2", i) == i + 2
            async with a.transaction():
                assert await a.fetchval("SELECT $1::int + 1", 41) == 42
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_node_style_named_statements(pooled: ProxyProcess) -> None:
    """node-postgres parses a named query once per connection, then only binds and executes it."""
    a, b = pq.PGconn.connect(pooled.dsn("ivan").encode()), pq.PGconn.connect(pooled.dsn("ivan").encode())
    try:
        for conn, sql in ((a, b"SELECT $1::int + 100"), (b, b"SELECT $1::int + 200")):
            assert conn.prepare(b"fetch-thing", sql).status == pq.ExecStatus.COMMAND_OK
        for i in range(5):
            for conn, plus in ((a, 100), (b, 200)):
                res = conn.exec_prepared(b"fetch-thing", [str(i).encode()])
                assert res.status == pq.ExecStatus.TUPLES_OK, res.error_message
                assert res.get_value(0, 0) == str(i + plus).encode()
        assert a.describe_prepared(b"fetch-thing").nparams == 1
        missing = a.exec_prepared(b"nope", [])
        assert missing.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"
        duplicate = a.prepare(b"fetch-thing", b"SELECT 1")
        assert duplicate.error_field(pq.DiagnosticField.SQLSTATE) == b"42P05"
        assert a.exec_prepared(b"fetch-thing", [b"1"]).get_value(0, 0) == b"101"
    finally:
        a.finish()
        b.finish()


def test_a_parse_of_a_name_in_use_leaves_the_old_statement_tracked(pooled: ProxyProcess) -> None:
    """Red team round 6 F8: PostgreSQL refuses the second Parse (42P05) and keeps the first statement; the proxy
    must go on following the first one's effects, not the refused text's (else the setting leaks to B)."""
    a = pq.PGconn.connect(pooled.dsn("ivan").encode())
    try:
        first = a.prepare(b"s1", b"SELECT set_config('IntervalStyle', 'postgres_verbose', false)")
        assert first.status == pq.ExecStatus.COMMAND_OK, first.error_message
        duplicate = a.prepare(b"s1", b"SELECT 1")
        assert duplicate.error_field(pq.DiagnosticField.SQLSTATE) == b"42P05"
        assert a.exec_prepared(b"s1", []).get_value(0, 0) == b"postgres_verbose"  # the old statement ran
    finally:
        a.finish()
    with psycopg.connect(pooled.dsn("ivan"), autocommit=True) as b:  # one server per pool: A's, or a new one
        assert b.execute("SHOW IntervalStyle").fetchone() == ("postgres",)


def test_a_sql_prepare_of_a_name_in_use_leaves_the_old_statement_tracked(pooled: ProxyProcess, pg: PgCluster) -> None:
    """SQL PREPARE of a name in use: PostgreSQL's 42P05, the old statement (an advisory lock) stays and is followed:
    the lock its EXECUTE takes never stays on a server back in the pool."""
    held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 7706"
    with psycopg.connect(pg.dsn(dbname="initech"), autocommit=True) as su:
        with psycopg.connect(pooled.dsn("ivan"), autocommit=True) as a:
            a.execute("PREPARE rt6_lock AS SELECT pg_advisory_lock(7706)")
            with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
                a.execute("PREPARE rt6_lock AS SELECT 1")
            a.execute("EXECUTE rt6_lock")
            assert su.execute(held).fetchone() == (1,)  # the old statement ran
        until(lambda: su.execute(held).fetchone() == (0,) or None, 20, 0.05, "the lock gone with A's server")


def test_clients_in_threads_share_the_server(pooled: ProxyProcess) -> None:
    def client(n: int) -> list[tuple[int, ...]]:
        with psycopg.connect(pooled.dsn("ivan"), autocommit=True) as c:
            return [c.execute("SELECT %s::int + %s::int", (i, n), prepare=i % 3 != 0).fetchone() for i in range(30)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(client, range(4)))
    assert results == [[(i + n,) for i in range(30)] for n in range(4)]


@pytest.mark.parametrize("threshold", [5, 1])
def test_pgjdbc_server_prepared_statements(pooled: ProxyProcess, pg: PgCluster, threshold: int) -> None:
    if jdbc_missing_reason():
        pytest.skip(jdbc_missing_reason() or "")
    url = pooled.jdbc_url("ivan", sslmode="disable", prepareThreshold=threshold)
    out = run_jdbc(url, "ivan", pooled.password("ivan"), "prepared", 10)
    rows = out["rows"]
    assert out["prepare_threshold"] == threshold
    assert [r["sum"] for r in rows] == [i * 1000 + 1 for i in range(1, 11)]
    assert [r["product"] for r in rows] == [f"{2 * i}.50" for i in range(1, 11)]
    assert [r["server_prepared"] for r in rows] == [i >= threshold for i in range(1, 11)]
    # pg_prepared_statements lists the client's S_n, as on a direct connection (the listing's own statement too, when
    # prepareThreshold=1 makes it a server-prepared one)
    role, password = TENANT_ROLES["initech"]
    direct = run_jdbc(pg.jdbc_url("initech", sslmode="disable", prepareThreshold=threshold), role, password,
                      "prepared", 10)
    names = out["prepared_statements"]
    assert names == direct["prepared_statements"] and "S_1" in names, (names, direct["prepared_statements"])


# --- pg_prepared_statements: the session's own statements, as on a direct connection ------------------------------

LISTING = "SELECT name, statement, from_sql, parameter_types::text FROM pg_prepared_statements ORDER BY name"


def psycopg_listings(conn: psycopg.Connection) -> list[object]:
    """A psycopg client's protocol-level (_pg3_N) and SQL statements, and what pg_prepared_statements shows of them
    after each step: plain, joined, in a subquery, `*`, by simple Query and as a prepared statement of its own."""
    seen: list[object] = []

    def look() -> None:
        seen.append(conn.execute(LISTING, prepare=False).fetchall())

    assert conn.execute("SELECT %s::int8 * 2", (1,), prepare=True).fetchone() == (2,)
    assert conn.execute("SELECT %s::text || 'x'", ("a",), prepare=True).fetchone() == ("ax",)
    look()
    conn.execute("PREPARE sql_p(int) AS SELECT $1 + 1")
    look()
    seen.append(conn.execute("SELECT p.name, v.n FROM pg_prepared_statements p JOIN (VALUES ('sql_p'), ('_pg3_1')) "
                             "v(n) ON p.name = v.n ORDER BY 1", prepare=False).fetchall())
    seen.append(conn.execute("SELECT count(*) FROM (SELECT * FROM pg_prepared_statements) s", prepare=False).fetchall())
    seen.append(conn.execute("SELECT 1 WHERE EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE name = %s)",
                             ("_pg3_0",), prepare=False).fetchall())
    cur = conn.execute("SELECT * FROM pg_prepared_statements ORDER BY name", prepare=False)
    seen.append(([d.name for d in cur.description or ()], len(cur.fetchall())))
    seen.append(conn.execute(LISTING, prepare=True).fetchall())  # _pg3_2: it lists itself
    conn.execute("DEALLOCATE sql_p")
    seen.append(conn.execute(LISTING, prepare=True).fetchall())  # the same _pg3_2 again: the list of now
    conn.execute("DEALLOCATE ALL")
    look()
    assert conn.execute("SELECT %s::int8 * 3", (1,), prepare=True).fetchone() == (3,)
    look()
    conn.execute("DISCARD ALL")
    look()
    return seen


@pytest.mark.parametrize("mode", ["pooled", "cached", "session"])
def test_psycopg_pg_prepared_statements_as_on_a_direct_connection(request: pytest.FixtureRequest, pg: PgCluster,
                                                                   mode: str) -> None:
    proxy: ProxyProcess = request.getfixturevalue(mode)
    with psycopg.connect(direct_dsn(pg), autocommit=True) as c:
        direct = psycopg_listings(c)
    with psycopg.connect(proxy.dsn("ivan"), autocommit=True) as c:
        through = psycopg_listings(c)
        assert not [n for n in listed(c) if n.startswith("pgt_")]
    assert direct[0] == [("_pg3_0", "SELECT $1::int8 * 2", False, "{smallint}"),
                         ("_pg3_1", "SELECT $1::text || 'x'", False, "{text}")]  # (what the test is about)
    assert through == direct


def _normal(rows: list[object]) -> list[object]:
    """asyncpg numbers its statements per process: __asyncpg_stmt_N__ without the N, sorted (the listing's ORDER BY
    name follows the numbers, which differ between two connections: _9_ before _a_, _10_ before _9_ ...)."""
    return sorted(tuple(re.sub(r"__asyncpg_stmt_[0-9a-f]+__", "__asyncpg_stmt__", v) if isinstance(v, str) else v
                        for v in row) for row in rows)  # type: ignore[union-attr]


async def asyncpg_listings(url: str) -> list[object]:
    """asyncpg's prepared statement and statement cache (__asyncpg_stmt_N__, the listing itself one of them)."""
    conn = await asyncpg.connect(url, ssl=False)
    try:
        stmt = await conn.prepare("SELECT $1::int8 * 2")
        assert await stmt.fetchval(21) == 42
        assert await conn.fetchval("SELECT $1::int + 1", 1) == 2
        seen = [_normal(await conn.fetch(LISTING))]
        assert await conn.fetchval("SELECT $1::text", "x") == "x"
        seen.append(_normal(await conn.fetch(LISTING)))  # asyncpg's cached listing statement again
        return seen
    finally:
        await conn.close()


def test_asyncpg_pg_prepared_statements_as_on_a_direct_connection(pooled: ProxyProcess, pg: PgCluster) -> None:
    role, password = TENANT_ROLES["initech"]
    direct = asyncio.run(asyncpg_listings(pg.url(role, password, dbname="initech")))
    through = asyncio.run(asyncpg_listings(pooled.url("ivan")))
    assert len(direct[0]) == 3 and len(direct[1]) == 4  # (what the test is about)
    assert through == direct


@pytest.mark.parametrize("mode", ["pooled", "session"])
def test_a_rewritten_statement_is_listed_with_the_clients_text(request: pytest.FixtureRequest, mode: str) -> None:
    """Shared strategy: the server runs the tenant-filtered text; the client sees its own, under its own name."""
    proxy: ProxyProcess = request.getfixturevalue(mode)
    text = "SELECT count(*) FROM orders WHERE id > $1"
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as c:
        assert c.execute(text.replace("$1", "%s"), (0,), prepare=True).fetchone() == (200,)  # acme's 200 of 300
        rows = c.execute(LISTING, prepare=False).fetchall()
        assert rows == [("_pg3_0", text, False, "{smallint}")]
        rows = c.execute(LISTING, prepare=True).fetchall()  # _pg3_1, rewritten too: listed by the client's text
        assert rows == [("_pg3_0", text, False, "{smallint}"), ("_pg3_1", LISTING, False, "{}")]
        c.execute("DEALLOCATE ALL")
        assert listed(c) == []


def test_prepare_time_is_when_the_client_prepared(pooled: ProxyProcess) -> None:
    """Not the server copy's (another session may have prepared that one long before): when this client's Parse
    came, in the order its statements came, none after the listing ran."""
    with psycopg.connect(pooled.dsn("ivan"), autocommit=True) as a, \
            psycopg.connect(pooled.dsn("ivan"), autocommit=True) as b:
        a.execute("SELECT %s::int", (1,), prepare=True)  # a's copy on the server: prepared first
        start = b.execute("SELECT statement_timestamp()").fetchone()
        b.execute("SELECT %s::int", (1,), prepare=True)  # b's _pg3_0: the same server statement
        b.execute("SELECT %s::text", ("x",), prepare=True)
        rows = b.execute("SELECT name, prepare_time >= %s, prepare_time <= statement_timestamp() "
                         "FROM pg_prepared_statements ORDER BY prepare_time, name", start, prepare=False).fetchall()
        assert rows == [("_pg3_0", True, True), ("_pg3_1", True, True)]


def test_two_clients_on_one_server_list_only_their_own(pooled: ProxyProcess) -> None:
    with psycopg.connect(pooled.dsn("ivan"), autocommit=True) as a, \
            psycopg.connect(pooled.dsn("ivan"), autocommit=True) as b:
        for conn, text in ((a, "SELECT 'of-a', %s::int"), (b, "SELECT 'of-b', %s::int"), (a, "SELECT 'a2', %s::int")):
            conn.execute(text, (1,), prepare=True)
        assert a.execute("SELECT pg_backend_pid()").fetchone() == b.execute("SELECT pg_backend_pid()").fetchone()
        assert len([n for n in server_statements(b) if n.startswith("pgt_")]) >= 3  # all three on the one server
        mine = "SELECT name, statement FROM pg_prepared_statements ORDER BY 1"
        assert a.execute(mine, prepare=False).fetchall() == [("_pg3_0", "SELECT 'of-a', $1::int"),
                                                             ("_pg3_1", "SELECT 'a2', $1::int")]
        assert b.execute(mine, prepare=False).fetchall() == [("_pg3_0", "SELECT 'of-b', $1::int")]
        assert b.execute("SELECT count(*) FROM pg_prepared_statements", prepare=False).fetchone() == (1,)
        a.execute("DEALLOCATE ALL")  # a's statements go; b's stay listed for b (and prepared again when it runs one)
        assert listed(a) == [] and listed(b) == ["_pg3_0"]
        assert b.execute("SELECT 'of-b', %s::int", (2,), prepare=True).fetchone() == ("of-b", 2)


def test_the_placeholder_cannot_be_forged(pooled: ProxyProcess) -> None:
    with psycopg.connect(pooled.dsn("ivan"), autocommit=True) as c:
        c.execute("SELECT %s::int", (1,), prepare=True)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="reserved"):
            c.execute("SELECT 'pgtenant:session-statements', name FROM pg_prepared_statements", prepare=False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # the function behind the view: not allowed
            c.execute("SELECT name FROM pg_prepared_statement()", prepare=False)
        assert listed(c) == ["_pg3_0"]
    with psycopg.connect(pooled.dsn("alice"), autocommit=True) as c:  # red team 5, F3: the marker re-quoted
        c.pgconn.prepare(b'my"stmt', b"SELECT 1")  # by the rewrite from a client's U& identifier
        forged = ('SELECT \'pg_class\'::regclass UNION SELECT U&"\\0027pgtenant:session-statements\\0027" FROM '
                  '(SELECT 1259::oid) s(U&"\\0027pgtenant:session-statements\\0027") '
                  "WHERE EXISTS (SELECT FROM pg_prepared_statements)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="reserved"):
            c.execute(forged, prepare=False)
        assert listed(c) == ['my"stmt']


# --- a client's SQL and the proxy's server statements (red team pool round 1 F1) ---------------------------------


@pytest.mark.parametrize("forget", ["SELECT 1; DEALLOCATE ALL", "/* psql */ deallocate prepare all",
                                    "SELECT 1; DEALLOCATE ALL; SELECT 1 / 0"])
def test_deallocate_all_anywhere_keeps_the_servers_statements_known(pooled: ProxyProcess, forget: str) -> None:
    """DEALLOCATE ALL wherever it is in a Query (the policy's parse says so): the proxy forgets what the server
    held, so the other client's statement is prepared again instead of failing with 26000."""
    sql = "SELECT count(*) FROM generate_series(1, 10) g WHERE g > %s"
    with psycopg.connect(pooled.dsn("ivan"), autocommit=True) as a, \
            psycopg.connect(pooled.dsn("ivan"), autocommit=True) as b:
        for _ in range(3):
            assert b.execute(sql, (5,), prepare=True).fetchone() == (5,)
        with contextlib.suppress(psycopg.errors.DivisionByZero):  # DEALLOCATE ALL before it ran all the same
            a.execute(forget)
        assert server_statements(a) == []
        for _ in range(2):
            assert b.execute(sql, (6,), prepare=True).fetchone() == (4,)
        with psycopg.connect(pooled.dsn("ivan"), autocommit=True) as c:
            assert c.execute(sql, (7,), prepare=True).fetchone() == (3,)


def test_sql_naming_a_proxy_statement_is_refused(pooled: ProxyProcess) -> None:
    sql = "SELECT %s::int + 1"
    with psycopg.connect(pooled.dsn("ivan"), autocommit=True) as a, \
            psycopg.connect(pooled.dsn("ivan"), autocommit=True) as b:
        assert b.execute(sql, (1,), prepare=True).fetchone() == (2,)
        names = server_statements(a)
        assert names and names[0].startswith("pgt_")
        for attack in (f'DEALLOCATE "{names[0]}"', f"SELECT 1; DEALLOCATE {names[0]}", f"EXECUTE {names[0]}(1)",
                       f"PREPARE {names[0]}x AS SELECT 1"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="reserved_statement_name"):
                a.execute(attack)
        assert server_statements(a) == names
        assert b.execute(sql, (2,), prepare=True).fetchone() == (3,)


@pytest.fixture(scope="module")
def bounded(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, tls_certs: TlsFiles) -> Iterator[ProxyProcess]:
    """Transaction pooling with small per-session statement bounds: 3 statements, 64 KiB of their text, a
    pg_prepared_statements listing of 16 KiB."""
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("pgtenant"), tls=tls_certs,
                     backend_sslmode="require" if pg.ssl_enabled else "disable",
                     pool={"pool_mode": "transaction", "pool_size": 1, "max_session_statements": 3,
                           "max_session_statement_bytes": 65536, "max_statements_listing_bytes": 16384})
    p.start()
    yield p
    p.stop()


def test_named_statements_past_the_session_bounds_fail_and_the_session_goes_on(bounded: ProxyProcess) -> None:
    """Red team pool round 1 F3: named statements of 2 MiB literals grew the proxy without bound (the server held
    one statement); past the bounds a Parse fails as PostgreSQL fails out of memory, 53200."""
    conn = pq.PGconn.connect(bounded.dsn("ivan").encode())
    try:
        big = "x" * 40000
        assert conn.prepare(b"s0", f"SELECT '{big}' AS c0".encode()).status == pq.ExecStatus.COMMAND_OK
        res = conn.prepare(b"s1", f"SELECT '{big}' AS c1".encode())
        assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"53200"
        assert b"max_session_statement_bytes = 65536" in (res.error_message or b"")
        for i in (1, 2):
            assert conn.prepare(f"s{i}".encode(), f"SELECT {i}".encode()).status == pq.ExecStatus.COMMAND_OK
        res = conn.prepare(b"s3", b"SELECT 3")
        assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"53200"
        assert b"max_session_statements = 3" in (res.error_message or b"")
        assert conn.exec_prepared(b"s2", []).get_value(0, 0) == b"2"  # the session goes on
        assert conn.exec_(b"DEALLOCATE s1").status == pq.ExecStatus.COMMAND_OK
        assert conn.prepare(b"s3", b"SELECT 3").status == pq.ExecStatus.COMMAND_OK
        assert conn.exec_prepared(b"s3", []).get_value(0, 0) == b"3"
    finally:
        conn.finish()


def test_sql_prepares_past_the_session_bounds_fail_and_the_session_goes_on(bounded: ProxyProcess) -> None:
    """Red team 5, F6: each SQL PREPARE keeps its whole text on the server (one that reads pg_prepared_statements,
    the listing too): bounded like the protocol statements, 53200 past the count or the bytes."""
    with psycopg.connect(bounded.dsn("ivan"), autocommit=True) as c:
        with pytest.raises(psycopg.errors.OutOfMemory, match="max_session_statement_bytes = 65536"):
            c.execute(f"PREPARE big AS SELECT '{'x' * 70000}'")
        for i in range(3):
            c.execute(f"PREPARE q{i} AS SELECT {i}")
        with pytest.raises(psycopg.errors.OutOfMemory, match="max_session_statements = 3"):
            c.execute("PREPARE q3 AS SELECT count(*) FROM pg_prepared_statements")
        assert c.execute("EXECUTE q2").fetchone() == (2,)  # the session goes on
        c.execute("DEALLOCATE q0")
        c.execute("PREPARE q3 AS SELECT count(*) FROM pg_prepared_statements")
        assert c.execute("EXECUTE q3").fetchone() == (3,)


def test_a_listing_past_its_bound_keeps_the_names_with_shortened_texts(bounded: ProxyProcess) -> None:
    """Red team 5, F6: a session's listing is bounded ([pool] max_statements_listing_bytes, 16 KiB here): the texts
    in it are shortened (ending in '…'), every name stays."""
    with psycopg.connect(bounded.dsn("ivan"), autocommit=True) as c:
        texts = [f"SELECT '{str(i) * 15000}' AS c" for i in range(3)]
        for i, text in enumerate(texts):
            c.pgconn.prepare(f"s{i}".encode(), text.encode())
        rows = c.execute("SELECT name, statement FROM pg_prepared_statements ORDER BY name").fetchall()
        assert [r[0] for r in rows] == ["s0", "s1", "s2"]
        assert all(r[1] == text[:4096] + "\u2026" for r, text in zip(rows, texts, strict=True))
        c.pgconn.exec_(b"DEALLOCATE s1")
        c.pgconn.exec_(b"DEALLOCATE s2")
        assert c.execute("SELECT statement FROM pg_prepared_statements").fetchall() == [(texts[0],)]  # fits: whole


@pytest.mark.parametrize("mode", ["pooled", "session"])
def test_a_sql_prepared_statement_is_listed_with_the_clients_text(request: pytest.FixtureRequest, pg: PgCluster,
                                                                  mode: str) -> None:
    """Red team 5, F5: the server's text of a rewritten SQL PREPARE is the proxy's, whose catalog filters name the
    schemas hidden from the tenant; the view shows the client's PREPARE, as PostgreSQL lists it on a direct
    connection."""
    proxy: ProxyProcess = request.getfixturevalue(mode)
    texts = ["PREPARE p1 AS SELECT nspname FROM pg_namespace", "PREPARE p2 AS SELECT count(*) FROM orders; SELECT 1"]
    sql = "SELECT name, statement, from_sql FROM pg_prepared_statements ORDER BY name"
    with psycopg.connect(direct_dsn(pg), autocommit=True) as d:
        for text in texts:
            d.execute(text, prepare=False)
        expected = d.execute(sql, prepare=False).fetchall()
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as c:
        for text in texts:
            c.execute(text, prepare=False)
        rows = c.execute(sql, prepare=False).fetchall()
        assert rows == expected and len(rows) == 2
        assert not any("globex" in r[1] or "pgt_" in r[1] for r in rows)
        assert c.execute("EXECUTE p2").fetchone() == (200,)  # acme's orders: the server runs the filtered text
        c.execute("DEALLOCATE p1")
        c.execute("PREPARE p1 AS SELECT 1")  # p1 again, forwarded as it is
        assert c.execute(sql, prepare=False).fetchall()[0] == ("p1", "PREPARE p1 AS SELECT 1", True)
