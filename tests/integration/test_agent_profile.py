"""The agent profile (issue 18 point 3) through real clients: read-only at both locks, no read-write escape, DO and
the stricter function list refused, every query capped at agent.max_rows, through both protocols."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest
from psycopg import pq

from tests.support.jdbc import require_jdbc, run_jdbc
from tests.support.mcpclient import stdio_calls, text
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.proxyproc import ProxyProcess, prepare_backend

MAX_ROWS = 5
AGENTS = {"ava": ("acme", "ava-pw"), "ivy": ("initech", "ivy-pw")}  # shared strategy; database strategy (writes on)
SCHEMA_AGENT = {"gus": ("globex", "gus-pw")}  # schema strategy (the admission proxy only)
# An agent without admission limits and a 1 s statement_timeout of its own (no tenant limit): the watchdog's.
TIMED_AGENT = {"tim": ("acme", "tim-pw")}
TIMED_KEYS = {"profile": "agent", "agent.statement_timeout": 1.0, "agent.max_cost": 0.0,
              "agent.max_estimated_rows": 0.0}


@pytest.fixture(scope="module")
def proxy(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("pgtenant"), backend_sslmode="disable",
                     extra_users={**AGENTS, **TIMED_AGENT}, agent={"max_rows": MAX_ROWS, "statement_timeout": 7.5},
                     user_keys={**{name: {"profile": "agent"} for name in AGENTS}, "tim": TIMED_KEYS})
    p.start()
    yield p
    p.stop()


PROTOCOLS = ["simple", "extended", "prepared"]  # ClientCursor (Query messages); unnamed Parse; named Parse


def connect(proxy: ProxyProcess, user: str, protocol: str, autocommit: bool = True) -> psycopg.Connection:
    factory = psycopg.ClientCursor if protocol == "simple" else psycopg.Cursor
    return psycopg.connect(proxy.dsn(user), autocommit=autocommit, cursor_factory=factory,
                           prepare_threshold=0 if protocol == "prepared" else None)


def refused(conn: psycopg.Connection, sql: str) -> psycopg.errors.Error:
    with pytest.raises(psycopg.errors.Error) as info:
        conn.execute(sql)
    return info.value


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("user", sorted(AGENTS))
def test_writes_do_and_escapes_are_refused_with_their_rule(proxy: ProxyProcess, user: str, protocol: str) -> None:
    with connect(proxy, user, protocol) as c:
        cases = {
            "INSERT INTO orders (id, amount) VALUES (9001, 1)": ("25006", "read_only"),
            "DELETE FROM orders": ("25006", "read_only"),
            "DO $$BEGIN PERFORM 1; END$$": ("42501", "agent_statement"),
            "CREATE TEMP TABLE scratch (a int)": ("42501", "agent_statement"),
            "SET default_transaction_read_only = off": ("25006", "agent_setting"),
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE": ("25006", "agent_setting"),
            "BEGIN READ WRITE": ("25006", "agent_setting"),
            "SET statement_timeout = 0": ("25006", "agent_setting"),
            # a fraction of a unit PostgreSQL rounds to 0 s / 0 min / 0 h first: 0, no timeout (red team 9r F3)
            "SET statement_timeout = '0.00001 min'": ("25006", "agent_setting"),
            "SET statement_timeout = '0.000001h'": ("25006", "agent_setting"),
            "SET statement_timeout = '0.00000001d'": ("25006", "agent_setting"),
            "SET statement_timeout = '0.0005 h'": ("25006", "agent_setting"),
            "SET idle_in_transaction_session_timeout = 0": ("25006", "agent_setting"),
            "SET transaction_timeout = 0": ("25006", "agent_setting"),
            "SELECT set_config('transaction_read_only', 'off', false)": ("42501", "agent_function"),
            "SELECT pg_sleep(0)": ("42501", "agent_function"),
            # what would run a query without admission (red team 6 F2): refused outright
            "EXPLAIN (ANALYZE) SELECT count(*) FROM orders a, orders b": ("42501", "agent_statement"),
            "COPY (SELECT * FROM orders) TO STDOUT": ("25006", "read_only"),
            "PREPARE f2 AS SELECT count(*) FROM orders a, orders b": ("42501", "agent_statement"),
            "EXECUTE f2": ("42501", "agent_statement"),
        }
        for sql, (sqlstate, rule) in cases.items():
            err = refused(c, sql)
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
        c.execute("SET statement_timeout = '2s'")  # lower than the agent's: allowed (the MCP door sets its own)
        assert c.execute("SHOW statement_timeout").fetchone() == ("2s",)
        idle = c.execute("SHOW idle_in_transaction_session_timeout").fetchone()
        assert idle is not None and idle[0] != "0"  # the pool's own (config limits.idle_in_transaction_timeout)
        c.execute("RESET ALL")
        assert c.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert c.execute("SHOW statement_timeout").fetchone() == ("7500ms",)
        c.execute("RESET idle_in_transaction_session_timeout")  # (pinned: a RESET returns to the pool's own)
        assert c.execute("SHOW idle_in_transaction_session_timeout").fetchone() == idle


def _statement_timeouts(p: ProxyProcess) -> float:
    text = urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("pgtenant_limit_refusals_total{") and 'limit="statement_timeout"' in line)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_the_agents_statement_timeout_is_the_proxys_limit_too(proxy: ProxyProcess, protocol: str) -> None:
    """agent.statement_timeout is enforced by the proxy's watchdog as well as by the server's setting (a tenant
    without a statement_timeout limit of its own): the query past it is canceled, counted as a statement_timeout
    refusal, and the session goes on."""
    before = _statement_timeouts(proxy)
    with connect(proxy, "tim", protocol) as c:
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            c.execute("SELECT count(*) FROM generate_series(1, 2000000000)")
        assert c.execute("SELECT 1").fetchone() == (1,)
    until(lambda: _statement_timeouts(proxy) >= before + 1, timeout=10)


def test_a_pinned_startup_setting_refuses_the_login(proxy: ProxyProcess) -> None:
    for params in ({"options": "-c default_transaction_read_only=off"}, {"options": "-c statement_timeout=0"},
                   {"options": "-c idle_in_transaction_session_timeout=0"}):
        with pytest.raises(psycopg.OperationalError, match=r"pinned by the agent profile \(rule agent_setting\)"):
            psycopg.connect(proxy.dsn("ivy", **params))


def test_an_ordinary_user_of_the_same_tenant_writes_on_its_own_servers(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("ivy"), autocommit=True) as agent, \
            psycopg.connect(proxy.dsn("ivan"), autocommit=True) as ivan:
        assert agent.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert ivan.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
        ivan.execute("INSERT INTO orders (id, amount) VALUES (9100, 1) ON CONFLICT (id) DO NOTHING")
        ivan.execute("DELETE FROM orders WHERE id = 9100")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_limits_are_added_lowered_and_kept(proxy: ProxyProcess, protocol: str) -> None:
    with connect(proxy, "ava", protocol) as c:
        def count(sql: str, params: tuple = ()) -> int:
            return len(c.execute(sql, params or None).fetchall())

        assert count("SELECT id FROM orders") == MAX_ROWS  # 200 rows of acme's
        assert count("SELECT id FROM orders ORDER BY id LIMIT 1000") == MAX_ROWS
        assert count("SELECT id FROM orders LIMIT ALL") == MAX_ROWS
        assert count("SELECT id FROM orders ORDER BY id LIMIT 2") == 2
        assert count("SELECT id FROM orders LIMIT %s", (3,)) == 3
        assert count("SELECT id FROM orders LIMIT %s", (300,)) == MAX_ROWS
        assert count("SELECT id FROM orders UNION ALL SELECT id FROM orders") == MAX_ROWS
        assert count("WITH o AS (SELECT id FROM orders) SELECT * FROM o") == MAX_ROWS
        assert count("SELECT id FROM orders FETCH FIRST 50 ROWS ONLY") == MAX_ROWS
        ids = [r[0] for r in c.execute("SELECT id FROM orders ORDER BY id DESC LIMIT 50")]
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


# --- admission by the planner's estimate ---------------------------------------------------------------------------

ESTIMATED_ROWS = 1000  # agent.max_estimated_rows of the admission proxy
MAX_COST = 50_000.0


@pytest.fixture(scope="module")
def admitting(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    agents = {**AGENTS, **SCHEMA_AGENT}
    p = ProxyProcess(pg, tmp_path_factory.mktemp("pgtenant"), backend_sslmode="disable", extra_users=agents,
                     agent={"max_rows": MAX_ROWS, "max_estimated_rows": ESTIMATED_ROWS, "max_cost": MAX_COST},
                     user_keys={name: {"profile": "agent"} for name in agents}, audit={"enabled": True})
    p.start()
    yield p
    p.stop()


CROSS = "SELECT a.id, b.id FROM orders a CROSS JOIN orders b"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_expensive_plan_is_refused_with_the_estimate_and_how_to_narrow_it(admitting: ProxyProcess,
                                                                           protocol: str) -> None:
    with connect(admitting, "ivy", protocol) as c:
        err = refused(c, "SELECT g FROM generate_series(1, 10000000) g")
        assert err.sqlstate == "54000", err
        assert "(rule agent_estimate)" in str(err) and "10000000 rows" in str(err), str(err)
        assert f"agent.max_estimated_rows = {ESTIMATED_ROWS}" in str(err), str(err)
        assert "WHERE" in (err.diag.message_hint or ""), err.diag.message_hint
        err = refused(c, "SELECT count(*) FROM generate_series(1, 100000000) g")
        assert "cost at " in str(err) and f"agent.max_cost = {MAX_COST:g}" in str(err), str(err)
        small = "SELECT a, b FROM generate_series(1, 40) a CROSS JOIN generate_series(1, 20) b"  # 800 rows
        assert len(c.execute(small).fetchall()) == MAX_ROWS
        assert c.execute("SELECT count(*) FROM generate_series(1, 500) g").fetchone() == (500,)


def test_a_shared_tenants_refusal_does_not_show_the_estimate(admitting: ProxyProcess) -> None:
    with psycopg.connect(admitting.dsn("ava"), autocommit=True) as c:
        err = refused(c, "SELECT g FROM generate_series(1, 10000000) g")
        assert "(rule agent_estimate)" in str(err) and "returns more rows" in str(err), str(err)
        assert "10000000" not in str(err)
        err = refused(c, "SELECT count(*) FROM generate_series(1, 100000000) g")
        assert "estimates the statement's cost, above agent.max_cost" in str(err), str(err)
        assert len(c.execute(CROSS + " WHERE a.id = 1 AND b.id IN (2, 4)").fetchall()) == 2


def _admitted(c: psycopg.Connection, sql: str) -> bool:
    try:
        c.execute(sql).fetchall()
    except psycopg.errors.Error as exc:
        assert "(rule agent_estimate)" in str(exc), str(exc)
        return False
    return True


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_admission_bit_tells_nothing_of_other_tenants_tenant_ids(admitting: ProxyProcess, pg: PgCluster,
                                                                     protocol: str) -> None:
    """Red team 6 F7: the agent scales an estimate by a factor of its choosing (`generate_series(1, K)`), so the
    admit/refuse bit compares `estimate * K` with max_estimated_rows; with the tenant column's statistics (every
    tenant's rows: acme 200, bigco 100 of public.orders) `tenant_id >= 'b'` estimated bigco's share, and a bisection
    over K and the bound read the other tenants' ids and row counts. In the admission EXPLAIN the tenant column is
    acme's own value: every bound above 'acme' gets the same answer at every K, whatever other tenants hold."""
    pg.execute("ANALYZE public.orders", dbname="saas")  # (the statistics the probe reads; autovacuum may not have run)
    probe = "SELECT 1 FROM orders o, generate_series(1, {k}) g WHERE o.tenant_id >= '{bound}'"
    with connect(admitting, "ava", protocol) as c:
        for k in (1, 10, 100, 1000, 10**6):
            verdicts = {bound: _admitted(c, probe.format(k=k, bound=bound)) for bound in ("b", "bigco", "c", "zzz")}
            assert set(verdicts.values()) == {True}, (k, verdicts)  # ('acme' >= bound: false, no rows expected)
        assert _admitted(c, probe.format(k=1, bound="a"))  # acme's own 200 rows (capped at the agent's LIMIT)
        assert not _admitted(c, probe.format(k=100, bound="a"))  # 200 * 100 > max_estimated_rows
        # what runs is the client's statement: the tenant column as stored
        assert c.execute("SELECT count(*) FROM orders WHERE tenant_id >= 'a'").fetchone() == (200,)
        assert c.execute("SELECT count(*) FROM orders WHERE tenant_id >= 'b'").fetchone() == (0,)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_query_over_a_catalog_goes_without_its_estimate(admitting: ProxyProcess, protocol: str) -> None:
    """Red team 6 F5: a schema tenant's refusal showed the estimate, and one over a catalog (times a known factor)
    counted other tenants' relations per schema OID; red team 9a7 H4: the admit/refuse bit itself followed that
    estimate. A query over a catalog filtered for the tenant is not admitted by its estimate (its statement_timeout
    and the row cap bound it); one over the tenant's own relations still is, and its refusal shows the value."""
    with connect(admitting, "gus", protocol) as c:
        for where in ("c.relnamespace = 2200", "c.relname = 'orders'", "c.relname = 'zzz_none'"):
            rows = c.execute("SELECT 1 FROM pg_class c, generate_series(1, 1000) g, "
                             f"(SELECT 1 FROM orders LIMIT 1) o WHERE {where}").fetchall()
            assert len(rows) <= MAX_ROWS, rows
        err = refused(c, "SELECT g FROM generate_series(1, 10000000) g, (SELECT 1 FROM orders LIMIT 1) o")
        assert "returns 10000000 rows" in str(err), str(err)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_parameters_are_admitted_by_their_real_estimate(admitting: ProxyProcess, protocol: str) -> None:
    with connect(admitting, "ivy", protocol) as c:
        sql = "SELECT g FROM generate_series(1, %s::int) g"
        assert len(c.execute(sql, (10,)).fetchall()) == MAX_ROWS
        with pytest.raises(psycopg.errors.Error) as info:
            c.execute(sql, (5_000_000,))
        err = info.value
        assert "5000000 rows" in str(err), str(err)
        assert len(c.execute(sql, (900,)).fetchall()) == MAX_ROWS  # the same statement again


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_failing_statement_gets_its_own_error_and_the_session_goes_on(admitting: ProxyProcess,
                                                                       protocol: str) -> None:
    with connect(admitting, "ivy", protocol, autocommit=False) as c:
        for _ in range(2):
            with pytest.raises(psycopg.errors.UndefinedColumn) as info:
                c.execute("SELECT nope FROM orders WHERE id = %s", (1,))
            assert 'column "nope" does not exist' in str(info.value)
            c.rollback()
        c.execute("SELECT 1")
        err = refused(c, "SELECT g FROM generate_series(1, 10000000) g")
        assert err.sqlstate == "54000"
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):  # refused inside a transaction: it failed, as
            c.execute("SELECT 1")                                   # PostgreSQL's own error would leave it
        c.rollback()
        assert c.execute("SELECT count(*) FROM orders").fetchone() == (7,)


def test_asyncpg_parameters_are_admitted(admitting: ProxyProcess) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(admitting.url("ivy"))
        try:
            sql = "SELECT g FROM generate_series(1, $1::int) g"
            assert len(await conn.fetch(sql, 20)) == MAX_ROWS
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.fetch(sql, 20_000_000)
            assert info.value.sqlstate == "54000" and "agent_estimate" in str(info.value)
            assert len(await conn.fetch(sql, 30)) == MAX_ROWS
            with pytest.raises(asyncpg.UndefinedColumnError):
                await conn.fetch("SELECT nope FROM orders WHERE id = $1", 1)
            assert await conn.fetchval("SELECT count(*) FROM orders WHERE id > $1", 2) == 5
        finally:
            await conn.close()

    asyncio.run(run())


def test_admissions_are_audited(admitting: ProxyProcess) -> None:
    with psycopg.connect(admitting.dsn("ivy"), autocommit=True) as c:
        c.execute("SELECT id FROM orders WHERE id = 3 /* audited */").fetchall()
    lines = [json.loads(line) for line in admitting.log_path.read_text().splitlines()
             if '"agent_admission"' in line and "audited" in line]
    assert lines, "no agent_admission audit line"
    line = lines[-1]
    assert line["outcome"] == "admitted" and line["applied_limit"] == MAX_ROWS, line
    assert line["estimated_rows"] == 1.0 and line["estimated_cost"] > 0 and line["explain_ms"] >= 0, line


# Red team 6 F2: queries with no table of the tenant's that ran unbounded, never admitted.
UNBOUNDED = {
    "target_list_srf": "SELECT count(*) FROM (SELECT generate_series(1, 10000000000)) s",
    "catalog_cross_join": "SELECT count(*) FROM pg_attribute a, pg_attribute b, pg_attribute c",
    "values_cross_join": "SELECT count(*) FROM {v} a, {v} b, {v} c".format(
        v="(VALUES " + ", ".join(f"({i})" for i in range(300)) + ")"),
    "catalog_subquery": "SELECT (SELECT count(*) FROM pg_attribute a, pg_attribute b) FROM pg_namespace",
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("form", sorted(UNBOUNDED))
def test_unbounded_queries_without_tables_are_admitted(admitting: ProxyProcess, form: str, protocol: str) -> None:
    with connect(admitting, "ivy", protocol) as c:
        err = refused(c, UNBOUNDED[form] + f" /* {form} */")
        assert err.sqlstate == "54000" and "(rule agent_estimate)" in str(err), str(err)
        c.autocommit = False  # a cursor's query too
        with pytest.raises(psycopg.errors.Error) as info:
            c.execute(f"DECLARE f2 CURSOR FOR {UNBOUNDED[form]}")
        assert info.value.sqlstate == "54000", info.value
        c.rollback()
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_a_recursive_cte_and_function_calls_go_through_admission(admitting: ProxyProcess) -> None:
    """A recursive CTE, a catalog join and a function call are judged by their plan (one agent_admission line each);
    a plain catalog lookup is not (no EXPLAIN round trip)."""
    with psycopg.connect(admitting.dsn("ivy"), autocommit=True) as c:
        assert c.execute("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
                         "SELECT count(*) FROM r /* f2-recursive */").fetchone() == (3,)
        assert c.execute("SELECT length(repeat('x', 10)) /* f2-function */").fetchone() == (10,)
        assert c.execute("SELECT count(*) > 0 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                         "/* f2-catalog-join */").fetchone() == (True,)
        assert c.execute("SELECT typname FROM pg_type WHERE oid = 23 /* f2-lookup */").fetchone() == ("int4",)
    admitted = {tag for line in admitting.log_path.read_text().splitlines() if '"agent_admission"' in line
                for tag in ("f2-recursive", "f2-function", "f2-catalog-join", "f2-lookup") if tag in line}
    assert admitted == {"f2-recursive", "f2-function", "f2-catalog-join"}


def test_a_cursor_of_an_agent_is_admitted_in_its_transaction(admitting: ProxyProcess) -> None:
    with psycopg.connect(admitting.dsn("ivy")) as c:
        c.execute("DECLARE small CURSOR FOR SELECT g FROM generate_series(1, 50) g")
        assert len(c.execute("FETCH ALL FROM small").fetchall()) == MAX_ROWS
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            c.execute("DECLARE big CURSOR FOR SELECT g FROM generate_series(1, 10000000) g")


def test_the_mcp_door_logs_in_as_an_agent(admitting: ProxyProcess) -> None:
    listed, capped, expensive, write, escape, count, plan = stdio_calls(admitting.dsn("ivy"), [
        ("list_tables", {}),
        ("query", {"sql": "SELECT g FROM generate_series(1, 100) g"}),
        ("query", {"sql": "SELECT g FROM generate_series(1, 10000000) g"}),
        ("query", {"sql": "DELETE FROM orders"}),
        ("query", {"sql": "SET default_transaction_read_only = off"}),
        ("query", {"sql": "SELECT count(*) FROM orders"}),
        ("explain", {"sql": "SELECT * FROM orders WHERE id = 3"}),  # (ANALYZE false: red team 9r F11)
    ])
    assert not listed.is_error and "orders" in text(listed)
    assert not capped.is_error and capped.structured_content is not None
    assert len(capped.structured_content["rows"]) == MAX_ROWS
    assert expensive.is_error and "54000" in text(expensive) and "agent_estimate" in text(expensive), text(expensive)
    assert write.is_error and "25006" in text(write), text(write)
    assert escape.is_error and "agent_setting" in text(escape), text(escape)
    assert not count.is_error and count.structured_content is not None
    assert count.structured_content["rows"] == [[7]]
    assert not plan.is_error and plan.structured_content is not None, text(plan)
    assert "Scan" in plan.structured_content["plan"]


def test_pgjdbc_through_the_agent_profile(admitting: ProxyProcess) -> None:
    require_jdbc()
    url = admitting.jdbc_url("ivy", sslmode="disable")
    fetched = run_jdbc(url, "ivy", admitting.password("ivy"), "fetchsize", 1000, 2)
    assert (fetched["count"], fetched["sum"]) == (MAX_ROWS, 15)  # a named portal read in batches: capped
    sql = "SELECT g FROM generate_series(1, ?::int) g"
    # pgJDBC's unnamed statement for the first executions, its named S_n from the fifth on (prepareThreshold)
    steps = run_jdbc(url, "ivy", admitting.password("ivy"), "script",
                     *[f"{sql}|||{n}" for n in (10, 20, 5_000_000, 30, 40, 50, 9_000_000, 60)])
    outcomes = [step.get("sqlstate") or len(step["results"][0]["rows"]) for step in steps]
    assert outcomes == [MAX_ROWS, MAX_ROWS, "54000", MAX_ROWS, MAX_ROWS, MAX_ROWS, "54000", MAX_ROWS], steps


def _admitting_pooled(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, mode: str) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("pgtenant"), backend_sslmode="disable", extra_users=AGENTS,
                     agent={"max_rows": MAX_ROWS, "max_estimated_rows": ESTIMATED_ROWS, "max_cost": MAX_COST},
                     user_keys={name: {"profile": "agent"} for name in AGENTS},
                     pool={"pool_mode": mode, "pool_size": 1})
    p.start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def admitting_in_transactions(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    yield from _admitting_pooled(pg, tmp_path_factory, "transaction")


@pytest.fixture(scope="module")
def admitting_in_sessions(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    yield from _admitting_pooled(pg, tmp_path_factory, "session")


def test_a_parse_of_a_name_in_use_keeps_the_old_statements_admission(admitting_in_transactions: ProxyProcess) -> None:
    """Red team round 6 F8 (a): PostgreSQL refuses the second Parse (42P05) and keeps the expensive statement; its
    Binds are still admitted by their estimate (not forgotten as the refused cheap text would need no admission).
    In transaction pooling the statement maps answer it."""
    _parse_of_a_name_in_use(admitting_in_transactions)


def test_a_parse_of_a_name_in_use_keeps_the_old_statements_admission_in_session_pooling(
        admitting_in_sessions: ProxyProcess) -> None:
    """... and in session pooling, where the client's names reach the server, the names it has
    (proxy/stmtnames.py)."""
    _parse_of_a_name_in_use(admitting_in_sessions)


def _parse_of_a_name_in_use(proxy: ProxyProcess) -> None:
    c = pq.PGconn.connect(proxy.dsn("ivy").encode())
    try:
        expensive = b"SELECT g FROM generate_series(1, $1::int) g"
        assert c.prepare(b"s1", expensive).status == pq.ExecStatus.COMMAND_OK
        for _ in range(2):
            refusal = c.exec_prepared(b"s1", [b"10000000"])
            assert refusal.error_field(pq.DiagnosticField.SQLSTATE) == b"54000", refusal.error_message
            assert b"agent_estimate" in refusal.error_message
            duplicate = c.prepare(b"s1", b"SELECT $1::int AS x")
            assert duplicate.error_field(pq.DiagnosticField.SQLSTATE) == b"42P05", duplicate.error_message
        assert c.exec_prepared(b"s1", [b"3"]).ntuples == 3  # the old statement, admitted
    finally:
        c.finish()


HUGE_PLAN = "SELECT g FROM generate_series(1, 3) g WHERE g::text = repeat('x', 5000000)"  # its plan quotes 5 MB
HUGE_ERROR = "SELECT repeat('x', 5000000)::int"  # fails as it is planned, its error quoting the 5 MB value
HUGE_LITERAL = "SELECT g FROM generate_series(1, 3) g WHERE g::text = '" + "x" * 5_000_000 + "'"  # a 5 MB text


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_statement_whose_plan_is_huge_is_refused_unread(admitting_in_transactions: ProxyProcess,
                                                          admitting_in_sessions: ProxyProcess, mode: str,
                                                          protocol: str) -> None:
    """Red team 9a8 N0: the admission EXPLAIN's answer quoting a 100 MB folded literal was held whole and re-joined on
    every read (CPU quadratic in its size, every tenant waiting). A plan or error past admission.MAX_ANSWER is
    dropped as it arrives and the statement refused (54000); the session and the others go on."""
    proxy = admitting_in_transactions if mode == "transaction" else admitting_in_sessions
    with connect(proxy, "ivy", protocol) as c, psycopg.connect(proxy.dsn("alice"), autocommit=True) as other:
        for sql in (HUGE_PLAN, HUGE_ERROR, HUGE_LITERAL):
            err = refused(c, sql)
            assert err.sqlstate == "54000" and "too large to admit" in str(err), str(err)[:300]
            assert other.execute("SELECT 1").fetchone() == (1,)
        assert c.execute("SELECT g FROM generate_series(1, 3) g WHERE g::text = repeat('x', 10)").fetchall() == []
        assert len(c.execute("SELECT g FROM generate_series(1, 3) g").fetchall()) == 3


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_statement_failing_as_it_is_planned_leaves_no_admission_statement(admitting_in_transactions: ProxyProcess,
                                                                             admitting_in_sessions: ProxyProcess,
                                                                             mode: str, protocol: str) -> None:
    """The admission EXPLAIN of a Bind failing at its Execute skipped its Closes: its pgt_admission statement stayed
    on the server and every later Bind's admission failed 42P05 (in transaction pooling, any agent's on that
    server)."""
    proxy = admitting_in_transactions if mode == "transaction" else admitting_in_sessions
    with connect(proxy, "ivy", protocol) as c:
        for _ in range(2):
            with pytest.raises(psycopg.errors.InvalidTextRepresentation):
                c.execute("SELECT repeat('x', 5)::int")
            assert c.execute("SELECT g FROM generate_series(1, 3) g").fetchall() == [(1,), (2,), (3,)]
