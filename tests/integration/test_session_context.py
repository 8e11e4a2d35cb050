"""A session's own context through the real clients: temporary tables of read-only tenants, and search_path.

Every test runs as the read-only login of each strategy on the `tests.support.bidata` dataset (``t_bigco`` on
``bi_shared``, ``s_two`` on ``bi_schema`` (schema ``two_co``, another tenant's ``one_co`` next to it),
``d_five`` on ``bi_t5``), and where the client allows it through both protocols: the simple one (a Query
message, parameters interpolated) and the extended one (Parse/Bind/Execute). A shared-strategy tenant whose
database also holds another tenant's schema is the default fixture's ``alice`` (tenant acme on ``saas``, next to
``globex``). What the tests hold: the session can create, fill (INSERT, executemany, COPY text/binary/csv),
update, delete from, truncate, read and drop its temporary tables; a join with a tenant table returns only the
tenant's rows; the tenant's real tables are never written; SET/RESET/SET LOCAL/set_config of search_path are
accepted, PostgreSQL gets only the schemas the tenant may use, and SHOW (and PostgreSQL 18's ParameterStatus)
reports the client's value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.support import bidata
from tests.support.bidata import PqClient, Result
from tests.support.jdbc import require_jdbc, run_jdbc
from tests.support.odbc import connection_string, require_odbc
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import ProxyProcess
from tests.support.psql import find_psql, run_psql

bi_proxy = bidata.bi_proxy_fixture()

# strategy -> (read-only login, database, dataset key, a search_path naming another tenant's schema first)
READERS: dict[str, tuple[str, str, str]] = {
    "shared": ("t_bigco", bidata.SHARED_DB, "bigco"),
    "schema": ("s_two", bidata.SCHEMA_DB, "two_co"),
    "database": ("d_five", bidata.DB_FIVE, "dfive"),
}
STRATEGIES = tuple(READERS)
PROTOCOLS = ("simple", "extended")


def _own_orders(strategy: str) -> int:
    return bidata.own_counts(READERS[strategy][2])["orders"]


def _own_ids(strategy: str, n: int) -> list[int]:
    """The ids of the tenant's first `n` orders."""
    start = bidata.id_range(READERS[strategy][2]).start
    return list(range(start, start + n))


def _foreign_id(strategy: str) -> int:
    """An id that another tenant's order has."""
    other = "acme" if strategy == "shared" else "one_co" if strategy == "schema" else "dfour"
    return bidata.id_range(other).start


def _dsn(proxy: ProxyProcess, strategy: str) -> str:
    user, db, _ = READERS[strategy]
    return proxy.dsn(user, dbname=db)


@pytest.fixture(autouse=True)
def _data_unchanged(pg: PgCluster, bi_proxy: ProxyProcess) -> Iterator[None]:
    """No test here may change a real table: every write goes to a temporary one."""
    before = bidata.fingerprint(pg)
    yield
    assert bidata.fingerprint(pg) == before, "a real table was written"


# --- psycopg ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_psycopg_temp_table_round_trip(bi_proxy: ProxyProcess, strategy: str, protocol: str) -> None:
    """Create, executemany, COPY text and binary, UPDATE, DELETE, join, TRUNCATE, DROP; in a transaction
    (psycopg's default) and committed."""
    own = _own_ids(strategy, 5)
    cursor_factory = psycopg.ClientCursor if protocol == "simple" else psycopg.Cursor
    with psycopg.connect(_dsn(bi_proxy, strategy), cursor_factory=cursor_factory) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TEMP TABLE picks (id int PRIMARY KEY, label text)")
        cur.executemany("INSERT INTO picks (id, label) VALUES (%s, %s)", [(i, f"own {i}") for i in own[:3]])
        with cur.copy("COPY picks (id, label) FROM STDIN") as copy:
            copy.write_row((own[3], "copied text"))
            copy.write_row((_foreign_id(strategy), "someone else's id"))
        with cur.copy("COPY picks FROM STDIN (FORMAT binary)") as copy:
            copy.set_types(["int4", "text"])
            copy.write_row((own[4], "copied binary"))
        conn.commit()
        cur.execute("UPDATE picks SET label = upper(label) WHERE id = %s", (own[0],))
        assert cur.rowcount == 1
        cur.execute("DELETE FROM picks WHERE id = %s", (own[1],))
        assert cur.rowcount == 1
        cur.execute("SELECT p.id, p.label, o.id IS NOT NULL FROM picks p LEFT JOIN orders o ON o.id = p.id "
                    "ORDER BY p.id")
        rows = cur.fetchall()
        assert [r[0] for r in rows] == sorted([own[0], *own[2:], _foreign_id(strategy)])
        assert {r[0] for r in rows if r[2]} == {own[0], *own[2:]}  # another tenant's order never joins
        assert dict((r[0], r[1]) for r in rows)[own[0]] == f"OWN {own[0]}"
        cur.execute("SELECT count(*) FROM picks JOIN orders USING (id)")
        assert cur.fetchone() == (4,)
        cur.execute("TRUNCATE picks")
        cur.execute("SELECT count(*) FROM picks")
        assert cur.fetchone() == (0,)
        conn.commit()
        cur.execute("DROP TABLE picks")
        conn.commit()
        cur.execute("SELECT count(*) FROM orders")
        assert cur.fetchone() == (_own_orders(strategy),)
        with pytest.raises(psycopg.errors.UndefinedTable):
            cur.execute("SELECT count(*) FROM picks")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_psycopg_pipeline_creates_and_fills_in_one_batch(bi_proxy: ProxyProcess, strategy: str) -> None:
    """Parse CREATE TEMP, Parse INSERT, ... one Sync: the INSERT is decided before the CREATE ran."""
    own = _own_ids(strategy, 3)
    with psycopg.connect(_dsn(bi_proxy, strategy), autocommit=True) as conn:
        with conn.pipeline():
            conn.execute("CREATE TEMP TABLE batch (id int)", prepare=False)
            conn.cursor().executemany("INSERT INTO batch VALUES (%s)", [(i,) for i in own])
            conn.execute("UPDATE batch SET id = id WHERE id = %s", (own[0],))
            counted = conn.execute("SELECT count(*) FROM batch JOIN orders USING (id)")
        assert counted.fetchone() == (3,)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_psycopg_multi_statement_search_path(bi_proxy: ProxyProcess, strategy: str) -> None:
    """`SET search_path TO <list>; SELECT ...` in one simple Query (no parameters), then SHOW, SET LOCAL, RESET."""
    wanted = {"shared": 'public, "$user", pg_temp', "schema": "one_co, two_co, reference, public",
              "database": "public, pg_catalog"}[strategy]
    own = _own_orders(strategy)
    with psycopg.connect(_dsn(bi_proxy, strategy), autocommit=True) as conn:
        default = conn.execute("SHOW search_path").fetchone()
        cur = conn.execute(f"SET search_path TO {wanted}; SELECT count(*) FROM orders")
        assert cur.nextset() and cur.fetchone() == (own,)
        assert conn.execute("SHOW search_path").fetchone() == (wanted,)
        # (a pooled server that served a temporary table before has its pg_temp_N schema: shown for pg_temp)
        schemas = [s for s in conn.execute("SELECT current_schemas(false)").fetchone()[0]
                   if not s.startswith("pg_temp_")]
        assert schemas == {"shared": ["public"], "schema": ["two_co", "reference"],
                           "database": ["public", "pg_catalog"]}[strategy]
        with conn.transaction():
            conn.execute("SET LOCAL search_path TO pg_catalog")
            assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog",)
        assert conn.execute("SHOW search_path").fetchone() == (wanted,)
        conn.execute("RESET search_path")
        assert conn.execute("SHOW search_path").fetchone() == default
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (own,)


def test_psycopg_search_path_drops_another_tenants_schema(proxy: ProxyProcess) -> None:
    """Shared tenant acme shares database saas with schema tenant globex: `globex` never reaches PostgreSQL,
    so `orders` stays acme's own (the rows of public.orders), and a rolled-back SET takes nothing with it."""
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as conn:
        conn.execute("SET search_path = globex, public")
        assert conn.execute("SHOW search_path").fetchone() == ("globex, public",)
        assert conn.execute("SELECT current_schemas(false)").fetchone() == (["public"],)
        assert conn.execute("SELECT count(*), min(tenant_id), max(tenant_id) FROM orders").fetchone() == (
            200, "acme", "acme")
        conn.execute("SELECT set_config('search_path', 'globex', false)")
        assert conn.execute("SHOW search_path").fetchone() == ("globex",)
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT count(*) FROM orders")  # an empty search_path: nothing the tenant may use
        with pytest.raises(psycopg.errors.UndefinedTable), conn.transaction():
            conn.execute("SET search_path = public")
            conn.execute("SELECT count(*) FROM no_such_table")
        assert conn.execute("SHOW search_path").fetchone() == ("globex",)  # the SET was rolled back
        conn.execute("SET search_path TO DEFAULT")
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (200,)


def test_parameter_status_reports_the_clients_search_path(proxy: ProxyProcess) -> None:
    """PostgreSQL 18 reports search_path (GUC_REPORT); the client gets its own value, not the filtered one."""
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as conn:
        reported = conn.pgconn.parameter_status(b"search_path")
        if proxy.cluster.major < 18:
            assert reported is None
            return
        assert reported == b'"public"'
        conn.execute("SET search_path = globex, public")
        assert conn.pgconn.parameter_status(b"search_path") == b"globex, public"
        conn.execute("RESET search_path")
        assert conn.pgconn.parameter_status(b"search_path") == b'"public"'


# --- asyncpg ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_asyncpg_executemany_and_binary_copy(bi_proxy: ProxyProcess, strategy: str) -> None:
    user, db, _ = READERS[strategy]
    own = _own_ids(strategy, 4)

    async def main() -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=bi_proxy.port, user=user, database=db,
                                     password=bi_proxy.password(user), ssl=False)
        try:
            await conn.execute("CREATE TEMP TABLE ids (id int, note text)")
            await conn.executemany("INSERT INTO ids VALUES ($1, $2)", [(i, "many") for i in own[:2]])
            await conn.copy_records_to_table("ids", records=[(own[2], "copy"), (own[3], "copy")])  # binary COPY
            await conn.execute("UPDATE ids SET note = $1 WHERE id = $2", "updated", own[0])
            rows = await conn.fetch("SELECT i.id, i.note FROM ids i JOIN orders o USING (id) ORDER BY 1")
            assert [(r["id"], r["note"]) for r in rows] == [(own[0], "updated"), (own[1], "many"),
                                                            (own[2], "copy"), (own[3], "copy")]
            # Prepared (extended protocol) SET, then a multi-statement simple Query.
            stmt = await conn.prepare("SET search_path TO pg_temp, public, reference")
            await stmt.fetch()
            assert await conn.fetchval("SHOW search_path") == "pg_temp, public, reference"
            assert await conn.fetchval("SELECT count(*) FROM ids") == 4
            await conn.execute("RESET search_path; TRUNCATE ids; DROP TABLE ids")
            assert await conn.fetchval("SELECT count(*) FROM orders") == _own_orders(strategy)
        finally:
            await conn.close()

    asyncio.run(main())


# --- pgJDBC: Tableau's temporary tables and Initial SQL ----------------------------------------------------------

TABLEAU_STEPS = (
    'SELECT * INTO TEMPORARY TABLE "#Tableau_1_1_Connect_CheckSelectIntoCap" FROM (SELECT 1 AS COL) AS CHECKTEMP',
    'CREATE LOCAL TEMPORARY TABLE "#Tableau_1_2_Connect_CheckCreateTempTableCap" (COL INTEGER) ON COMMIT PRESERVE ROWS',
    'INSERT INTO "#Tableau_1_2_Connect_CheckCreateTempTableCap" (COL) VALUES (1)',
    'DROP TABLE "#Tableau_1_1_Connect_CheckSelectIntoCap"',
    'DROP TABLE "#Tableau_1_2_Connect_CheckCreateTempTableCap"',
    'CREATE LOCAL TEMPORARY TABLE "#Tableau_7_3_Filter" ("id" INTEGER) ON COMMIT PRESERVE ROWS',
    'INSERT INTO "#Tableau_7_3_Filter" ("id") VALUES (?)|||{id0}',
    'INSERT INTO "#Tableau_7_3_Filter" ("id") VALUES (?)|||{id1}',
    'INSERT INTO "#Tableau_7_3_Filter" ("id") VALUES (?)|||{foreign}',
    'SELECT COUNT(*) AS "cnt", SUM("orders"."amount") IS NOT NULL AS "has_sum" FROM "orders" "orders" '
    'INNER JOIN "#Tableau_7_3_Filter" "Filter" ON ("orders"."id" = "Filter"."id")',
    'DROP TABLE "#Tableau_7_3_Filter"',
)


@pytest.mark.parametrize("mode", ["extended", "simple"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_jdbc_tableau_temp_tables(bi_proxy: ProxyProcess, strategy: str, mode: str) -> None:
    require_jdbc()
    user, db, _ = READERS[strategy]
    own = _own_ids(strategy, 2)
    steps = [s.format(id0=own[0], id1=own[1], foreign=_foreign_id(strategy)) for s in TABLEAU_STEPS]
    url = f"jdbc:postgresql://127.0.0.1:{bi_proxy.port}/{db}?sslmode=disable&preferQueryMode={mode}"
    out = run_jdbc(url, user, bi_proxy.password(user), "script", *steps)
    errors = [(s["sql"], s.get("sqlstate"), s.get("error")) for s in out if "error" in s]
    assert errors == [], errors
    assert out[2]["results"] == [{"update_count": 1}]
    assert out[9]["results"][0]["rows"] == [["2", "t"]]  # the other tenant's id joined nothing


@pytest.mark.parametrize("mode", ["extended", "simple"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_jdbc_initial_sql_sets_search_path(bi_proxy: ProxyProcess, strategy: str, mode: str) -> None:
    """Tableau's Initial SQL: several statements in one execute (one batch, one Sync), session state kept."""
    require_jdbc()
    user, db, _ = READERS[strategy]
    initial = "SET search_path TO sales, public; SET application_name = 'Tableau Initial SQL'"
    if strategy == "schema":
        initial = "SET search_path TO sales, one_co, two_co, public; SET application_name = 'Tableau Initial SQL'"
    url = f"jdbc:postgresql://127.0.0.1:{bi_proxy.port}/{db}?sslmode=disable&preferQueryMode={mode}"
    out = run_jdbc(url, user, bi_proxy.password(user), "script", initial, "SHOW search_path",
                   "SELECT count(*), current_setting('application_name') FROM orders")
    errors = [(s["sql"], s.get("sqlstate"), s.get("error")) for s in out if "error" in s]
    assert errors == [], errors
    assert out[1]["results"][0]["rows"] == [[initial.split(";")[0].removeprefix("SET search_path TO ")]]
    assert out[2]["results"][0]["rows"] == [[str(_own_orders(strategy)), "Tableau Initial SQL"]]


# --- psqlODBC with UseDeclareFetch=1 (Tableau's ODBC settings) ---------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_odbc_tableau_temp_tables(bi_proxy: ProxyProcess, strategy: str, protocol: str) -> None:
    require_odbc()
    import pyodbc

    user, db, _ = READERS[strategy]
    own = _own_ids(strategy, 2)
    connstr = connection_string(port=bi_proxy.port, database=db, user=user, password=bi_proxy.password(user),
                                options={"UseDeclareFetch": 1, "Fetch": 2048,
                                         "UseServerSidePrepare": 1 if protocol == "extended" else 0})
    conn = pyodbc.connect(connstr, autocommit=True, timeout=10)
    try:
        cur = conn.cursor()
        # Under UseDeclareFetch the SELECT INTO probe is sent inside DECLARE ... CURSOR, which PostgreSQL refuses
        # (42601, "SELECT ... INTO is not allowed here"): Tableau then knows it has no SELECT INTO. Same here.
        with pytest.raises(pyodbc.Error) as probe:
            cur.execute('SELECT * INTO TEMPORARY TABLE "#Tableau_1_1_Connect_CheckSelectIntoCap" '
                        "FROM (SELECT 1 AS COL) AS CHECKTEMP")
        assert "42601" in str(probe.value) and "pgtenant" not in str(probe.value)
        cur.execute('CREATE LOCAL TEMPORARY TABLE "#Tableau_1_2_Connect_CheckCreateTempTableCap" (COL INTEGER) '
                    "ON COMMIT PRESERVE ROWS")
        cur.execute('INSERT INTO "#Tableau_1_2_Connect_CheckCreateTempTableCap" (COL) VALUES (?)', 1)
        cur.execute('DROP TABLE "#Tableau_1_2_Connect_CheckCreateTempTableCap"')
        cur.execute('CREATE LOCAL TEMPORARY TABLE "#Tableau_2_1_Set" ("id" INTEGER) ON COMMIT PRESERVE ROWS')
        cur.executemany('INSERT INTO "#Tableau_2_1_Set" ("id") VALUES (?)', [(own[0],), (own[1],),
                                                                             (_foreign_id(strategy),)])
        row = cur.execute('SELECT COUNT(*) FROM "orders" INNER JOIN "#Tableau_2_1_Set" "s" ON "orders"."id" = "s"."id"'
                          ).fetchone()
        assert row[0] == 2
        cur.execute('DELETE FROM "#Tableau_2_1_Set" WHERE "id" = ?', own[0])
        assert cur.execute('SELECT COUNT(*) FROM "#Tableau_2_1_Set"').fetchone()[0] == 2
        cur.execute('DROP TABLE "#Tableau_2_1_Set"')
        assert cur.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == _own_orders(strategy)
    finally:
        conn.close()


# --- psql \copy ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_psql_copy_into_temp_table(bi_proxy: ProxyProcess, strategy: str, tmp_path: Any) -> None:
    if find_psql() is None:
        pytest.skip("psql not found")
    user, db, _ = READERS[strategy]
    own = _own_ids(strategy, 3)
    tsv = tmp_path / "ids.tsv"
    tsv.write_text("".join(f"{i}\trow {i}\n" for i in own))
    csv = tmp_path / "ids.csv"
    csv.write_text(f"id,note\n{_foreign_id(strategy)},other\n")
    script = (
        "CREATE TEMP TABLE imported (id int, note text);\n"
        f"\\copy imported FROM '{tsv}'\n"
        f"\\copy imported FROM '{csv}' WITH (FORMAT csv, HEADER)\n"
        "SELECT count(*), count(o.id) FROM imported i LEFT JOIN orders o USING (id);\n"
        "TRUNCATE imported;\n"
        "DROP TABLE imported;\n"
    )
    res = run_psql(bi_proxy.url(user, dbname=db, sslmode="disable"), script, args=("-qAt",), check=True)
    assert res.stdout.split() == ["3|3"] or res.stdout.split() == ["4|3"], res.stdout


# --- what the session follows: transactions, savepoints, shadowing ----------------------------------------------


def _client(proxy: ProxyProcess, strategy: str) -> PqClient:
    user, db, _ = READERS[strategy]
    return PqClient(proxy.dsn(user, dbname=db))


def _run(client: PqClient, protocol: str, sql: str) -> list[Result]:
    return client.simple(sql) if protocol == "simple" else client.extended(sql)


def _value(results: list[Result]) -> str | None:
    rows = [r for r in results if r.kind == "rows"]
    assert rows and rows[-1].rows, [(r.kind, r.sqlstate, r.message) for r in results]
    return rows[-1].rows[0][0]


def _error(results: list[Result]) -> str | None:
    return next((r.sqlstate for r in results if r.kind == "error"), None)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_rolled_back_create_and_drop(bi_proxy: ProxyProcess, strategy: str, protocol: str) -> None:
    client = _client(bi_proxy, strategy)
    try:
        for sql in ("BEGIN", "CREATE TEMP TABLE rb (id int)", "INSERT INTO rb VALUES (1)", "ROLLBACK"):
            assert _error(_run(client, protocol, sql)) is None, sql
        assert _error(_run(client, protocol, "INSERT INTO rb VALUES (2)")) in ("25006", "42P01")
        assert _error(_run(client, protocol, "CREATE TEMP TABLE rb (id int)")) is None
        for sql in ("BEGIN", "DROP TABLE rb", "ROLLBACK"):
            assert _error(_run(client, protocol, sql)) is None, sql
        assert _error(_run(client, protocol, "INSERT INTO rb VALUES (3)")) is None  # still there, still writable
        for sql in ("BEGIN", "INSERT INTO rb VALUES (4)", "SAVEPOINT s1", "CREATE TEMP TABLE rb2 (id int)",
                    "ROLLBACK TO SAVEPOINT s1", "COMMIT"):
            assert _error(_run(client, protocol, sql)) is None, sql
        assert _value(_run(client, protocol, "SELECT string_agg(id::text, ',' ORDER BY id) FROM rb")) == "3,4"
        assert _error(_run(client, protocol, "INSERT INTO rb2 VALUES (1)")) in ("25006", "42P01")
        # A failed statement outside a transaction block takes back what its request created.
        failed = client.simple("CREATE TEMP TABLE rb3 (id int); SELECT 1/0")
        assert _error(failed) == "22012"
        assert _error(_run(client, protocol, "INSERT INTO rb3 VALUES (1)")) in ("25006", "42P01")
        # ON COMMIT DROP: gone once its transaction commits.
        for sql in ("BEGIN", "CREATE TEMP TABLE rb4 (id int) ON COMMIT DROP", "INSERT INTO rb4 VALUES (1)", "COMMIT"):
            assert _error(_run(client, protocol, sql)) is None, sql
        assert _error(_run(client, protocol, "INSERT INTO rb4 VALUES (1)")) in ("25006", "42P01")
        assert _value(_run(client, protocol, "SELECT count(*) FROM orders")) == str(_own_orders(strategy))
    finally:
        client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_search_path_follows_transactions(bi_proxy: ProxyProcess, strategy: str, protocol: str) -> None:
    client = _client(bi_proxy, strategy)
    try:
        default = _value(_run(client, protocol, "SHOW search_path"))
        for sql in ("BEGIN", "SET search_path TO one_co, public", "ROLLBACK"):
            assert _error(_run(client, protocol, sql)) is None, sql
        assert _value(_run(client, protocol, "SHOW search_path")) == default
        assert _error(_run(client, protocol, "SET search_path TO one_co, public, reference")) is None
        assert _value(_run(client, protocol, "SHOW search_path")) == "one_co, public, reference"
        for sql in ("BEGIN", "SET LOCAL search_path TO pg_catalog"):
            assert _error(_run(client, protocol, sql)) is None, sql
        assert _value(_run(client, protocol, "SHOW search_path")) == "pg_catalog"
        assert _error(_run(client, protocol, "COMMIT")) is None
        assert _value(_run(client, protocol, "SHOW search_path")) == "one_co, public, reference"
        assert _error(_run(client, protocol, "DISCARD ALL")) is None
        assert _value(_run(client, protocol, "SHOW search_path")) == default
    finally:
        client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_temp_table_shadows_a_tenant_table_until_dropped(bi_proxy: ProxyProcess, strategy: str,
                                                           protocol: str) -> None:
    """`orders` means the session's temporary table while it exists (PostgreSQL searches pg_temp first), the
    tenant's table again once it is dropped, and the temporary one once more when re-created."""
    client = _client(bi_proxy, strategy)
    own = str(_own_orders(strategy))
    try:
        assert _error(_run(client, protocol, "CREATE TEMP TABLE orders (id int, tenant_id text)")) is None
        assert _value(_run(client, protocol, "SELECT count(*) FROM orders")) == "0"
        assert _error(_run(client, protocol, "INSERT INTO orders VALUES (1, 'acme'), (2, 'bigco')")) is None
        assert _value(_run(client, protocol, "SELECT count(*) FROM orders")) == "2"
        assert _error(_run(client, protocol, "DROP TABLE orders")) is None
        assert _value(_run(client, protocol, "SELECT count(*) FROM orders")) == own
        assert _error(_run(client, protocol, "INSERT INTO orders (id) VALUES (1)")) == "25006"
        assert _error(_run(client, protocol, "CREATE TEMP TABLE orders AS SELECT * FROM orders")) is None
        assert _value(_run(client, protocol, "SELECT count(*) FROM orders")) == own
        assert _error(_run(client, protocol, "DELETE FROM orders")) is None
        assert _value(_run(client, protocol, "SELECT count(*) FROM orders")) == "0"
        assert _error(_run(client, protocol, "DROP TABLE orders")) is None
        assert _value(_run(client, protocol, "SELECT count(*) FROM orders")) == own
    finally:
        client.close()
