"""Plans that count rows the tenant cannot see (red team 9a7 H2, H3, H4, H8): an agent's admission refusal, a database
tenant's references to the shared tenants' tables, EXPLAIN over filtered system catalogs; both pool modes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import ProxyProcess, dan_proxy, started_per_mode

MODES = ("transaction", "session")
BOTS = {"danbot": ("hooli", "danbot-pw"), "alicebot": ("acme", "alicebot-pw")}
MAX_ESTIMATED_ROWS = 50
# login user -> database (dan: database tenant sharing saas; gina: schema; ivan: database tenant alone in initech)
DATABASES = {"alice": "saas", "dan": "saas", "gina": "saas", "ivan": "initech", "danbot": "saas", "alicebot": "saas"}


@pytest.fixture(scope="module")
def proxies(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ProxyProcess]]:
    yield from started_per_mode(lambda mode: dan_proxy(
        pg, tmp_path_factory.mktemp(f"shapes-{mode}"), extra_users=BOTS, pool={"pool_mode": mode},
        agent={"max_rows": 5, "max_estimated_rows": MAX_ESTIMATED_ROWS, "max_cost": 0.0},
        user_keys={name: {"profile": "agent"} for name in BOTS}), MODES)


def _connect(proxy: ProxyProcess, user: str) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(user, dbname=DATABASES[user]), autocommit=True,
                           cursor_factory=psycopg.ClientCursor)


def _refused(conn: psycopg.Connection[Any], sql: str) -> psycopg.errors.Error:
    with pytest.raises(psycopg.errors.Error) as info:
        conn.execute(sql)
    return info.value


@pytest.mark.parametrize("mode", MODES)
def test_an_agent_of_a_database_tenant_sharing_its_database_is_refused_without_the_estimate(
        proxies: dict[str, ProxyProcess], mode: str) -> None:
    """Red team 9a7 H2: danbot (agent profile of dan's tenant) read the planner's estimate in the admission refusal
    ("returns 100 rows" for bigco's rows of public.orders, "1000" for a series). The estimates of a tenant whose
    database others share count their rows: its refusals leave the value out, as alicebot's (shared) do."""
    sql = "SELECT g FROM generate_series(1, 1000) g"
    for user in ("danbot", "alicebot"):
        with _connect(proxies[mode], user) as conn:
            err = _refused(conn, sql)
            assert err.sqlstate == "54000" and "agent_estimate" in str(err), (user, err)
            assert "returns more rows" in str(err) and "1000" not in str(err), (user, err)
    with _connect(proxies[mode], "danbot") as conn:  # (H3 below: the shared tenants' table is not his to name)
        err = _refused(conn, "SELECT id FROM public.orders WHERE tenant_id = 'bigco'")
        assert err.sqlstate == "42501" and "others_table" in str(err) and "100" not in str(err), err


OTHERS_TABLE = (
    "SELECT count(*) FROM public.orders",
    "SELECT * FROM orders WHERE tenant_id = 'bigco'",  # unqualified, through the search_path
    "EXPLAIN SELECT * FROM public.orders o JOIN generate_series(1, 113) g(i) ON o.amount = g.i "
    "WHERE o.tenant_id = 'bigco'",
    "EXPLAIN SELECT * FROM public.orders o WHERE o.tenant_id = 'acme' ORDER BY id LIMIT 17",
    "SELECT 1 WHERE EXISTS (SELECT 1 FROM public.orders)",
    "WITH o AS (SELECT * FROM public.orders) SELECT count(*) FROM o",
    "COPY (SELECT id FROM public.orders) TO STDOUT",
    "SELECT count(*) FROM public.orders TABLESAMPLE SYSTEM (50)",
)


@pytest.mark.parametrize("mode", MODES)
def test_a_database_tenant_sharing_its_database_cannot_name_the_shared_tenants_tables(
        proxies: dict[str, ProxyProcess], pg: PgCluster, mode: str) -> None:
    """Red team 9a7 H3: dan read no rows of public.orders (forced RLS) but his plans over it (COSTS OFF) took their
    shape from the shared tenants' statistics: the hash side flipped at 113 for bigco's 100 rows, at 9 for a missing
    id. A reference to a shared tenant's scoped table is refused for him (42501 others_table); alice's are not."""
    pg.execute("ANALYZE public.orders", dbname="saas")
    with _connect(proxies[mode], "dan") as conn:
        for sql in OTHERS_TABLE:
            err = _refused(conn, sql)
            assert err.sqlstate == "42501" and "others_table" in str(err), (sql, err)
        assert conn.execute("SELECT 41 + 1").fetchall() == [(42,)]
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'orders'").fetchall() == [(1,)]
    with _connect(proxies[mode], "alice") as conn:
        assert conn.execute("SELECT count(*) FROM public.orders").fetchall() == [(200,)]


# Each tenant hides something (other schemas or tenants' objects; pg_database's other databases), so EXPLAIN over a
# catalog it filters is refused. ivan (alone in initech, no hidden schema) keeps EXPLAIN over his database's pg_class.
CATALOG_EXPLAINS = {
    "alice": ("EXPLAIN SELECT oid FROM pg_catalog.pg_class WHERE relname >= 'zz_s' AND relname < 'zz_t'",
              "EXPLAIN (FORMAT JSON) SELECT relname FROM pg_class WHERE relname >= 'zz_s'"),
    "dan": ("EXPLAIN SELECT oid FROM pg_catalog.pg_class WHERE relname >= 'zz_s' AND relname < 'zz_t'",
            "EXPLAIN SELECT * FROM information_schema.tables"),
    "gina": ("EXPLAIN SELECT oid FROM pg_catalog.pg_class WHERE relname >= 'zz_s' AND relname < 'zz_t'",
             "EXPLAIN SELECT nspname FROM pg_namespace"),
    "ivan": (),
}
EVERYONE = ("EXPLAIN SELECT datname FROM pg_database WHERE datname >= 'zz_a' AND datname < 'zz_b'",
            "EXPLAIN SELECT d.datname FROM pg_catalog.pg_database d "
            "JOIN generate_series(1, 7) g(i) ON d.oid::int = g.i",
            "EXPLAIN SELECT rolname FROM pg_roles")


@pytest.mark.parametrize("user", sorted(CATALOG_EXPLAINS))
@pytest.mark.parametrize("mode", MODES)
def test_explain_over_a_filtered_catalog_is_refused(proxies: dict[str, ProxyProcess], mode: str, user: str) -> None:
    """Red team 9a7 H4/H8: the scan node chosen for `EXPLAIN SELECT oid FROM pg_class WHERE relname >= lo AND < hi`
    (Index Scan vs Bitmap/Seq Scan) followed the hidden relations' names (a bit per EXPLAIN, bisecting a prefix);
    the database count moved a plan over the filtered pg_database. EXPLAIN of a statement reading a catalog the
    proxy filters for the tenant, a temporary view or EXECUTE is refused (42501 explain_catalog); the catalog
    itself can still be queried."""
    with _connect(proxies[mode], user) as conn:
        conn.execute("CREATE TEMP VIEW vc AS SELECT oid, relname FROM pg_catalog.pg_class")
        conn.execute("PREPARE p AS SELECT relname FROM pg_catalog.pg_class")
        opaque = () if user == "ivan" else ("EXPLAIN EXECUTE p",)  # (ivan: his pg_class, below)
        for sql in (*CATALOG_EXPLAINS[user], *EVERYONE, "EXPLAIN SELECT * FROM vc", *opaque):
            err = _refused(conn, sql)
            assert err.sqlstate == "42501" and "explain_catalog" in str(err), (user, sql, err)
        assert conn.execute("SELECT count(*) FROM pg_database").fetchall() == [(1,)]
        assert conn.execute("SELECT count(*) > 0 FROM vc").fetchall() == [(True,)]
        assert conn.execute("EXPLAIN SELECT 1").fetchall()
        if user == "ivan":  # his own database's catalog: the plan is his (COSTS OFF, as before)
            for sql in ("EXPLAIN SELECT oid FROM pg_class WHERE relname >= 'zz_s'", "EXPLAIN EXECUTE p"):
                plan = conn.execute(sql).fetchall()
                assert plan and not any("cost=" in row[0] for row in plan), plan


# A statement of the tenant's own tables (or none) per user: its plan is the tenant's to see.
OWN_STATEMENTS = {"alice": "SELECT count(*) FROM orders", "dan": "SELECT g FROM generate_series(1, 3) g",
                  "gina": "SELECT count(*) FROM orders", "ivan": "SELECT count(*) FROM orders"}


@pytest.mark.parametrize("user", sorted(OWN_STATEMENTS))
@pytest.mark.parametrize("mode", MODES)
def test_explain_execute_shows_a_statement_prepared_over_the_tenants_own_tables(
        proxies: dict[str, ProxyProcess], mode: str, user: str) -> None:
    """wp-9a7b left EXPLAIN EXECUTE refused for every tenant (42501 explain_catalog: the prepared statement was not
    looked through). The session now keeps, per SQL prepared statement, whether its PREPARE was decided without
    reading a catalog the proxy filters, a temporary view or an object guard's catalog: EXPLAIN EXECUTE of such a
    statement shows its plan (COSTS OFF, as EXPLAIN of its text), of another one stays refused, and so does a name
    prepared again over a catalog, deallocated or never prepared with SQL (a protocol-level statement may bear it)."""
    own = OWN_STATEMENTS[user]
    with _connect(proxies[mode], user) as conn:
        conn.execute(f"PREPARE mine AS {own}")
        conn.execute("PREPARE cat AS SELECT d.datname FROM pg_catalog.pg_database d")  # filtered for every tenant
        plan = conn.execute("EXPLAIN EXECUTE mine").fetchall()
        assert plan and not any("cost=" in row[0] or "rows=" in row[0] for row in plan), (user, plan)
        assert conn.execute("EXECUTE mine").fetchall()
        for sql in ("EXPLAIN EXECUTE cat", "EXPLAIN EXECUTE nosuch", "EXPLAIN ANALYZE EXECUTE mine"):
            err = _refused(conn, sql)
            assert err.sqlstate == "42501", (user, sql, err)
        conn.execute("DEALLOCATE mine")
        err = _refused(conn, "EXPLAIN EXECUTE mine")
        assert err.sqlstate == "42501" and "explain_catalog" in str(err), (user, err)
        conn.execute("PREPARE mine AS SELECT d.datname FROM pg_catalog.pg_database d")
        err = _refused(conn, "EXPLAIN EXECUTE mine")
        assert err.sqlstate == "42501" and "explain_catalog" in str(err), (user, err)
        conn.execute("DEALLOCATE ALL")
        conn.execute(f"PREPARE mine AS {own}")
        assert conn.execute("EXPLAIN EXECUTE mine").fetchall()
        # a rollback leaves SQL prepared statements as they are: here the one over pg_database
        conn.execute("BEGIN")
        conn.execute("DEALLOCATE mine")
        conn.execute("PREPARE mine AS SELECT d.datname FROM pg_catalog.pg_database d")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        conn.execute("ROLLBACK")
        err = _refused(conn, "EXPLAIN EXECUTE mine")
        assert err.sqlstate == "42501" and "explain_catalog" in str(err), (user, err)
        assert conn.execute("EXECUTE mine").fetchall()


@pytest.mark.parametrize("user", sorted(BOTS))
@pytest.mark.parametrize("mode", MODES)
def test_an_agents_query_over_filtered_catalogs_is_admitted_without_its_estimate(
        proxies: dict[str, ProxyProcess], mode: str, user: str) -> None:
    """Red team 9a7 H4/H8, the agent side: an agent's query over the filtered catalogs was admitted or refused by
    the planner's estimate of them (every tenant's objects: a bit per statement). It runs without its EXPLAIN now,
    bounded by its statement_timeout and the agent's row cap (5 rows here; each estimate is above the limit of 50,
    which refused them before). A query over no catalog is still admitted by its estimate."""
    with _connect(proxies[mode], user) as conn:
        for sql in ("SELECT c.relname FROM pg_catalog.pg_class c, generate_series(1, 1000) g",
                    "SELECT d.datname FROM pg_catalog.pg_database d, generate_series(1, 1000) g",
                    "SELECT c.relname, n.nspname FROM pg_catalog.pg_class c "
                    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"):
            rows = conn.execute(sql).fetchall()
            assert len(rows) == 5, (sql, rows)
        err = _refused(conn, "SELECT g FROM generate_series(1, 1000) g")
        assert err.sqlstate == "54000" and "agent_estimate" in str(err), err


# Naming functions the proxy rewrites into guarded forms: each guard is a subquery of pg_class (pg_roles…) filtered for
# the tenant, which the statement as written does not name.
GUARDED_EXPLAINS = ("EXPLAIN SELECT obj_description(g::oid, 'pg_class') FROM generate_series(1, 3) g",
                    "EXPLAIN (COSTS OFF) SELECT col_description(g::oid, 1) FROM generate_series(1, 3) g",
                    "EXPLAIN SELECT pg_get_indexdef(g::oid) FROM generate_series(1, 3) g")


@pytest.mark.parametrize("user", ("alice", "dan", "gina"))
@pytest.mark.parametrize("mode", MODES)
def test_explain_through_a_guarded_naming_function_is_refused(
        proxies: dict[str, ProxyProcess], mode: str, user: str) -> None:
    """Red team 9a8 N5: `EXPLAIN SELECT obj_description(g::oid, 'pg_class') FROM generate_series(1,3) g` (and
    col_description, pg_get_indexdef) was answered with costs: the proxy's guard adds a subplan over the filtered
    pg_class, whose costs moved with other tenants' object count. A statement whose rewrite adds such a guard counts
    as reading a filtered catalog: EXPLAIN is refused (42501 explain_catalog); the query itself still runs. ivan
    (alone in his database, nothing hidden) gets no guard and keeps the EXPLAIN."""
    with _connect(proxies[mode], user) as conn:
        for sql in GUARDED_EXPLAINS:
            err = _refused(conn, sql)
            assert err.sqlstate == "42501" and "explain_catalog" in str(err), (user, sql, err)
        rows = conn.execute(GUARDED_EXPLAINS[0].removeprefix("EXPLAIN ")).fetchall()
        assert len(rows) == 3, rows
    with _connect(proxies[mode], "ivan") as conn:
        assert conn.execute(GUARDED_EXPLAINS[0]).fetchall()


@pytest.mark.parametrize("user", sorted(BOTS))
@pytest.mark.parametrize("mode", MODES)
def test_an_agents_query_through_a_guarded_naming_function_is_admitted_without_its_estimate(
        proxies: dict[str, ProxyProcess], mode: str, user: str) -> None:
    """Red team 9a8 N5, the agent side: the admission EXPLAINed the rewritten statement, whose guard subplan over the
    filtered pg_class follows other tenants' objects. It runs without its EXPLAIN now (5 rows: the agent's cap; the
    estimate of 1,000 rows, above the limit of 50, refused it before)."""
    with _connect(proxies[mode], user) as conn:
        rows = conn.execute("SELECT obj_description(g::oid, 'pg_class') FROM generate_series(1, 1000) g").fetchall()
        assert len(rows) == 5, rows


# set_config() of search_path where PostgreSQL may not run it: an empty FROM, WHERE false, LIMIT 0, an untaken CASE
# branch, an argument coalesce() never reaches.
UNRUN_SET_CONFIGS = (
    "SELECT set_config('search_path', 'pg_catalog', false) FROM pg_class WHERE false",
    "SELECT set_config('search_path', 'pg_catalog', false) WHERE false",
    "SELECT set_config('search_path', 'pg_catalog', false) LIMIT 0",
    "SELECT CASE WHEN false THEN set_config('search_path', 'pg_catalog', false) END",
    "SELECT coalesce('x', set_config('search_path', 'pg_catalog', false))",
)


@pytest.mark.parametrize("mode", MODES)
def test_a_set_config_of_search_path_postgresql_does_not_run_is_refused(
        proxies: dict[str, ProxyProcess], mode: str) -> None:
    """Red team 9a8 N6: `SELECT set_config('search_path', 'pg_catalog', false) FROM pg_class WHERE false` returned no
    row and PostgreSQL's search_path stayed `"$user", public`, but the proxy tracked pg_catalog: dan's next `SELECT *
    FROM orders` (public.orders, the shared tenants' table) was no longer refused as others_table. A set_config() of
    search_path is accepted only alone in a SELECT list; elsewhere it is refused (0A000 search_path_set_config), and
    the proxy's search_path stays PostgreSQL's."""
    with _connect(proxies[mode], "dan") as conn:
        before = conn.execute("SHOW search_path").fetchall()
        for sql in UNRUN_SET_CONFIGS:
            err = _refused(conn, sql)
            assert err.sqlstate == "0A000" and "search_path_set_config" in str(err), (sql, err)
            err = _refused(conn, "SELECT * FROM orders")
            assert err.sqlstate == "42501" and "others_table" in str(err), (sql, err)
        assert conn.execute("SHOW search_path").fetchall() == before
        assert conn.execute("SELECT set_config('search_path', 'pg_catalog', false)").fetchall() == [("pg_catalog",)]
        assert conn.execute("SHOW search_path").fetchall() == [("pg_catalog",)]


# set_config() of search_path beside a set-returning call: PostgreSQL runs it once per row.
PER_ROW_SET_CONFIGS = (
    "SELECT generate_series(1, 2), set_config('search_path', 'pg_catalog', false)",
    "SELECT set_config('search_path', 'pg_catalog', false), unnest(ARRAY[1, 2])",
)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_set_config_of_search_path_beside_a_set_returning_call_is_refused(
        proxies: dict[str, ProxyProcess], mode: str, protocol: str) -> None:
    """Red team 20a F3: `SELECT generate_series(1, 2), set_config('search_path', …)` bound to a portal, Executed for
    one row, a followed `SET search_path`, then the suspended portal's next Execute: PostgreSQL ran set_config again
    for row 2 and the path moved unseen (other tenants' function names through an unqualified `routines`). It is
    refused (0A000 search_path_set_config) in either protocol, and the session's path stays PostgreSQL's."""
    with _connect(proxies[mode], "dan") as conn:
        before = conn.execute("SHOW search_path").fetchall()
        for sql in PER_ROW_SET_CONFIGS:
            with pytest.raises(psycopg.errors.Error) as info:
                if protocol == "extended":  # Parse/Bind/Execute (the connection's ClientCursor sends a Query)
                    psycopg.Cursor(conn).execute(sql, prepare=True)
                else:
                    conn.execute(sql)
            err = info.value
            assert err.sqlstate == "0A000" and "search_path_set_config" in str(err), (sql, err)
        assert conn.execute("SHOW search_path").fetchall() == before
        assert conn.execute("SELECT 1 AS one, set_config('search_path', 'pg_catalog', false)").fetchall() == [
            (1, "pg_catalog")]


# Red team 9a8 N1: the schema holding 200 relations named in the tenant's range, hidden from it.
HIDDEN_IN = {"alice": "globex", "dan": "globex", "gina": "othert"}
NAME_RANGE = "c.relname >= 'zz_se' AND c.relname < 'zz_sf'"
ORDER_READS = (
    # r30: an Index Scan of the range returns the tenant's two rows in name order, a Seq/Bitmap scan physically
    f"SELECT c.relname FROM pg_catalog.pg_class c WHERE {NAME_RANGE}",
    f"SELECT c.relname FROM pg_catalog.pg_class c JOIN generate_series(1, 10) g(i) ON c.relnatts = g.i "
    f"WHERE {NAME_RANGE}",
    # fenced before too (a cast of a column): only the join's estimate of the range moves the plan (a hash join
    # probing the series returns the rows in relnatts order, one probing the catalog in its scan's order)
    f"SELECT c.relname FROM pg_catalog.pg_class c JOIN generate_series(1, 1000) g(i) ON c.relnatts = g.i "
    f"WHERE {NAME_RANGE} AND c.relname::text <> ''",
    f"SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
    f"WHERE {NAME_RANGE} AND a.attnum = 1",
    # a view: its columns' statistics are pg_class's
    "SELECT t.tablename FROM pg_catalog.pg_tables t JOIN generate_series(1, 100) g(i) ON length(t.tablename) = g.i "
    "WHERE t.tablename >= 'zz_se' AND t.tablename < 'zz_sf'",
)


def _vacuumed(pg: PgCluster) -> None:
    """pg_class and pg_attribute without dead rows and freshly analysed (their size the same in both phases)."""
    for catalog in ("pg_class", "pg_attribute"):
        pg.execute(f"VACUUM ANALYZE pg_catalog.{catalog}", dbname="saas")


def _orders(conn: psycopg.Connection[Any]) -> list[list[str]]:
    return [[row[0] for row in conn.execute(sql).fetchall()] for sql in ORDER_READS]


@pytest.mark.parametrize("user", sorted(HIDDEN_IN))
@pytest.mark.parametrize("mode", MODES)
def test_the_plan_of_a_filtered_catalog_read_does_not_follow_the_hidden_rows(
        proxies: dict[str, ProxyProcess], pg: PgCluster, mode: str, user: str) -> None:
    """Red team 9a8 N1: `SELECT relname FROM pg_class WHERE relname >= lo AND relname < hi` (no EXPLAIN) returned
    the tenant's own two rows in name order (an Index Scan) or in creation order (a Seq Scan), as pg_class's
    statistics, which count hidden relations, had the planner choose: 200 hidden relations in the range flipped it,
    a bit per query to bisect hidden names with. A join's method flipped likewise with the range's estimate, read
    through the wrapper from the same statistics, also over a view (pg_tables). The wrapper of a catalog that hides
    rows is fenced and opaque to those statistics now (`SELECT DISTINCT ON (ctid) … OFFSET 0`, a view's DISTINCT ON
    its row number): the same rows in the same order either way."""
    schema = HIDDEN_IN[user]
    with _connect(proxies[mode], user) as conn:
        conn.execute("CREATE TEMP TABLE zz_se9x (a int, b int)")  # first: physical order 9x, 5; name order 5, 9x
        conn.execute("CREATE TEMP TABLE zz_se5 (a int)")  # relnatts and length 1, 2 and 6, 7: the series' order 5, 9x
        # The same number of hidden relations (the wrapper's estimate follows the catalog's size: Known limits), first
        # outside the range, then inside it: only their names differ, and nothing the tenant reads may follow them.
        outside = "".join(f"CREATE TABLE {schema}.zz_ta_secret_{i} (a int); " for i in range(200))
        created = "".join(f"CREATE TABLE {schema}.zz_secret_{i} (a int); " for i in range(200))
        try:
            pg.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}; {outside}", dbname="saas")
            _vacuumed(pg)
            before = _orders(conn)
            assert all(sorted(rows) == ["zz_se5", "zz_se9x"] for rows in before), before
            pg.execute("".join(f"DROP TABLE {schema}.zz_ta_secret_{i}; " for i in range(200)) + created, dbname="saas")
            _vacuumed(pg)
            changed = [(sql, rows) for sql, rows, after in zip(ORDER_READS, before, _orders(conn), strict=True)
                       if after != rows]
            assert not changed, (len(changed), changed)
        finally:
            dropped = "".join(f"DROP TABLE IF EXISTS {schema}.zz_secret_{i}; DROP TABLE IF EXISTS "
                              f"{schema}.zz_ta_secret_{i}; " for i in range(200))
            pg.execute(dropped + ("DROP SCHEMA IF EXISTS othert" if schema == "othert" else ""), dbname="saas")
            pg.execute("VACUUM ANALYZE pg_catalog.pg_class", dbname="saas")
