"""The Python data stack through pgtenant: SQLAlchemy reflection and Core, pandas, with psycopg 3 and psycopg2."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import asyncpg
import pandas as pd
import psycopg
import pytest
import sqlalchemy as sa

from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import BACKEND_ROLE, ProxyProcess, prepare_backend, tenants_proxy

DB = "pystack"  # shared tenants pa and pb (schema "sales") and the schema tenant ps (schema "ps_data")
DB_OWN = "pystack_pd"  # the database tenant pd's own database
SCHEMA_ROLE = ("pgt_r_pys", "pys-role-pw")  # the schema tenant's own backend role (no tenant name in it)
DB_ROLE = ("pgt_r_pyd", "pyd-role-pw")

# A reporting schema as a SaaS has it: a customers table with a unique key, orders with a foreign key, an index,
# a comment, an enum column, and a view.
_OBJECTS = """
CREATE TYPE {s}.order_status AS ENUM ('open', 'shipped', 'returned');
CREATE TYPE {s}.address AS (street text, city text);
CREATE TYPE {s}.amount_range AS RANGE (subtype = numeric);
CREATE TABLE {s}.customers (id int PRIMARY KEY, {tcol}name text NOT NULL, UNIQUE ({tkey}name));
CREATE TABLE {s}.orders (
    id int PRIMARY KEY, {tcol}customer_id int NOT NULL REFERENCES {s}.customers (id),
    amount numeric(10, 2) NOT NULL, status {s}.order_status NOT NULL DEFAULT 'open');
CREATE INDEX orders_customer_idx ON {s}.orders (customer_id);
COMMENT ON TABLE {s}.orders IS 'one row per order';
CREATE VIEW {s}.big_orders WITH (security_invoker = true) AS SELECT * FROM {s}.orders WHERE amount > 100;
"""

# tenant -> (strategy keys, login user, password, schema of its tables, its customers and orders)
TENANTS: dict[str, dict[str, Any]] = {
    "pa": {"keys": {"strategy": "shared", "database": DB, "tenant_id": "pa", "tenant_schemas": ["sales"]},
           "user": "pya", "schema": "sales", "customers": 3, "orders": 7},
    "pb": {"keys": {"strategy": "shared", "database": DB, "tenant_id": "pb", "tenant_schemas": ["sales"]},
           "user": "pyb", "schema": "sales", "customers": 2, "orders": 4},
    "ps": {"keys": {"strategy": "schema", "database": DB, "schema": "ps_data", "backend_user": SCHEMA_ROLE[0]},
           "user": "pys", "schema": "ps_data", "customers": 4, "orders": 5},
    "pd": {"keys": {"strategy": "database", "database": DB_OWN, "backend_user": DB_ROLE[0]},
           "user": "pyd", "schema": "public", "customers": 2, "orders": 3},
}
DRIVERS = ("psycopg", "psycopg2")


def _fill(pg: PgCluster) -> None:
    """Create the reporting schemas and rows once per cluster (idempotent)."""
    if pg.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)):
        return
    pg.create_database(DB)
    pg.create_database(DB_OWN)
    pg.execute("CREATE SCHEMA sales; CREATE SCHEMA ps_data;", dbname=DB)
    pg.execute(_OBJECTS.format(s="sales", tcol="tenant_id text NOT NULL, ", tkey="tenant_id, "), dbname=DB)
    pg.execute(_OBJECTS.format(s="ps_data", tcol="", tkey=""), dbname=DB)
    pg.execute(_OBJECTS.format(s="public", tcol="", tkey=""), dbname=DB_OWN)
    for name, t in TENANTS.items():
        db = DB_OWN if t["keys"]["strategy"] == "database" else DB
        shared = t["keys"]["strategy"] == "shared"
        base = 1000 * (1 + list(TENANTS).index(name))  # keys never collide across the shared tenants
        for i in range(t["customers"]):
            cols, vals = ("tenant_id, ", f"'{name}', ") if shared else ("", "")
            pg.execute(f"INSERT INTO {t['schema']}.customers (id, {cols}name) VALUES ({base + i}, {vals}'{name} c{i}')",
                       dbname=db)
        for i in range(t["orders"]):
            cols, vals = ("tenant_id, ", f"'{name}', ") if shared else ("", "")
            pg.execute(
                f"INSERT INTO {t['schema']}.orders (id, {cols}customer_id, amount) "
                f"VALUES ({base + i}, {vals}{base + i % t['customers']}, {50 * (i + 1)})",
                dbname=db,
            )


@pytest.fixture(scope="module")
def stack(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    _fill(pg)
    p = tenants_proxy(pg, tmp_path_factory.mktemp("pystack"), TENANTS, dict([SCHEMA_ROLE, DB_ROLE])).start()
    # provision grants the shared tenants' tables; a view over them is the SaaS's to grant (it runs with the
    # invoker's rights, so the tables' row-level security applies to it as well as the proxy's filter)
    pg.execute(f"GRANT SELECT ON sales.big_orders TO {BACKEND_ROLE}", dbname=DB)
    yield p
    p.stop()


def _engine(stack: ProxyProcess, tenant: str, driver: str) -> sa.Engine:
    t = TENANTS[tenant]
    url = sa.URL.create(
        f"postgresql+{driver}", username=t["user"], password=stack.password(t["user"]), host="127.0.0.1",
        port=stack.port, database=tenant, query={"sslmode": "disable"},
    )
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


@pytest.fixture(params=[(t, d) for t in ("pa", "ps", "pd") for d in DRIVERS], ids=lambda p: f"{p[0]}-{p[1]}")
def engine(request: pytest.FixtureRequest, stack: ProxyProcess) -> Iterator[tuple[str, sa.Engine]]:
    tenant, driver = request.param
    eng = _engine(stack, tenant, driver)
    yield tenant, eng
    eng.dispose()


def _own_ids(tenant: str, what: str) -> set[int]:
    t = TENANTS[tenant]
    base = 1000 * (1 + list(TENANTS).index(tenant))
    return {base + i for i in range(t[what])}


def test_inspector_lists_only_the_tenants_objects(engine: tuple[str, sa.Engine]) -> None:
    tenant, eng = engine
    schema = TENANTS[tenant]["schema"]
    insp = sa.inspect(eng)
    schemas = set(insp.get_schema_names())
    assert schema in schemas
    others = {"sales", "ps_data"} - {schema}
    assert not schemas & others, f"{tenant} sees another tenant's schema: {schemas & others}"
    assert sorted(insp.get_table_names(schema=schema)) == ["customers", "orders"]
    assert insp.get_view_names(schema=schema) == ["big_orders"]
    columns = [c["name"] for c in insp.get_columns("orders", schema=schema)]
    expected = ["id", "customer_id", "amount", "status"]
    if TENANTS[tenant]["keys"]["strategy"] == "shared":
        expected.insert(1, "tenant_id")
    assert columns == expected
    assert insp.get_pk_constraint("orders", schema=schema)["constrained_columns"] == ["id"]
    (fk,) = insp.get_foreign_keys("orders", schema=schema)
    assert (fk["constrained_columns"], fk["referred_table"], fk["referred_columns"]) == (
        ["customer_id"], "customers", ["id"]
    )
    assert [i["name"] for i in insp.get_indexes("orders", schema=schema)] == ["orders_customer_idx"]
    (unique,) = insp.get_unique_constraints("customers", schema=schema)
    assert unique["column_names"][-1] == "name"
    assert insp.get_table_comment("orders", schema=schema)["text"] == "one row per order"


def test_reflect_and_core_select_return_only_the_tenants_rows(engine: tuple[str, sa.Engine]) -> None:
    tenant, eng = engine
    schema = TENANTS[tenant]["schema"]
    meta = sa.MetaData()
    meta.reflect(eng, schema=schema, views=True)
    assert {f"{schema}.customers", f"{schema}.orders", f"{schema}.big_orders"} <= set(meta.tables)
    orders = meta.tables[f"{schema}.orders"]
    customers = meta.tables[f"{schema}.customers"]
    with eng.connect() as conn:
        ids = {r.id for r in conn.execute(sa.select(orders.c.id))}
        joined = conn.execute(
            sa.select(customers.c.name, sa.func.count())
            .select_from(orders.join(customers))
            .where(orders.c.amount > sa.bindparam("floor", 0))
            .group_by(customers.c.name)
        ).all()
        statuses = {r[0] for r in conn.execute(sa.select(orders.c.status).distinct())}
    assert ids == _own_ids(tenant, "orders")
    assert sum(n for _, n in joined) == TENANTS[tenant]["orders"]
    assert all(name.startswith(f"{tenant} ") for name, _ in joined)
    assert statuses == {"open"}


def test_pandas_read_sql_and_read_sql_table(engine: tuple[str, sa.Engine]) -> None:
    tenant, eng = engine
    schema = TENANTS[tenant]["schema"]
    frame = pd.read_sql(sa.text("SELECT id, amount FROM orders WHERE amount >= :low ORDER BY id"), eng,
                        params={"low": 0})
    assert set(frame["id"]) == _own_ids(tenant, "orders")
    table = pd.read_sql_table("customers", eng, schema=schema)
    assert set(table["id"]) == _own_ids(tenant, "customers")
    view = pd.read_sql_table("big_orders", eng, schema=schema)
    assert set(view["id"]) <= _own_ids(tenant, "orders") and len(view) == sum(
        1 for i in range(TENANTS[tenant]["orders"]) if 50 * (i + 1) > 100
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_shared_tenants_reflect_the_same_schema_and_see_their_own_rows(stack: ProxyProcess, driver: str) -> None:
    for tenant in ("pa", "pb"):
        eng = _engine(stack, tenant, driver)
        try:
            orders = sa.Table("orders", sa.MetaData(), autoload_with=eng, schema="sales")
            with eng.connect() as conn:
                rows = conn.execute(sa.select(orders.c.id, orders.c.tenant_id)).all()
        finally:
            eng.dispose()
        assert {r.tenant_id for r in rows} == {tenant}
        assert {r.id for r in rows} == _own_ids(tenant, "orders")


@pytest.mark.parametrize("tenant", ["pa", "ps", "pd"])
def test_psycopg_type_info_sees_own_types_only(stack: ProxyProcess, tenant: str) -> None:
    t = TENANTS[tenant]
    with psycopg.connect(stack.dsn(t["user"], dbname=tenant)) as conn:
        own = psycopg.types.enum.EnumInfo.fetch(conn, f"{t['schema']}.order_status")
        assert own is not None and own.labels == ["open", "shipped", "returned"]
        assert psycopg.types.TypeInfo.fetch(conn, "hstore") is None  # no such type here: nothing, as directly
        assert psycopg.types.TypeInfo.fetch(conn, "numeric").oid == 1700
        composite = psycopg.types.composite.CompositeInfo.fetch(conn, f"{t['schema']}.address")
        assert composite is not None and list(composite.field_names) == ["street", "city"]
        psycopg.types.composite.register_composite(composite, conn)
        row = conn.execute(f"SELECT ROW('Main St', 'Springfield')::{t['schema']}.address").fetchone()
        assert (row[0].street, row[0].city) == ("Main St", "Springfield")
        own_range = psycopg.types.range.RangeInfo.fetch(conn, f"{t['schema']}.amount_range")
        assert own_range is not None and own_range.subtype_oid == 1700
        assert psycopg.types.range.RangeInfo.fetch(conn, "int4range").oid == 3904
        if t["keys"]["database"] == DB:
            other = "ps_data" if t["schema"] == "sales" else "sales"
            for info in (psycopg.types.TypeInfo, psycopg.types.enum.EnumInfo, psycopg.types.composite.CompositeInfo,
                         psycopg.types.range.RangeInfo):
                name = {"EnumInfo": "order_status", "CompositeInfo": "address", "RangeInfo": "amount_range"}
                assert info.fetch(conn, f"{other}.{name.get(info.__name__, 'order_status')}") is None


@pytest.mark.parametrize("tenant", ["pa", "ps", "pd"])
def test_asyncpg_introspects_the_tenants_enum(stack: ProxyProcess, tenant: str) -> None:
    t = TENANTS[tenant]

    async def run() -> list[tuple[int, str]]:
        conn = await asyncpg.connect(host="127.0.0.1", port=stack.port, user=t["user"],
                                     password=stack.password(t["user"]), database=tenant, ssl=False)
        try:
            rows = await conn.fetch("SELECT id, status FROM orders ORDER BY id")
            return [(r["id"], r["status"]) for r in rows]
        finally:
            await conn.close()

    rows = asyncio.run(run())
    assert {i for i, _ in rows} == _own_ids(tenant, "orders") and {s for _, s in rows} == {"open"}


def test_module_data_is_isolated_per_database(pg: PgCluster, stack: ProxyProcess) -> None:
    """The fixture's own premise: each shared tenant's rows exist and differ (else the tests above prove nothing)."""
    counts = dict(pg.execute("SELECT tenant_id, count(*) FROM sales.orders GROUP BY 1", dbname=DB))
    assert counts == {"pa": TENANTS["pa"]["orders"], "pb": TENANTS["pb"]["orders"]}
