"""Pooled-proxy helpers: is pooling built in, background clients that contend for a pool, the admin console."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import ProxyProcess, prepare_backend, tenants_proxy

ADMIN_USER, ADMIN_PASSWORD = "pool_ops", "pool-ops-pw"


def pooling_missing_reason() -> str | None:
    """Why this build cannot run a proxy in transaction mode (None when its config takes a `[pool]` table)."""
    from proxy.config import ConfigError, parse_config

    raw = {
        "backends": {"main": {}},
        "tenants": {"acme": {"strategy": "shared", "database": "saas", "tenant_id": "acme"}},
        "pool": {"pool_mode": "transaction", "pool_size": 1},
    }
    try:
        parse_config(raw, base=Path(tempfile.gettempdir()))
    except ConfigError as exc:
        return f"no transaction pooling in this build (issue 16; its [pool] table is refused: {exc})"
    return None


def require_pooling() -> None:
    """Skip the calling test where the build has no pooling yet (these tests go in with issue 16's branches)."""
    reason = pooling_missing_reason()
    if reason is not None:
        import pytest

        pytest.skip(reason)


def start_pooled(pg: PgCluster, workdir: Path, tenants: dict[str, dict[str, Any]], roles: dict[str, str],
                 pool: dict[str, Any], rows: int) -> ProxyProcess:
    """A started proxy with `[pool]` = `pool` and the admin user, for database-strategy `tenants` (tenants_proxy's
    shape; each database gets a table orders of `rows` rows when it does not exist yet). Skips without pooling."""
    require_pooling()
    prepare_backend(pg)
    for t in tenants.values():
        db = t["keys"]["database"]
        if not pg.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)):
            pg.create_database(db)
            pg.execute("CREATE TABLE public.orders (id int PRIMARY KEY, amount numeric NOT NULL);"
                       f"INSERT INTO public.orders SELECT g, g FROM generate_series(1, {rows}) g", dbname=db)
    p = tenants_proxy(pg, workdir, tenants, roles)
    p.pool = dict(pool)
    p.admin_users = {ADMIN_USER: ADMIN_PASSWORD}
    return p.start()


def admin_show(proxy: ProxyProcess, what: str) -> list[dict[str, str | None]]:
    """`SHOW <what>` on the proxy's admin console (the proxy needs admin_users={ADMIN_USER: ADMIN_PASSWORD})."""
    dsn = (f"host=127.0.0.1 port={proxy.port} user={ADMIN_USER} password={ADMIN_PASSWORD} dbname=pgtenant "
           "sslmode=disable connect_timeout=10")
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"SHOW {what}")  # the console answers the simple protocol only
        columns = [c.name for c in cur.description or ()]
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]


def pool_row(proxy: ProxyProcess, tenant: str) -> dict[str, str | None]:
    """The one SHOW POOLS row of `tenant`'s pool."""
    rows = [r for r in admin_show(proxy, "POOLS") if r.get("tenant") == tenant]
    assert len(rows) == 1, rows
    return rows[0]


def pool_count(row: dict[str, str | None], word: str) -> int:
    """The number in the one column of a SHOW POOLS row whose name has `word` in it ("pinned", "waiting")."""
    [value] = [v for k, v in row.items() if word in k]
    return int(value or 0)


def server_pids(pg: PgCluster, dbname: str, role: str) -> list[int]:
    """The client backends of `role` on `dbname` right now (the proxy's server connections), seen directly."""
    rows = pg.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND usename = %s "
                      "AND backend_type = 'client backend' ORDER BY pid", (dbname, role))
    return [r[0] for r in rows]


class Churn:
    """Clients of one tenant that keep running short transactions on other threads, so that a pool smaller than
    the number of clients is contended and servers pass from client to client while a test runs.

    Each transaction runs `probe` (a one-row SELECT) and hands its row to `check`, which raises on anything
    wrong (another client's setting, a cancelled query...). `errors` collects what went wrong; `pids` every
    server pid seen (the probe's first column); `notices`/`notifies` what reached these clients unasked.
    """

    def __init__(self, dsn: str, clients: int = 3, probe: str = "SELECT pg_backend_pid()",
                 check: Callable[[tuple[Any, ...]], None] | None = None, pause: float = 0.005) -> None:
        self.dsn, self.clients, self.probe, self.check, self.pause = dsn, clients, probe, check, pause
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.pids: set[int] = set()
        self.notifies: list[tuple[str, str]] = []
        self.rounds = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._started = threading.Barrier(clients + 1)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.add_notify_handler(lambda n: self.notifies.append((n.channel, n.payload)))
                self._started.wait(60)
                while not self.stop_event.is_set():
                    row = conn.execute(self.probe).fetchone()
                    assert row is not None
                    if self.check is not None:
                        self.check(row)
                    with self._lock:
                        self.pids.add(row[0])
                        self.rounds += 1
                    self.stop_event.wait(self.pause)
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)
            self._started.abort()

    def __enter__(self) -> Churn:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.clients)]
        for t in self._threads:
            t.start()
        try:
            self._started.wait(60)  # every churn client connected and about to loop
        except threading.BrokenBarrierError:
            self.stop()  # raises with the clients' errors
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(60)
        self._threads = []
        assert not self.errors, f"churn clients failed: {self.errors!r}"
