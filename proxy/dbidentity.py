"""Whether a database tenant's backend database is the registry's own, asked of PostgreSQL (red team 9b N6)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg

from proxy.config import BackendConfig, Config, ConfigError, TenantConfig
from proxy.dbcheck import connect_kwargs
from proxy.logs import get_logger

log = get_logger("pgtenant.registry")

# registryplace.py compares the addresses a DSN names; this compares what the server says it is, so every route to
# the registry's database counts (a second address, a TCP forwarder or balancer, a pooler's alias, a service file).
# A cluster is named by its system identifier (pg_control_system(): EXECUTE is PUBLIC's on PostgreSQL 15 and 18, so
# any role reads it) and a database by its oid. Where a server revoked that function, the tenant's connection shows
# itself instead: it logs in under a random application_name, and the registry's connection looks for that backend
# in its own pg_stat_activity (every role sees every backend's pid, database and application_name there).
SYSTEM = "SELECT system_identifier FROM pg_catalog.pg_control_system()"
DATABASE = "SELECT oid, pg_catalog.pg_backend_pid() FROM pg_catalog.pg_database WHERE datname = current_database()"
SEEN = "SELECT datid FROM pg_catalog.pg_stat_activity WHERE pid = %s AND application_name = %s"
KNOWN_FOR = 300.0  # seconds a target found different is not asked again (a NOTIFY reload checks again only the new)
UNREACHABLE_FOR = 60.0  # seconds a target that could not be reached is not tried again (its address check stands)
CONCURRENCY = 32  # targets asked at a time (each a connection and a login to that backend)
_REGISTRY_CONN = threading.Lock()  # the registry's connection, used by one comparison at a time


@dataclass(frozen=True, slots=True)
class Identity:
    """What a connection's server says it is: its cluster (None: this role may not read pg_control_system()), its
    database's oid, and the backend process serving the connection."""

    system: int | None
    database: int
    pid: int


def same(registry: Identity, tenant: Identity, seen: int | None) -> bool:
    """Whether the tenant's connection reached the registry's database: the same cluster and database oid; when a
    cluster is unknown, whether the registry's server listed the tenant's backend (`seen`: its database oid there)
    in the registry's database. Clones of one cluster (a promoted standby, a restored backup) share a system
    identifier and oids: they count as the same (fail closed)."""
    if registry.system is not None and tenant.system is not None:
        return registry.system == tenant.system and registry.database == tenant.database
    return seen is not None and seen == registry.database


def read(conn: psycopg.Connection) -> Identity:
    """The identity of `conn`'s server and database (within a savepoint where the connection is in a transaction)."""
    system = None
    try:
        with conn.transaction():
            row = conn.execute(SYSTEM).fetchone()
            system = int(row[0]) if row else None
    except psycopg.errors.InsufficientPrivilege:
        pass
    row = conn.execute(DATABASE).fetchone()
    assert row is not None  # current_database() is in pg_database
    return Identity(system, int(row[0]), int(row[1]))


Target = tuple[str, int, str, str]  # backend host, port, role, database


class Checker:
    """Compares each database tenant's backend database with the registry's, remembering targets found different
    (KNOWN_FOR) or unreachable (UNREACHABLE_FOR) so that a registry change reloaded by NOTIFY connects only to new
    ones."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._known: dict[tuple[int | None, int, Target], float] = {}  # (registry's cluster, database, target) -> until

    def check(self, tenants: list[tuple[TenantConfig, BackendConfig]], registry: psycopg.Connection) -> None:
        """ConfigError naming the first of `tenants` whose backend database is the registry's (blocking). Each
        target (backend host, port, role, database) not known is asked once, up to CONCURRENCY at a time: the first
        load of thousands of database tenants used to connect to them one after the other (up to 5 s each for an
        unreachable one)."""
        mine = read(registry)
        now = self.clock()
        self._known = {k: until for k, until in self._known.items() if until > now}
        asks: dict[tuple[int | None, int, Target], tuple[BackendConfig, str]] = {}
        for tenant, backend in tenants:
            key = (mine.system, mine.database, (backend.host, backend.port, backend.user, tenant.database))
            if key not in self._known:
                asks.setdefault(key, (backend, tenant.database))
        verdicts = _compare_all(mine, list(asks.values()), registry)
        found = dict(zip(asks, verdicts, strict=True))
        now = self.clock()
        for key, verdict in found.items():
            if verdict is not None and not verdict:
                self._known[key] = now + KNOWN_FOR
            elif verdict is None:
                self._known[key] = now + UNREACHABLE_FOR
        for tenant, backend in tenants:
            key = (mine.system, mine.database, (backend.host, backend.port, backend.user, tenant.database))
            if found.get(key):
                raise ConfigError(
                    f"tenants.{tenant.name}: a database-strategy tenant may not be served from the registry's database "
                    f"(backend {backend.describe()} database {tenant.database!r} is the registry's own database, as "
                    "PostgreSQL itself reports: the same cluster and database oid): its sessions could take the "
                    "instance slots' advisory locks and NOTIFY the registry's channel; put the registry in a database "
                    "of its own")


def database_tenants(config: Config, before: Config | None = None) -> list[tuple[TenantConfig, BackendConfig]]:
    """The database-strategy tenants with their backends (those `before` already had alike left out)."""
    seen = set() if before is None else {_target(t, b) for t, b in database_tenants(before)}
    return [(t, b) for t in config.tenants.values() if t.strategy == "database"
            and _target(t, b := config.backend_for(t)) not in seen]


def _target(tenant: TenantConfig, backend: BackendConfig) -> tuple[str, str, int, str, str]:
    return (tenant.name, backend.host, backend.port, backend.user, tenant.database)


def _compare_all(registry: Identity, targets: list[tuple[BackendConfig, str]],
                 conn: psycopg.Connection) -> list[bool | None]:
    """_compare for each (backend, database), up to CONCURRENCY at a time (the registry's connection, needed only
    where a cluster's identity is unknown, used by one at a time)."""
    if len(targets) <= 1:
        return [_compare(registry, backend, database, conn) for backend, database in targets]
    with ThreadPoolExecutor(min(CONCURRENCY, len(targets)), thread_name_prefix="pgtenant-identity") as pool:
        return list(pool.map(lambda target: _compare(registry, target[0], target[1], conn), targets))


def _compare(registry: Identity, backend: BackendConfig, database: str, conn: psycopg.Connection) -> bool | None:
    """Whether `database` of `backend` is the registry's (None: it could not be reached; logged)."""
    tag = f"pgtenant-identity-{os.urandom(8).hex()}"
    try:
        with psycopg.connect(autocommit=True, **connect_kwargs(  # type: ignore[arg-type]
                backend, database, min(backend.connect_timeout, 5.0), application_name=tag)) as tenant:
            theirs = read(tenant)
            seen = None
            if registry.system is None or theirs.system is None:
                with _REGISTRY_CONN, conn.transaction():
                    conn.execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
                    row = conn.execute(SEEN, (theirs.pid, tag)).fetchone()
                seen = None if row is None or row[0] is None else int(row[0])
    except psycopg.Error as exc:
        log.warning("identity_unchecked", backend=backend.describe(), database=database,
                    error=str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return None
    return same(registry, theirs, seen)

