"""`pgtenant provision`: makes PostgreSQL enforce the same tenant boundary as the proxy, idempotently."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from proxy.config import Config, TenantConfig
from proxy.tenancy import explicit_tables

POLICY_NAME = "pgtenant_isolation"


@dataclass
class ProvisionLog:
    steps: list[str] = field(default_factory=list)

    def __call__(self, text: str) -> None:
        self.steps.append(text)


def _roles(config: Config) -> dict[str, str | None]:
    """Every backend role the config names, with its password when known."""
    out: dict[str, str | None] = {}
    for t in config.tenants.values():
        b = config.backend_for(t)
        out[b.user] = b.password
    return out


def _ensure_role(conn: psycopg.Connection, name: str, password: str | None, log: Callable[[str], None]) -> None:
    exists = conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (name,)).fetchone()
    verb = "ALTER" if exists else "CREATE"
    q = sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION").format(
        sql.SQL(verb), sql.Identifier(name)
    )
    if password is not None:
        q = sql.SQL("{} PASSWORD {}").format(q, sql.Literal(password))
    conn.execute(q)
    log(f"role {name}: {'updated' if exists else 'created'} (LOGIN NOSUPERUSER NOBYPASSRLS)")


def _ensure_database(conn: psycopg.Connection, name: str, log: Callable[[str], None]) -> None:
    if conn.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (name,)).fetchone() is None:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        log(f"database {name}: created")


def provision(config: Config, admin_dsn: str, log: Callable[[str], None] = print) -> None:
    """Create roles, databases, schemas, grants and RLS policies for every tenant in `config`.

    `admin_dsn` is a libpq connection string of a role allowed to do all that (a superuser, or the
    owner of the tenant tables with CREATEROLE and CREATEDB). Running it again changes nothing new.
    """
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        for role, password in _roles(config).items():
            _ensure_role(admin, role, password, log)
        databases = {t.database for t in config.tenants.values()}
        for db in sorted(databases):
            _ensure_database(admin, db, log)
        dbowned = {t.database for t in config.tenants.values() if t.strategy == "database"}
        for db in sorted(dbowned):
            admin.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
            log(f"database {db}: CONNECT revoked from PUBLIC")
        for t in config.tenants.values():
            role = config.backend_for(t).user
            admin.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(t.database), sql.Identifier(role)
            ))
    for db in sorted(databases):
        dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=db)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for t in config.tenants.values():
                if t.database != db:
                    continue
                role = config.backend_for(t).user
                if t.strategy == "shared":
                    _provision_shared(conn, t, role, log)
                elif t.strategy == "schema":
                    _provision_schema(conn, t, role, log)
                else:
                    _grant_schema(conn, "public", role, t.allow_writes, log, where=t.name)


def _privileges(writes: bool) -> sql.Composable:
    return sql.SQL("SELECT, INSERT, UPDATE, DELETE" if writes else "SELECT")


def _grant_schema(
    conn: psycopg.Connection, schema: str, role: str, writes: bool, log: Callable[[str], None], *, where: str
) -> None:
    s, r = sql.Identifier(schema), sql.Identifier(role)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r))
    conn.execute(sql.SQL("GRANT {} ON ALL TABLES IN SCHEMA {} TO {}").format(_privileges(writes), s, r))
    conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT {} ON TABLES TO {}").format(
        s, _privileges(writes), r
    ))
    log(f"tenant {where}: {role} may {'read and write' if writes else 'read'} schema {schema}")


def _provision_schema(conn: psycopg.Connection, t: TenantConfig, role: str, log: Callable[[str], None]) -> None:
    assert t.schema is not None
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(t.schema)))
    _grant_schema(conn, t.schema, role, t.allow_writes, log, where=t.name)
    for shared in t.shared_schemas:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(shared)))
        _grant_schema(conn, shared, role, False, log, where=t.name)


def _provision_shared(conn: psycopg.Connection, t: TenantConfig, role: str, log: Callable[[str], None]) -> None:
    if t.tables:
        tables = sorted(explicit_tables(t))
    else:
        rows = conn.execute(
            """SELECT n.nspname, c.relname FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                WHERE c.relkind IN ('r', 'p') AND a.attname = %s AND n.nspname = ANY(%s) ORDER BY 1, 2""",
            (t.tenant_column, list(t.tenant_schemas)),
        ).fetchall()
        tables = [(r[0], r[1]) for r in rows]
    r = sql.Identifier(role)
    for schema in t.tenant_schemas:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), r))
    setting = sql.Literal(t.tenant_setting)
    for schema, table in tables:
        rel = sql.Identifier(schema, table)
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(rel))
        conn.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(rel))
        conn.execute(sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(sql.Identifier(POLICY_NAME), rel))
        predicate = sql.SQL("{}::text = pg_catalog.current_setting({}, true)").format(
            sql.Identifier(t.tenant_column), setting
        )
        conn.execute(
            sql.SQL("CREATE POLICY {} ON {} AS PERMISSIVE FOR ALL TO PUBLIC USING ({}) WITH CHECK ({})").format(
                sql.Identifier(POLICY_NAME), rel, predicate, predicate
            )
        )
        conn.execute(sql.SQL("GRANT {} ON {} TO {}").format(_privileges(t.allow_writes), rel, r))
        log(f"tenant {t.name}: {schema}.{table} has forced RLS on {t.tenant_column} = {t.tenant_setting}")
