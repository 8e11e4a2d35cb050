"""A small, deterministic SaaS reporting dataset for the isolation tests, in all three tenancy strategies.

Databases (created idempotently in the session's cluster; nothing existing is touched):

* ``bi_shared`` -- one schema, every table has a ``tenant_id`` column; tenants ``acme`` (medium), ``bigco``
  (large), ``smallco`` (tiny) and ``ghostco`` (data only, no login). Forced RLS comes from ``pgtenant provision``.
  Also ``public.countries`` (reference data, no tenant column), ``public.customer_revenue`` (a view with a tenant
  column: the proxy discovers and filters it, the database cannot -- the view runs with its owner's rights) and
  ``events`` partitioned by year (``events_2024``, ``events_2025``, ``events_rest``).
* ``bi_shared_norls`` -- the same data with row-level security DISABLED after provisioning: only the proxy's
  rewrite protects it (used by the result-equality oracle and by the attack suite's ``norls`` strategy).
* ``bi_schema`` -- schema per tenant: ``one_co``, ``two_co`` (logins) and ``ghost_co`` (no login), a read-only
  ``reference`` schema (``countries``) and a legacy ``public.legacy_orders`` holding every tenant's rows that
  PUBLIC may read (a realistic misconfiguration only the proxy stands in front of).
* ``bi_t4`` / ``bi_t5`` -- database per tenant (``dfour`` / ``dfive``).

Every tenant has canaries that make a leak detectable anywhere (rows, COPY data, error texts): a customer named
``CANARY-<key>``, a product ``CANARY-<key> widget``, e-mails ``…@<key>.example``, SKUs ``<key>-sku-NNNN`` and an
event whose ``props`` carry ``CANARY-<key>``. See `foreign_markers`.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import pq, sql

from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import BACKEND_ROLE, ProxyProcess, prepare_backend

DATA_VERSION = "bi-v5"

SHARED_DB = "bi_shared"
NORLS_DB = "bi_shared_norls"
SCHEMA_DB = "bi_schema"
DB_FOUR = "bi_t4"
DB_FIVE = "bi_t5"
ALL_DATABASES = (SHARED_DB, NORLS_DB, SCHEMA_DB, DB_FOUR, DB_FIVE)
OTHER_DATABASES = ("saas", "initech", "postgres")  # made by other suites / initdb

SHARED_TABLES = ("customers", "products", "orders", "order_lines", "events")
EVENT_PARTITIONS = ("events_2024", "events_2025", "events_rest")
REFERENCE_SCHEMA = "reference"

# Tenant key -> (customers, products, orders, events per customer); the key is also the tenant_id value (shared),
# the schema name (schema strategy) or the canary key of a database tenant.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "acme": (60, 20, 420, 3),
    "bigco": (120, 30, 650, 3),
    "smallco": (6, 4, 15, 2),
    "ghostco": (10, 5, 40, 2),
    "one_co": (40, 12, 260, 3),
    "two_co": (30, 10, 200, 3),
    "ghost_co": (8, 4, 30, 2),
    "dfour": (25, 8, 150, 2),
    "dfive": (20, 8, 120, 2),
}
SHARED_KEYS = ("acme", "bigco", "smallco", "ghostco")
SCHEMA_KEYS = ("one_co", "two_co", "ghost_co")
DB_KEYS = {"dfour": DB_FOUR, "dfive": DB_FIVE}
_ID_BASE = {key: (i + 1) * 100_000 for i, key in enumerate(SIZES)}

COUNTRIES = [
    ("DE", "Germany", "EMEA"), ("FR", "France", "EMEA"), ("GB", "United Kingdom", "EMEA"),
    ("US", "United States", "AMER"), ("CA", "Canada", "AMER"), ("BR", "Brazil", "AMER"),
    ("JP", "Japan", "APAC"), ("AU", "Australia", "APAC"), ("IN", "India", "APAC"), ("ZA", "South Africa", "EMEA"),
]
_FIRST = ["Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ines", "Jon", "Kai", "Lena", "Mo", "Nia"]
_LAST = ["Smith", "Meyer", "Rossi", "Dubois", "Tanaka", "Silva", "Novak", "Berg", "Khan", "Okafor", "Lund"]
_SEGMENTS = ["Consumer", "Corporate", "Home Office"]
_CATEGORIES = ["Furniture", "Office Supplies", "Technology", "Services"]
_STATUSES = ["paid", "paid", "paid", "shipped", "shipped", "cancelled", "refunded"]
_CHANNELS = ["web", "web", "store", "partner"]
_EVENT_TYPES = ["page_view", "page_view", "page_view", "signup", "purchase", "support_ticket"]

# Users and tenants of the isolation suites (login user -> (tenant, password)).
STRICT_TENANTS: dict[str, dict[str, Any]] = {
    "bi_acme": {"strategy": "shared", "database": SHARED_DB, "tenant_id": "acme", "allow_writes": True},
    "bi_bigco": {"strategy": "shared", "database": SHARED_DB, "tenant_id": "bigco"},
    "bi_small": {"strategy": "shared", "database": SHARED_DB, "tenant_id": "smallco"},
    "bi_one": {"strategy": "schema", "database": SCHEMA_DB, "schema": "one_co", "shared_schemas": [REFERENCE_SCHEMA],
               "backend_user": "pgt_bi_one", "allow_writes": True},
    "bi_two": {"strategy": "schema", "database": SCHEMA_DB, "schema": "two_co", "shared_schemas": [REFERENCE_SCHEMA],
               "backend_user": "pgt_bi_two"},
    "bi_four": {"strategy": "database", "database": DB_FOUR, "backend_user": "pgt_bi_four", "allow_writes": True},
    "bi_five": {"strategy": "database", "database": DB_FIVE, "backend_user": "pgt_bi_five"},
}
NORLS_TENANTS: dict[str, dict[str, Any]] = {
    "bi_acme_n": {"strategy": "shared", "database": NORLS_DB, "tenant_id": "acme", "allow_writes": True},
    "bi_bigco_n": {"strategy": "shared", "database": NORLS_DB, "tenant_id": "bigco"},
    "bi_small_n": {"strategy": "shared", "database": NORLS_DB, "tenant_id": "smallco"},
}
STRICT_USERS: dict[str, tuple[str, str]] = {
    "t_acme": ("bi_acme", "t-acme-pw"),
    "t_bigco": ("bi_bigco", "t-bigco-pw"),
    "t_small": ("bi_small", "t-small-pw"),
    "s_one": ("bi_one", "s-one-pw"),
    "s_two": ("bi_two", "s-two-pw"),
    "d_four": ("bi_four", "d-four-pw"),
    "d_five": ("bi_five", "d-five-pw"),
}
NORLS_USERS: dict[str, tuple[str, str]] = {
    "n_acme": ("bi_acme_n", "n-acme-pw"),
    "n_bigco": ("bi_bigco_n", "n-bigco-pw"),
    "n_small": ("bi_small_n", "n-small-pw"),
}
TENANT_ROLES: dict[str, str] = {
    "pgt_bi_one": "pgt-bi-one-pw", "pgt_bi_two": "pgt-bi-two-pw",
    "pgt_bi_four": "pgt-bi-four-pw", "pgt_bi_five": "pgt-bi-five-pw",
}
# The role the result-equality oracle runs its reference queries as: not an owner, NOBYPASSRLS, forced RLS.
DIRECT_ROLE = "bi_direct"
DIRECT_PASSWORD = "bi-direct-pw"
DIRECT_TRUST = ("--trust", DIRECT_ROLE)  # `pgtenant provision` options: bi_direct reads every tenant by design


def markers(key: str) -> tuple[str, ...]:
    """Substrings that only ever occur in rows of tenant `key` (lower case)."""
    return (f"canary-{key}", f"@{key}.example", f"{key}-sku-")


def foreign_markers(own: str, keys: tuple[str, ...]) -> tuple[str, ...]:
    """Markers of every tenant in `keys` other than `own`."""
    return tuple(m for k in keys if k != own for m in markers(k))


# --------------------------------------------------------------------------------------------------- generation


@dataclass
class TenantRows:
    """Generated rows of one tenant (without the tenant column)."""

    key: str
    customers: list[tuple[Any, ...]] = field(default_factory=list)
    products: list[tuple[Any, ...]] = field(default_factory=list)
    orders: list[tuple[Any, ...]] = field(default_factory=list)
    order_lines: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)

    def table(self, name: str) -> list[tuple[Any, ...]]:
        return getattr(self, name)  # type: ignore[no-any-return]


def generate(key: str) -> TenantRows:
    """Deterministic rows for tenant `key` (same key, same rows, on every run and machine)."""
    n_cust, n_prod, n_orders, ev_per_cust = SIZES[key]
    rnd = random.Random(f"pgtenant-bi-{key}")
    base = _ID_BASE[key]
    out = TenantRows(key)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(1, n_cust + 1):
        name = f"CANARY-{key}" if i == 1 else f"{rnd.choice(_FIRST)} {rnd.choice(_LAST)} {i}"
        country = None if i % 11 == 0 else rnd.choice(COUNTRIES)[0]
        created = t0 - timedelta(days=rnd.randint(0, 700), seconds=rnd.randint(0, 86399))
        out.customers.append(
            (base + i, name, f"user{i}@{key}.example", country, rnd.choice(_SEGMENTS), created, i % 9 != 0)
        )
    for i in range(1, n_prod + 1):
        name = f"CANARY-{key} widget" if i == 1 else f"{rnd.choice(_CATEGORIES)} item {i}"
        price = Decimal(rnd.randint(199, 99_999)) / 100
        out.products.append((base + i, f"{key}-sku-{i:04d}", name, rnd.choice(_CATEGORIES), price, i % 7 == 0))
    line_id = base
    for i in range(1, n_orders + 1):
        cust = base + rnd.randint(1, max(1, n_cust - 2))  # the last customers never order (outer joins)
        day = date(2024, 1, 1) + timedelta(days=rnd.randint(0, 729))
        status = None if i % 97 == 0 else rnd.choice(_STATUSES)
        total = Decimal(0)
        lines = []
        for _ in range(rnd.randint(1, 4)):
            line_id += 1
            prod = out.products[rnd.randint(0, n_prod - 1)]
            qty = rnd.randint(1, 9)
            discount = None if rnd.random() < 0.6 else Decimal(rnd.choice([5, 10, 15, 25])) / 100
            total += (qty * prod[4] * (1 - (discount or 0))).quantize(Decimal("0.01"))
            lines.append((line_id, base + i, prod[0], qty, prod[4], discount))
        shipped = (
            datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(hours=rnd.randint(2, 200))
            if status in ("shipped", "refunded") else None
        )
        out.orders.append((base + i, cust, day, status, rnd.choice(_CHANNELS), total, shipped))
        out.order_lines.extend(lines)
    ev = base
    for c in out.customers:
        for _ in range(ev_per_cust):
            ev += 1
            when = t0 + timedelta(days=rnd.randint(0, 800), seconds=rnd.randint(0, 86399))
            props = {"path": f"/p/{rnd.randint(1, 40)}", "ms": rnd.randint(5, 4000)}
            if ev == base + 1:
                props["note"] = f"CANARY-{key}"
            out.events.append((ev, c[0] if ev % 13 else None, rnd.choice(_EVENT_TYPES), when, json.dumps(props)))
    return out


_DDL = """
CREATE TABLE {s}.customers (
    id int PRIMARY KEY,{tc}
    name text NOT NULL,
    email text NOT NULL,
    country_code char(2),
    segment text NOT NULL,
    created_at timestamptz NOT NULL,
    is_active boolean NOT NULL
);
CREATE TABLE {s}.products (
    id int PRIMARY KEY,{tc}
    sku text NOT NULL,
    name text NOT NULL,
    category text NOT NULL,
    unit_price numeric(10,2) NOT NULL,
    discontinued boolean NOT NULL
);
CREATE TABLE {s}.orders (
    id int PRIMARY KEY,{tc}
    customer_id int NOT NULL REFERENCES {s}.customers(id),
    order_date date NOT NULL,
    status text,
    channel text NOT NULL,
    amount numeric(12,2) NOT NULL,
    shipped_at timestamptz
);
CREATE INDEX ON {s}.orders (customer_id);
CREATE TABLE {s}.order_lines (
    id int PRIMARY KEY,{tc}
    order_id int NOT NULL REFERENCES {s}.orders(id),
    product_id int NOT NULL REFERENCES {s}.products(id),
    quantity int NOT NULL,
    unit_price numeric(10,2) NOT NULL,
    discount numeric(4,2)
);
CREATE INDEX ON {s}.order_lines (order_id);
"""
_EVENTS_PLAIN = """
CREATE TABLE {s}.events (
    id bigint PRIMARY KEY,{tc}
    customer_id int,
    event_type text NOT NULL,
    occurred_at timestamptz NOT NULL,
    props jsonb NOT NULL
);
"""
_EVENTS_PARTITIONED = """
CREATE TABLE {s}.events (
    id bigint NOT NULL,{tc}
    customer_id int,
    event_type text NOT NULL,
    occurred_at timestamptz NOT NULL,
    props jsonb NOT NULL,
    PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE {s}.events_2024 PARTITION OF {s}.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE {s}.events_2025 PARTITION OF {s}.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE {s}.events_rest PARTITION OF {s}.events DEFAULT;
"""
_COUNTRIES = "CREATE TABLE {s}.countries (code char(2) PRIMARY KEY, name text NOT NULL, region text NOT NULL);"
_COLUMNS = {
    "customers": "id, {tc}name, email, country_code, segment, created_at, is_active",
    "products": "id, {tc}sku, name, category, unit_price, discontinued",
    "orders": "id, {tc}customer_id, order_date, status, channel, amount, shipped_at",
    "order_lines": "id, {tc}order_id, product_id, quantity, unit_price, discount",
    "events": "id, {tc}customer_id, event_type, occurred_at, props",
}


def _create_tables(conn: psycopg.Connection, schema: str, *, tenant_column: bool, partitioned: bool) -> None:
    tc = "\n    tenant_id text NOT NULL," if tenant_column else ""
    conn.execute(_DDL.format(s=schema, tc=tc))
    conn.execute((_EVENTS_PARTITIONED if partitioned else _EVENTS_PLAIN).format(s=schema, tc=tc))


def _load(conn: psycopg.Connection, schema: str, rows: TenantRows, *, tenant_column: bool) -> None:
    for table in SHARED_TABLES:
        cols = _COLUMNS[table].format(tc="tenant_id, " if tenant_column else "")
        with conn.cursor().copy(f"COPY {schema}.{table} ({cols}) FROM STDIN") as cp:
            for r in rows.table(table):
                cp.write_row((r[0], rows.key, *r[1:]) if tenant_column else r)


def _countries(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(_COUNTRIES.format(s=schema))
    with conn.cursor().copy(f"COPY {schema}.countries (code, name, region) FROM STDIN") as cp:
        for r in COUNTRIES:
            cp.write_row(r)


_CATALOG_OBJECTS = """
CREATE TYPE {s}.cat_mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE {s}.cat_pair AS (amount numeric, label text);
CREATE TYPE {s}.cat_span AS RANGE (subtype = numeric);
"""


def _catalog_objects(conn: psycopg.Connection, schema: str, canary: str | None) -> None:
    """Types (enum, composite, range) for catalog hygiene tests and, in a tenant's own schema, a view and comments
    carrying its canary, so a description leaking to another tenant is caught like a row."""
    conn.execute(_CATALOG_OBJECTS.format(s=schema))
    if canary is not None:  # a tenant's own schema (not the shared one: a view there would need a tenant column)
        conn.execute(f"CREATE VIEW {schema}.paid_orders AS SELECT id, customer_id, amount FROM {schema}.orders "
                     "WHERE status = 'paid'")
        conn.execute(f"COMMENT ON TABLE {schema}.orders IS 'CANARY-{canary} orders'")
        conn.execute(f"COMMENT ON COLUMN {schema}.customers.email IS 'CANARY-{canary} e-mail'")
        conn.execute(f"COMMENT ON TYPE {schema}.cat_mood IS 'CANARY-{canary} mood'")


def _build_shared(conn: psycopg.Connection) -> None:
    _create_tables(conn, "public", tenant_column=True, partitioned=True)
    # The attackers' (acme's) rows are stored last, so a filter evaluated too late shows other tenants' rows first.
    for key in reversed(SHARED_KEYS):
        _load(conn, "public", generate(key), tenant_column=True)
    _countries(conn, "public")
    _catalog_objects(conn, "public", None)
    conn.execute(
        """CREATE VIEW public.customer_revenue AS
             SELECT c.tenant_id, c.id AS customer_id, c.name, coalesce(sum(o.amount), 0) AS revenue
               FROM public.customers c LEFT JOIN public.orders o ON o.customer_id = c.id
              GROUP BY c.tenant_id, c.id, c.name"""
    )


def _build_schema(conn: psycopg.Connection) -> None:
    for key in SCHEMA_KEYS:
        conn.execute(f"CREATE SCHEMA {key}")
        _create_tables(conn, key, tenant_column=False, partitioned=False)
        _load(conn, key, generate(key), tenant_column=False)
        _catalog_objects(conn, key, key)
    conn.execute(f"CREATE SCHEMA {REFERENCE_SCHEMA}")
    _countries(conn, REFERENCE_SCHEMA)
    conn.execute(
        "CREATE TABLE public.legacy_orders (id int PRIMARY KEY, tenant text NOT NULL, customer_name text NOT NULL,"
        " email text NOT NULL, amount numeric(12,2) NOT NULL)"
    )
    for key in reversed(SCHEMA_KEYS):
        conn.execute(
            f"""INSERT INTO public.legacy_orders
                SELECT o.id, '{key}', c.name, c.email, o.amount
                  FROM {key}.orders o JOIN {key}.customers c ON c.id = o.customer_id"""
        )
    conn.execute("GRANT SELECT ON public.legacy_orders TO PUBLIC")


def _build_db(conn: psycopg.Connection, key: str) -> None:
    _create_tables(conn, "public", tenant_column=False, partitioned=False)
    _load(conn, "public", generate(key), tenant_column=False)
    _countries(conn, "public")
    _catalog_objects(conn, "public", key)


_lock = threading.Lock()


def _version(pg: PgCluster, db: str) -> str | None:
    if not pg.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)):
        return None
    try:
        rows = pg.execute("SELECT version FROM public.bi_meta", dbname=db)
    except psycopg.Error:
        return ""
    return str(rows[0][0]) if rows else ""


@contextlib.contextmanager
def _admin(pg: PgCluster, db: str) -> Iterator[psycopg.Connection]:
    with pg.connect(dbname=db) as conn:
        yield conn


def ensure_bi_data(pg: PgCluster) -> None:
    """Create (or re-create when outdated) every bi_* database with its data; idempotent and cheap when done."""
    with _lock:
        builders = {
            SHARED_DB: _build_shared,
            NORLS_DB: _build_shared,
            SCHEMA_DB: _build_schema,
            DB_FOUR: lambda c: _build_db(c, "dfour"),
            DB_FIVE: lambda c: _build_db(c, "dfive"),
        }
        for db, build in builders.items():
            if _version(pg, db) == DATA_VERSION:
                continue
            pg.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
            pg.create_database(db)
            with _admin(pg, db) as conn:
                with conn.transaction():
                    build(conn)
                    conn.execute("CREATE TABLE public.bi_meta (version text NOT NULL)")
                    conn.execute("INSERT INTO public.bi_meta VALUES (%s)", (DATA_VERSION,))
                    conn.execute("REVOKE ALL ON public.bi_meta FROM PUBLIC")
                conn.execute("ANALYZE")
        _ensure_direct_role(pg)


def _ensure_direct_role(pg: PgCluster) -> None:
    if not pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DIRECT_ROLE,)):
        pg.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD {}").format(
                sql.Identifier(DIRECT_ROLE), sql.Literal(DIRECT_PASSWORD)
            )
        )
    tables = [*SHARED_TABLES, *EVENT_PARTITIONS, "countries"]
    # Its own policy, the same predicate as pgtenant's (which is TO pgtenant's backend roles only): a role that
    # chooses its tenant by SET, so `pgtenant provision` is told to trust it (DIRECT_TRUST).
    policies = "".join(
        f"DROP POLICY IF EXISTS bi_direct_oracle ON public.{t}; CREATE POLICY bi_direct_oracle ON public.{t} "
        f"TO {DIRECT_ROLE} USING (tenant_id::text = current_setting('pgtenant.tenant_id', true));"
        for t in [*SHARED_TABLES, *EVENT_PARTITIONS]
    )
    pg.execute(
        f"GRANT USAGE ON SCHEMA public TO {DIRECT_ROLE};"
        + "".join(f"GRANT SELECT ON public.{t} TO {DIRECT_ROLE};" for t in tables) + policies,
        dbname=SHARED_DB,
    )


# ---------------------------------------------------------------------------------------------- proxy builder


def after_provision(pg: PgCluster, *, norls: bool) -> None:
    """What `pgtenant provision` does not do: reference/view grants; RLS off in the no-RLS copy."""
    if not pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (BACKEND_ROLE,)):
        raise RuntimeError(f"{BACKEND_ROLE} should have been created by pgtenant provision")
    for db in (SHARED_DB, NORLS_DB) if norls else (SHARED_DB,):
        pg.execute(f"GRANT SELECT ON public.countries, public.customer_revenue TO {BACKEND_ROLE}", dbname=db)
    if norls:
        stmts = []
        for t in [*SHARED_TABLES, *EVENT_PARTITIONS]:
            stmts += [f"ALTER TABLE public.{t} NO FORCE ROW LEVEL SECURITY",
                      f"ALTER TABLE public.{t} DISABLE ROW LEVEL SECURITY"]
        pg.execute(";".join(stmts), dbname=NORLS_DB)
        left = pg.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relrowsecurity",
            dbname=NORLS_DB,
        )
        assert not left, f"RLS still enabled in {NORLS_DB}: {left}"


def start_bi_proxy(pg: PgCluster, workdir: Path, *, norls: bool = False) -> ProxyProcess:
    """A started pgtenant in front of the bi_* databases.

    Strict (default): shared tenants on ``bi_shared`` (forced RLS), schema tenants on ``bi_schema``, database
    tenants on ``bi_t4``/``bi_t5``; preflight enforced. With ``norls``: additionally the shared tenants of
    ``bi_shared_norls`` (users ``n_*``) whose tables have RLS disabled, so preflight runs in report-only mode.
    """
    prepare_backend(pg)
    ensure_bi_data(pg)
    tenants = dict(STRICT_TENANTS)
    users = dict(STRICT_USERS)
    if norls:
        tenants.update(NORLS_TENANTS)
        users.update(NORLS_USERS)
    proc = ProxyProcess(
        pg, workdir, backend_sslmode="disable", preflight_enforce=not norls,
        extra_tenants=tenants, extra_users=users, extra_roles=dict(TENANT_ROLES), provision_args=DIRECT_TRUST,
    )
    proc.provision()
    after_provision(pg, norls=norls)
    return proc.start(provision=False)


def bi_proxy_fixture(*, norls: bool = False, name: str = "bi_proxy") -> Any:
    """A module-scoped pytest fixture (named `name`) yielding a started `start_bi_proxy(...)`, stopped afterwards.

    Use at module level: ``bi_proxy = bidata.bi_proxy_fixture()``.
    """

    @pytest.fixture(scope="module", name=name)
    def _fixture(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
        proc = start_bi_proxy(pg, tmp_path_factory.mktemp(name), norls=norls)
        try:
            yield proc
        finally:
            proc.stop()

    return _fixture


# -------------------------------------------------------------------------------------------- facts for tests


def own_counts(key: str) -> dict[str, int]:
    """Row counts of tenant `key` per table (from the generator, not the database)."""
    rows = generate(key)
    return {t: len(rows.table(t)) for t in SHARED_TABLES}


def fingerprint(pg: PgCluster) -> dict[str, str]:
    """A digest of every bi_* table's contents, to prove a suite left the data unchanged."""
    out: dict[str, str] = {}
    for db in ALL_DATABASES:
        rels = pg.execute(
            """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                  AND c.relpersistence <> 't' ORDER BY 1, 2""",
            dbname=db,
        )
        parts = [
            f"SELECT '{s}.{t}', count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), ''))"
            f" FROM {s}.{t} x"
            for s, t in rels
        ]
        for name, count, digest in pg.execute(" UNION ALL ".join(parts), dbname=db):
            out[f"{db}:{name}"] = f"{count}:{digest}"
    return out


# ------------------------------------------------------------------------------------ a libpq-level test client

_INT_TYPES = frozenset({20, 21, 23})  # int8, int2, int4


@dataclass
class Result:
    """One result of a Query/Execute as the client saw it (values in text format)."""

    kind: str  # rows | command | error | copy_out | copy_in | empty
    tag: str = ""
    columns: tuple[str, ...] = ()
    types: tuple[int, ...] = ()
    rows: list[tuple[str | None, ...]] = field(default_factory=list)
    sqlstate: str | None = None
    message: str = ""  # the full libpq error text: severity, message, DETAIL, HINT, CONTEXT
    copy: bytes = b""

    @property
    def denied_by_proxy(self) -> bool:
        return self.kind == "error" and "pgtenant:" in self.message

    def int_cells(self) -> Iterator[int]:
        for j, oid in enumerate(self.types):
            if oid in _INT_TYPES:
                for row in self.rows:
                    if row[j] is not None:
                        yield int(row[j])  # type: ignore[arg-type]

    def text(self) -> str:
        """Everything this result shows the client, as one string."""
        parts = [self.tag, self.message, " ".join(self.columns), self.copy.decode("utf-8", "replace")]
        parts += [" ".join("" if v is None else v for v in row) for row in self.rows]
        return "\n".join(parts)


class PqClient:
    """A blocking libpq connection (psycopg.pq) that returns every result of a query string, including the
    results before and after an error in a multi-statement simple Query, COPY data, and notices."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.notices: list[str] = []
        self.pgconn = self._connect()
        self._names = 0

    def _connect(self) -> pq.PGconn:
        conn = pq.PGconn.connect(self.conninfo.encode())
        if conn.status != pq.ConnStatus.OK:
            msg = conn.get_error_message()
            conn.finish()
            raise ConnectionError(msg)
        conn.notice_handler = lambda res: self.notices.append(res.error_message.decode("utf-8", "replace"))
        return conn

    @property
    def broken(self) -> bool:
        return self.pgconn.status != pq.ConnStatus.OK

    @property
    def in_transaction(self) -> bool:
        return self.pgconn.transaction_status != pq.TransactionStatus.IDLE

    def reconnect(self) -> None:
        with contextlib.suppress(Exception):
            self.pgconn.finish()
        self.pgconn = self._connect()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.pgconn.finish()

    def simple(self, text: str, copy_in: bytes | None = None) -> list[Result]:
        """Send one simple Query message."""
        self.pgconn.send_query(text.encode())
        return self._collect(copy_in)

    def extended(self, text: str, params: list[str | None] | None = None, copy_in: bytes | None = None,
                 *, name: str | None = None) -> list[Result]:
        """Parse as a named statement (like pgJDBC's S_n / asyncpg), then Bind + Execute + Sync."""
        if name is None:
            self._names += 1
            name = f"bi_stmt_{self._names}"
        self.pgconn.send_prepare(name.encode(), text.encode())
        prep = self._collect(None)
        if any(r.kind == "error" for r in prep):
            return prep
        values = [None if p is None else p.encode() for p in params or []]
        self.pgconn.send_query_prepared(name.encode(), values)
        return self._collect(copy_in)

    def _collect(self, copy_in: bytes | None) -> list[Result]:
        out: list[Result] = []
        while True:
            res = self.pgconn.get_result()
            if res is None:
                return out
            out.append(self._result(res, copy_in))

    def _result(self, res: pq.PGresult, copy_in: bytes | None) -> Result:
        st = res.status
        if st == pq.ExecStatus.COPY_OUT:
            buf = bytearray()
            while True:
                n, data = self.pgconn.get_copy_data(0)
                if n < 0:
                    break
                buf += bytes(data)
            return Result("copy_out", copy=bytes(buf))
        if st == pq.ExecStatus.COPY_IN:
            if copy_in:
                self.pgconn.put_copy_data(copy_in)
            self.pgconn.put_copy_end()
            return Result("copy_in", copy=copy_in or b"")
        if st in (pq.ExecStatus.FATAL_ERROR, pq.ExecStatus.NONFATAL_ERROR, pq.ExecStatus.BAD_RESPONSE):
            code = res.error_field(pq.DiagnosticField.SQLSTATE)
            return Result(
                "error", sqlstate=code.decode() if code else None,
                message=res.error_message.decode("utf-8", "replace"),
            )
        tag = (res.command_status or b"").decode()
        if st == pq.ExecStatus.EMPTY_QUERY:
            return Result("empty")
        if st == pq.ExecStatus.TUPLES_OK:
            cols = tuple((res.fname(j) or b"").decode() for j in range(res.nfields))
            types = tuple(res.ftype(j) for j in range(res.nfields))
            rows = [
                tuple(None if (v := res.get_value(i, j)) is None else v.decode("utf-8", "replace")
                      for j in range(res.nfields))
                for i in range(res.ntuples)
            ]
            return Result("rows", tag=tag, columns=cols, types=types, rows=rows)
        return Result("command", tag=tag)


def literal(value: str | int | None) -> str:
    """A SQL literal for client-side parameter interpolation (the simple protocol's way of binding)."""
    return sql.Literal(value).as_string(None)


def bind_simple(text: str, params: tuple[str | int | None, ...] | None) -> str:
    """`%s` placeholders replaced by literals (what psycopg's ClientCursor / psycopg2 / pgJDBC do)."""
    if not params:
        return text
    parts = text.split("%s")
    assert len(parts) == len(params) + 1, text
    return parts[0] + "".join(literal(p) + rest for p, rest in zip(params, parts[1:], strict=True))


def bind_extended(text: str, params: tuple[str | int | None, ...] | None) -> tuple[str, list[str | None]]:
    """`%s` placeholders as $1..$n with text-format values."""
    if not params:
        return text, []
    parts = text.split("%s")
    assert len(parts) == len(params) + 1, text
    out = parts[0] + "".join(f"${i}" + rest for i, rest in enumerate(parts[1:], 1))
    return out, [None if p is None else str(p) for p in params]


def rows_key(results: list[Result]) -> list[Any]:
    """What two runs of the same statements must agree on: per row-returning result its column names and
    rows as a multiset (COPY data as a multiset of lines); command tags of writes are left out."""
    from collections import Counter

    out: list[Any] = []
    for r in results:
        if r.kind == "rows":
            out.append(("rows", r.columns, Counter(r.rows)))
        elif r.kind == "copy_out":
            out.append(("copy", Counter(r.copy.splitlines())))
        elif r.kind == "error":
            out.append(("error", r.sqlstate))
    return out


def id_range(key: str) -> range:
    """The ids every generated row of tenant `key` has (customers, products, orders, lines, events)."""
    return range(_ID_BASE[key] + 1, _ID_BASE[key] + 100_000)
