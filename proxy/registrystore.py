"""The tenant registry in PostgreSQL, blocking: create its tables, read them, change them (for the CLI and startup)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from proxy import dbidentity, registryplace, registryrows
from proxy.config import Config, ConfigError, RegistryOverlay, load_config
from proxy.registrydb import (
    DDL,
    READ_TIMEOUTS,
    SCHEMA,
    SELECT_SETTINGS,
    SELECT_TENANTS,
    SELECT_USERS,
    SELECT_VERSION,
    RegistryRows,
    overlay,
    tenant_row,
    with_tcp_timeouts,
)

CONNECT_TIMEOUT = 5
IDENTITY = dbidentity.Checker()  # the placement check by identity, remembering targets found elsewhere (N6)


class RegistryError(RuntimeError):
    """The registry database could not be read or changed; the message says why."""


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection:
    try:
        return psycopg.connect(with_tcp_timeouts(dsn), autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT,
                               application_name="pgtenant-registry")
    except psycopg.Error as exc:
        raise RegistryError(f"cannot connect to the registry: {exc}") from exc


def init(dsn: str) -> None:
    """Create the registry's schema, tables and change trigger (idempotent)."""
    with connect(dsn) as conn, conn.transaction():
        for statement in DDL:
            conn.execute(statement)


def read_rows(conn: psycopg.Connection) -> RegistryRows:
    """The whole registry as the connection's transaction sees it."""
    try:
        tenants = [tuple(r) for r in conn.execute(SELECT_TENANTS).fetchall()]
        settings = [tuple(r) for r in conn.execute(SELECT_SETTINGS).fetchall()]
        users = [tuple(r) for r in conn.execute(SELECT_USERS).fetchall()]
        row = conn.execute(SELECT_VERSION).fetchone()
    except psycopg.errors.UndefinedTable as exc:
        raise RegistryError(f"the registry has no {SCHEMA} tables: run `pgtenant registry init`") from exc
    except psycopg.Error as exc:
        raise RegistryError(f"cannot read the registry: {exc}") from exc
    return RegistryRows(tenants, settings, users, int(row[0]) if row else 0)  # type: ignore[arg-type]


def read(dsn: str) -> RegistryRows:
    """The whole registry as one consistent snapshot (one REPEATABLE READ transaction), given up after
    READ_TIMEOUT_MS waiting on a lock or reading (RegistryError)."""
    with connect(dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            for statement in READ_TIMEOUTS:
                conn.execute(statement)
            return read_rows(conn)


def load(path: str | os.PathLike[str]) -> Config:
    """The config file, with the registry's tenants and users over it when its [registry] has a dsn (blocking);
    ConfigError for any row the validation refuses (`pgtenant check-config`: Loader rejects such rows alone)."""
    config = load_config(path)
    if not config.registry.enabled:
        return config
    assert config.registry.dsn is not None
    merged = load_config(path, overlay(read(config.registry.dsn)))
    registryplace.check(merged)
    check_identity(merged, config.registry.dsn)
    return merged


def check_identity(config: Config, dsn: str, conn: psycopg.Connection | None = None,
                   before: Config | None = None) -> None:
    """The placement check by identity: no database tenant's backend database is the registry's, as PostgreSQL
    reports it (proxy/dbidentity.py; connecting to the registry, unless `conn` is given, only when there are
    database tenants; those `before` had alike are not asked again)."""
    tenants = dbidentity.database_tenants(config, before)
    if not tenants:
        return
    try:
        if conn is not None:
            IDENTITY.check(tenants, conn)
            return
        with connect(dsn, autocommit=True) as registry:
            IDENTITY.check(tenants, registry)
    except psycopg.Error as exc:
        raise RegistryError(f"cannot compare the registry's identity: {str(exc).strip()}") from exc


def checked(path: str | os.PathLike[str], rows: RegistryRows, dsn: str | None = None) -> registryrows.Checked:
    """The file with `rows` over it, each row the validation refuses rejected alone (registryrows.check)."""
    def validate(over: RegistryOverlay) -> Config:
        merged = load_config(path, over)
        registryplace.check(merged, dsn=dsn)
        registry = dsn if dsn is not None else merged.registry.dsn
        if registry is not None:
            check_identity(merged, registry)  # (a tenant found the registry's own database: its row rejected)
        return merged

    return registryrows.check(rows, validate)


class Loader:
    """The proxy's (re)loads of the file and the registry (blocking): a registry row the validation refuses is
    rejected alone and left out (red team 9b2 P4: one bad row froze every later change, removals included), on every
    instance alike: nothing of an earlier load is kept, so a new instance serves what an old one does. `rejected`:
    the refused rows' problems of the load in force (a load counts once `applied()` says so: the proxy applied its
    config); `last_rejected`: of the last load, applied or not."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        self.rejected: Mapping[str, str] = {}
        self.last_rejected: Mapping[str, str] = {}
        self._loaded: Mapping[str, str] | None = None  # the last load's rejected rows, not yet applied

    def __call__(self) -> Config:
        config = load_config(self.path)
        if not config.registry.enabled:
            self._loaded = self.last_rejected = {}
            return config
        assert config.registry.dsn is not None
        result = checked(self.path, read(config.registry.dsn))
        self._loaded = self.last_rejected = result.rejected
        return result.config

    def applied(self) -> None:
        """The config of the last load is now in force."""
        if self._loaded is not None:
            self.rejected, self._loaded = self._loaded, None


def loader(path: Path) -> Callable[[], Config]:
    return lambda: load(path)


# --- changes (the CLI) ---------------------------------------------------------------------


def _rejected(conn: psycopg.Connection, config_path: Path, dsn: str) -> Mapping[str, str]:
    """Inside the change's transaction: the rows the proxy would reject alone, merged over the config file
    (ConfigError when the file is the problem: the caller's transaction rolls back)."""
    return checked(config_path, read_rows(conn), dsn=dsn).rejected


def change(dsn: str, config_path: Path | None, apply: Callable[[psycopg.Connection], None]) -> int:
    """Run `apply` in one transaction, validated against the config file (if given) before it commits: refused
    (ConfigError) if it leaves a row the proxy would reject that was not rejected before (rows already rejected do
    not hold other changes up: a removal always goes through); the registry's change number after it (a proxy has
    applied it once its `reloaded` log line shows this number)."""
    try:
        with connect(dsn) as conn:
            with conn.transaction():
                before = {} if config_path is None else _rejected(conn, config_path, dsn)
                apply(conn)
                if config_path is not None:
                    after = _rejected(conn, config_path, dsn)
                    new = [problem for row, problem in after.items() if before.get(row) != problem]
                    if new:
                        raise ConfigError(new[0])
                row = conn.execute(SELECT_VERSION).fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error as exc:
        raise RegistryError(str(exc).strip()) from exc


def add_tenant(conn: psycopg.Connection, name: str, table: Mapping[str, Any]) -> None:
    strategy, backend, database, options, settings = tenant_row(table)
    if conn.execute(f"SELECT 1 FROM {SCHEMA}.tenants WHERE name = %s", (name,)).fetchone():
        raise ConfigError(f"tenants.{name}: already in the registry")
    conn.execute(f"INSERT INTO {SCHEMA}.tenants (name, strategy, backend, database, options) "
                 "VALUES (%s, %s, %s, %s, %s)", (name, strategy, backend, database, Jsonb(options)))
    for key, value in settings.items():
        conn.execute(f"INSERT INTO {SCHEMA}.tenant_settings (tenant, key, value) VALUES (%s, %s, %s)",
                     (name, key, Jsonb(value)))


def move_tenant(conn: psycopg.Connection, name: str, backend: str | None, database: str | None) -> None:
    row = conn.execute(f"UPDATE {SCHEMA}.tenants SET backend = coalesce(%s, backend), "
                       "database = coalesce(%s, database), updated_at = now() WHERE name = %s RETURNING name",
                       (backend, database, name)).fetchone()
    if row is None:
        raise ConfigError(f"tenants.{name}: not in the registry")


def add_user(conn: psycopg.Connection, name: str, tenant: str, verifier: str, options: Mapping[str, Any],
             *, registry_tenant: bool = False) -> None:
    """`registry_tenant`: the tenant must be the registry's (no config file to check a file tenant against; red team
    9b2 P4: a typo's user was written, then rejected by every proxy)."""
    if conn.execute(f"SELECT 1 FROM {SCHEMA}.users WHERE name = %s", (name,)).fetchone():
        raise ConfigError(f"users.{name}: already in the registry")
    if registry_tenant and not conn.execute(f"SELECT 1 FROM {SCHEMA}.tenants WHERE name = %s", (tenant,)).fetchone():
        raise ConfigError(f"users.{name}.tenant: unknown tenant {tenant!r} (not in the registry; for a tenant of "
                          "the config file, pass --config to check the user against it)")
    conn.execute(f"INSERT INTO {SCHEMA}.users (name, tenant, verifier, options) VALUES (%s, %s, %s, %s)",
                 (name, tenant, verifier, Jsonb(dict(options))))


def remove_user(conn: psycopg.Connection, name: str) -> None:
    if conn.execute(f"DELETE FROM {SCHEMA}.users WHERE name = %s RETURNING name", (name,)).fetchone() is None:
        raise ConfigError(f"users.{name}: not in the registry")


def set_verifier(conn: psycopg.Connection, name: str, verifier: str) -> None:
    row = conn.execute(f"UPDATE {SCHEMA}.users SET verifier = %s, updated_at = now() WHERE name = %s RETURNING name",
                       (verifier, name)).fetchone()
    if row is None:
        raise ConfigError(f"users.{name}: not in the registry")
