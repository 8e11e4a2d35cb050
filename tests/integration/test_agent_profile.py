"""The agent profile (issue 18 point 3) through real clients: read-only at both locks, no read-write escape, DO and
the stricter function list refused, every query capped at agent.max_rows, through both protocols."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import ProxyProcess, prepare_backend

MAX_ROWS = 5
AGENTS = {"ava": ("acme", "ava-pw"), "ivy": ("initech", "ivy-pw")}  # shared strategy; database strategy (writes on)


@pytest.fixture(scope="module")
def proxy(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("pgtenant"), backend_sslmode="disable", extra_users=AGENTS,
                     agent={"max_rows": MAX_ROWS, "statement_timeout": 7.5},
                     user_keys={name: {"profile": "agent"} for name in AGENTS})
    p.start()
    yield p
    p.stop()


def refused(conn: psycopg.Connection, sql: str, *, prepare: bool | None = None) -> psycopg.errors.Error:
    with pytest.raises(psycopg.errors.Error) as info:
        conn.execute(sql, prepare=prepare)
    return info.value


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
@pytest.mark.parametrize("user", sorted(AGENTS))
def test_writes_do_and_escapes_are_refused_with_their_rule(proxy: ProxyProcess, user: str, prepare: bool) -> None:
    with psycopg.connect(proxy.dsn(user), autocommit=True, prepare_threshold=0 if prepare else None) as c:
        cases = {
            "INSERT INTO orders (id, amount) VALUES (9001, 1)": ("25006", "read_only"),
            "DELETE FROM orders": ("25006", "read_only"),
            "DO $$BEGIN PERFORM 1; END$$": ("42501", "agent_statement"),
            "CREATE TEMP TABLE scratch (a int)": ("42501", "agent_statement"),
            "SET default_transaction_read_only = off": ("25006", "agent_setting"),
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE": ("25006", "agent_setting"),
            "BEGIN READ WRITE": ("25006", "agent_setting"),
            "SET statement_timeout = 0": ("25006", "agent_setting"),
            "SELECT set_config('transaction_read_only', 'off', false)": ("42501", "agent_function"),
            "SELECT pg_sleep(0)": ("42501", "agent_function"),
        }
        for sql, (sqlstate, rule) in cases.items():
            err = refused(c, sql, prepare=prepare if not sql.startswith(("BEGIN", "SET", "DO")) else None)
            assert (err.sqlstate, f"(rule {rule})" in str(err)) == (sqlstate, True), (sql, err.sqlstate, str(err))
        assert c.execute("SELECT 1").fetchone() == (1,)  # the session stays usable


def test_the_server_connection_is_read_only_with_the_agents_timeout(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("ivy")) as c:  # a transaction, as psycopg opens one
        assert c.execute("SHOW transaction_read_only").fetchone() == ("on",)
        assert c.execute("SHOW statement_timeout").fetchone() == ("7500ms",)
        c.rollback()
        with pytest.raises(psycopg.errors.Error) as info:
            c.execute("SET TRANSACTION READ WRITE")
        assert info.value.sqlstate == "25006"
        c.rollback()
        c.execute("RESET ALL")
        assert c.execute("SHOW default_transaction_read_only").fetchone() == ("on",)


def test_a_pinned_startup_setting_refuses_the_login(proxy: ProxyProcess) -> None:
    for params in ({"options": "-c default_transaction_read_only=off"}, {"options": "-c statement_timeout=0"}):
        with pytest.raises(psycopg.OperationalError, match=r"pinned by the agent profile \(rule agent_setting\)"):
            psycopg.connect(proxy.dsn("ivy", **params))


def test_an_ordinary_user_of_the_same_tenant_writes_on_its_own_servers(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("ivy"), autocommit=True) as agent, \
            psycopg.connect(proxy.dsn("ivan"), autocommit=True) as ivan:
        assert agent.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert ivan.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
        ivan.execute("INSERT INTO orders (id, amount) VALUES (9100, 1) ON CONFLICT (id) DO NOTHING")
        ivan.execute("DELETE FROM orders WHERE id = 9100")


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_limits_are_added_lowered_and_kept(proxy: ProxyProcess, prepare: bool) -> None:
    with psycopg.connect(proxy.dsn("ava"), autocommit=True) as c:
        def count(sql: str, params: tuple = ()) -> int:
            return len(c.execute(sql, params or None, prepare=prepare).fetchall())

        assert count("SELECT id FROM orders") == MAX_ROWS  # 200 rows of acme's
        assert count("SELECT id FROM orders ORDER BY id LIMIT 1000") == MAX_ROWS
        assert count("SELECT id FROM orders LIMIT ALL") == MAX_ROWS
        assert count("SELECT id FROM orders ORDER BY id LIMIT 2") == 2
        assert count("SELECT id FROM orders LIMIT %s", (3,)) == 3
        assert count("SELECT id FROM orders LIMIT %s", (300,)) == MAX_ROWS
        assert count("SELECT id FROM orders UNION ALL SELECT id FROM orders") == MAX_ROWS
        assert count("WITH o AS (SELECT id FROM orders) SELECT * FROM o") == MAX_ROWS
        assert count("SELECT id FROM orders FETCH FIRST 50 ROWS ONLY") == MAX_ROWS
        ids = [r[0] for r in c.execute("SELECT id FROM orders ORDER BY id DESC LIMIT 50", prepare=prepare)]
        assert ids == [299, 298, 296, 295, 293]  # the order survives the cap; acme's rows only
        assert c.execute("SELECT count(*) FROM orders").fetchone() == (200,)  # an aggregate counts every row


def test_a_cursor_is_capped(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("ava")) as c:
        c.execute("DECLARE cur CURSOR FOR SELECT id FROM orders")
        assert len(c.execute("FETCH ALL FROM cur").fetchall()) == MAX_ROWS


def test_asyncpg_is_capped_and_refused(proxy: ProxyProcess) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(proxy.url("ivy"))
        try:
            assert len(await conn.fetch("SELECT g FROM generate_series(1, 100) g")) == MAX_ROWS
            assert len(await conn.fetch("SELECT g FROM generate_series(1, 100) g LIMIT $1", 2)) == 2
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.execute("UPDATE orders SET amount = 0")
            assert info.value.sqlstate == "25006"
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.execute("DO $$BEGIN END$$")
            assert info.value.sqlstate == "42501"
            assert await conn.fetchval("SELECT 41 + 1") == 42
        finally:
            await conn.close()

    asyncio.run(run())
