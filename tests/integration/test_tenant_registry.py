"""The tenant registry in PostgreSQL: the CLI's changes reach running proxies by LISTEN/NOTIFY (issue 19 point 2)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from proxy.auth.scram import make_verifier
from tests.support.balancer import Forwarder
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.proxyproc import ProxyProcess, prepare_backend

REGISTRY_DB = "pgt_registry"
# Generous: a change applies within about a second (NOTIFY, then the reload's discovery and preflight of every
# tenant); the bound only keeps a broken build from hanging the suite.
APPLY_WAIT = 20.0


def pgtenant(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=60,
                          input=stdin, env={**os.environ, **(env or {})}, check=False)


def _registry_dsn(pg: PgCluster, dbname: str = REGISTRY_DB) -> str:
    return pg.dsn(dbname=dbname)


@pytest.fixture(scope="module")
def registry(pg: PgCluster) -> str:
    prepare_backend(pg)
    pg.execute(f"DROP DATABASE IF EXISTS {REGISTRY_DB} WITH (FORCE)")
    pg.execute(f"CREATE DATABASE {REGISTRY_DB}")
    dsn = _registry_dsn(pg)
    res = pgtenant("registry", "init", "--dsn", dsn)
    assert res.returncode == 0, res.stderr
    assert pgtenant("registry", "init", "--dsn", dsn).returncode == 0  # idempotent
    return dsn


def _proxy(pg: PgCluster, workdir: Path, dsn: str) -> ProxyProcess:
    return ProxyProcess(pg, workdir, registry={"dsn": dsn, "reconnect_delay": 0.2})


@pytest.fixture(scope="module")
def rproxy(pg: PgCluster, registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    p = _proxy(pg, tmp_path_factory.mktemp("pgtenant-registry"), registry)
    p.start()
    yield p
    p.stop()


def add_user(p: ProxyProcess, name: str, tenant: str, password: str) -> subprocess.CompletedProcess:
    p.extra_users[name] = (tenant, password)  # the test's own book of passwords (the config file is not written)
    return pgtenant("users", "add", name, "--tenant", tenant, "--config", str(p.config_path),
                    "--password-env", "PGT_TEST_PW", env={"PGT_TEST_PW": password})


def change_number(res: subprocess.CompletedProcess) -> int:
    """The registry change number the CLI printed (`... (registry change N)`)."""
    assert res.returncode == 0, res.stderr
    m = re.search(r"\(registry change (\d+)\)$", res.stdout.strip())
    assert m, res.stdout
    return int(m.group(1))


def applied(p: ProxyProcess, version: int) -> dict:
    """Wait for the proxy's `reloaded` log line at that registry change or a later one (polling the log, not
    logging in: a login tried before the change applies counts as a failed one for the login throttle)."""
    def found() -> dict | None:
        return next((e for e in p.log_events()
                     if e.get("event") == "reloaded" and e.get("registry_version", -1) >= version), None)

    return until(found, APPLY_WAIT, interval=0.05, what=f"registry change {version} applied")


def count(p: ProxyProcess, user: str) -> int | None:
    try:
        with psycopg.connect(p.dsn(user), autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM orders").fetchone()
            return None if row is None else int(row[0])
    except psycopg.OperationalError:
        return None


def test_a_user_added_through_the_cli_connects_without_a_restart(rproxy: ProxyProcess) -> None:
    with psycopg.connect(rproxy.dsn("alice"), autocommit=True) as before:  # a session open during the change
        applied(rproxy, change_number(add_user(rproxy, "carol", "acme", "carol-pw")))
        assert count(rproxy, "carol") == 200
        assert before.execute("SELECT count(*) FROM orders").fetchone() == (200,)
    events = [e for e in rproxy.log_events() if e.get("event") == "registry_applied"]
    assert events, "no registry_applied log line"


def test_the_registry_stores_a_verifier_never_the_password(rproxy: ProxyProcess, pg: PgCluster) -> None:
    add_user(rproxy, "dora", "acme", "dora-secret-pw")
    rows = pg.execute("SELECT verifier FROM pgtenant_registry.users WHERE name = 'dora'", dbname=REGISTRY_DB)
    assert rows and rows[0][0].startswith("SCRAM-SHA-256$4096:") and "dora-secret-pw" not in rows[0][0]


def test_a_removed_users_session_ends_with_a_clear_error(rproxy: ProxyProcess) -> None:
    applied(rproxy, change_number(add_user(rproxy, "eve", "acme", "eve-pw")))
    with psycopg.connect(rproxy.dsn("eve"), autocommit=True) as conn:
        change_number(pgtenant("users", "remove", "eve", "--config", str(rproxy.config_path)))

        def ended() -> str | None:
            try:
                conn.execute("SELECT 1")
            except psycopg.Error as exc:
                return str(exc)
            return None

        message = until(ended, APPLY_WAIT, interval=0.05, what="eve's session to end")
        assert 'role "eve" is no longer allowed to connect' in message
    assert count(rproxy, "eve") is None


def test_a_removed_users_running_query_is_ended(rproxy: ProxyProcess, pg: PgCluster) -> None:
    """Red team 9b2 P5: the statements already sent in one Query ran after the user's removal applied (an INSERT ~3 s
    later), the running one was not cancelled. At revocation the proxy ends the session's backend process (red team
    9b3 F1: a cancel stopped only the running statement) and the session: the rest of the Query does not run, and
    the client gets the 28000 at once."""
    applied(rproxy, change_number(add_user(rproxy, "midq", "acme", "midq-pw")))
    outcome: list[object] = []
    with psycopg.connect(rproxy.dsn("midq"), autocommit=True) as conn:
        def run() -> None:
            try:
                outcome.append(conn.execute("SELECT pg_sleep(60); SELECT 'second statement ran'").fetchall())
            except psycopg.Error as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        try:
            until(lambda: pg.execute("SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%' "
                                     "AND state = 'active'") or None, APPLY_WAIT, interval=0.05, what="the query runs")
            change_number(pgtenant("users", "remove", "midq", "--config", str(rproxy.config_path)))
        finally:
            thread.join(APPLY_WAIT * 2)
        assert not thread.is_alive() and len(outcome) == 1
        assert isinstance(outcome[0], psycopg.OperationalError), outcome
        assert 'role "midq" is no longer allowed to connect' in str(outcome[0]), outcome
        assert conn.closed
    until(lambda: not pg.execute("SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'") or None,
          APPLY_WAIT, interval=0.05, what="the removed user's backend process ended")


def test_a_tenant_added_through_the_cli_serves_its_users(rproxy: ProxyProcess) -> None:
    res = pgtenant("tenants", "add", "newco", "--strategy", "shared", "--database", "saas", "--tenant-id", "newco",
                   "--set", "max_client_connections=5", "--config", str(rproxy.config_path))
    change_number(res)
    applied(rproxy, change_number(add_user(rproxy, "nina", "newco", "nina-pw")))
    assert count(rproxy, "nina") == 0
    listing = pgtenant("tenants", "list", "--config", str(rproxy.config_path))
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert "newco\tshared\tmain\tsaas\t1\tregistry" in lines  # the merged view: its backend is the file's only one
    assert any(re.fullmatch(r"acme\tshared\tmain\tsaas\t\d+\tfile", line) for line in lines), lines


def test_the_cli_refuses_a_change_the_proxy_would_reject(rproxy: ProxyProcess, pg: PgCluster) -> None:
    res = pgtenant("tenants", "add", "badco", "--strategy", "shared", "--database", "saas",
                   "--config", str(rproxy.config_path))  # no tenant_id
    assert res.returncode == 2 and "tenants.badco.tenant_id: required" in res.stderr
    assert not pg.execute("SELECT 1 FROM pgtenant_registry.tenants WHERE name = 'badco'", dbname=REGISTRY_DB)


def test_a_malformed_row_is_rejected_alone_and_later_changes_apply(rproxy: ProxyProcess, pg: PgCluster) -> None:
    """Red team 9b2 P4: one rejected row froze every later change on every instance (a `users remove` after it was
    applied nowhere, /readyz green). The row is rejected alone (logged, shown in /readyz and a metric), and every
    other change, the removal too, applies."""
    applied(rproxy, change_number(add_user(rproxy, "mira", "acme", "mira-pw")))
    before = sum(1 for e in rproxy.log_events() if e.get("event") == "registry_row_rejected")
    pg.execute("INSERT INTO pgtenant_registry.users (name, tenant, verifier, options) "
               "VALUES ('mallory', 'acme', %s, '{\"profile\": \"wizard\"}')", (str(make_verifier("m-pw")),),
               dbname=REGISTRY_DB)
    try:
        def rejected() -> dict | None:
            found = [e for e in rproxy.log_events() if e.get("event") == "registry_row_rejected"]
            return found[before] if len(found) > before else None

        event = until(rejected, APPLY_WAIT, interval=0.05, what="registry_row_rejected")
        assert event["row"] == "users.mallory" and "users.mallory.profile" in event["problem"]
        assert count(rproxy, "alice") == 200  # the rest serves on
        res = pgtenant("users", "remove", "mira", "--config", str(rproxy.config_path))  # not held up by mallory
        applied(rproxy, change_number(res))
        assert count(rproxy, "mira") is None
        status, detail = ready(rproxy)
        assert status == 200 and detail["registry_rejected"] == ["users.mallory"], detail
        with urllib.request.urlopen(rproxy.metrics_url + "/metrics", timeout=10) as r:
            assert "pgtenant_registry_rejected_rows 1.0" in r.read().decode().splitlines()
    finally:
        pg.execute("DELETE FROM pgtenant_registry.users WHERE name = 'mallory'", dbname=REGISTRY_DB)
    until(lambda: ready(rproxy)[1].get("registry_rejected") == [] or None, APPLY_WAIT, interval=0.1,
          what="no row rejected once it is gone")


def test_the_cli_without_a_config_refuses_a_user_of_a_tenant_the_registry_lacks(rproxy: ProxyProcess) -> None:
    """Red team 9b2 P4 repro 1: `users add newguy --tenant acmee` (a typo) with only PGTENANT_REGISTRY_DSN was
    written with a note; every proxy then rejected it. Without a config file the tenant must be the registry's."""
    dsn = rproxy.registry["dsn"]
    res = pgtenant("users", "add", "newguy", "--tenant", "acmee", "--password-env", "PGT_TEST_PW",
                   env={"PGT_TEST_PW": "x-pw", "PGTENANT_REGISTRY_DSN": dsn})
    assert res.returncode == 2 and "unknown tenant 'acmee' (not in the registry" in res.stderr, res.stderr


def ready(p: ProxyProcess) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(p.metrics_url + "/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_readyz_reflects_the_registry_connection_and_it_reconnects(rproxy: ProxyProcess, pg: PgCluster) -> None:
    assert until(lambda: ready(rproxy)[0] == 200 or None, APPLY_WAIT, interval=0.1, what="ready")
    assert ready(rproxy)[1]["registry"] is True
    with pg.connect(dbname=REGISTRY_DB) as held:  # open before the database refuses new connections
        pg.execute(f"ALTER DATABASE {REGISTRY_DB} ALLOW_CONNECTIONS false")
        try:
            pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE application_name = 'pgtenant-listen'")
            detail = until(lambda: ready(rproxy)[0] == 503 and ready(rproxy)[1], APPLY_WAIT, interval=0.1,
                           what="not ready without the registry")
            assert detail["registry"] is False
            assert count(rproxy, "alice") == 200  # serving goes on with the last good config
            # A change nobody hears of (no LISTEN connection): the reconnect finds the registry moved on.
            rproxy.extra_users["gus"] = ("acme", "gus-pw")
            held.execute("INSERT INTO pgtenant_registry.users (name, tenant, verifier) VALUES ('gus', 'acme', %s)",
                         (str(make_verifier("gus-pw")),))
            version = held.execute("SELECT max(version) FROM pgtenant_registry.changes").fetchone()[0]
        finally:
            pg.execute(f"ALTER DATABASE {REGISTRY_DB} ALLOW_CONNECTIONS true")
    until(lambda: ready(rproxy)[0] == 200 or None, APPLY_WAIT, interval=0.1, what="ready again")
    applied(rproxy, version)
    assert count(rproxy, "gus") == 200


def failed_reloads(p: ProxyProcess) -> float:
    with urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    line = next((x for x in text.splitlines() if x.startswith('pgtenant_config_reloads_total{outcome="rejected"}')),
                None)
    return 0.0 if line is None else float(line.rsplit(" ", 1)[1])


def _reloads(p: ProxyProcess) -> int:
    return sum(1 for e in p.log_events() if e.get("event") == "reloaded")


def test_a_change_committed_below_an_applied_one_while_disconnected_is_applied(
        rproxy: ProxyProcess, pg: PgCluster, registry: str) -> None:
    """Red team 8b F5: change numbers are taken at a change's first write, not at its commit. A removal (number N)
    commits while the proxy's LISTEN connection is down, after a later change (N + 1) was applied: the reconnect
    reloads anyway, and the removed user is refused."""
    applied(rproxy, change_number(add_user(rproxy, "trudy", "acme", "trudy-pw")))
    assert count(rproxy, "trudy") == 200
    with psycopg.connect(registry) as operator:
        operator.execute("DELETE FROM pgtenant_registry.users WHERE name = 'trudy'")  # change N, not committed
        later = change_number(add_user(rproxy, "victor", "acme", "victor-pw"))  # change N + 1, committed
        applied(rproxy, later)
        until(lambda: ready(rproxy)[0] == 200 or None, APPLY_WAIT, interval=0.1, what="ready")
        pg.execute(f"ALTER DATABASE {REGISTRY_DB} ALLOW_CONNECTIONS false")
        try:
            pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE application_name = 'pgtenant-listen'")
            until(lambda: ready(rproxy)[1].get("registry") is False or None, APPLY_WAIT, interval=0.1,
                  what="the LISTEN connection down")
            before = _reloads(rproxy)
            operator.commit()  # nobody hears of it; max(version) stays N + 1, the number already applied
        finally:
            pg.execute(f"ALTER DATABASE {REGISTRY_DB} ALLOW_CONNECTIONS true")
    until(lambda: _reloads(rproxy) > before or None, APPLY_WAIT, interval=0.05, what="the reconnect's reload")
    until(lambda: ready(rproxy)[0] == 200 or None, APPLY_WAIT, interval=0.1, what="ready again")
    assert count(rproxy, "trudy") is None
    assert count(rproxy, "victor") == 200


def test_a_reload_that_cannot_read_the_registry_is_retried_and_readyz_waits_for_it(
        rproxy: ProxyProcess, pg: PgCluster) -> None:
    """Red team 8b F7: the LISTEN connection hears a removal but the reload cannot read the registry (here: the
    database refuses new connections, as in a failover). /readyz says not ready (the registry connection itself is
    up), the log says it once, and the reload is tried again until the removal applies."""
    applied(rproxy, change_number(add_user(rproxy, "uma", "acme", "uma-pw")))
    assert count(rproxy, "uma") == 200
    behind = sum(1 for e in rproxy.log_events() if e.get("event") == "registry_behind")
    failed = failed_reloads(rproxy)
    with pg.connect(dbname=REGISTRY_DB) as held:  # open before the database refuses new connections
        pg.execute(f"ALTER DATABASE {REGISTRY_DB} ALLOW_CONNECTIONS false")
        try:
            held.execute("DELETE FROM pgtenant_registry.users WHERE name = 'uma'")
            version = held.execute("SELECT max(version) FROM pgtenant_registry.changes").fetchone()[0]
            detail = until(lambda: ready(rproxy)[0] == 503 and ready(rproxy)[1], APPLY_WAIT, interval=0.1,
                           what="not ready while the removal is unapplied")
            assert detail["registry"] is True and detail["registry_current"] is False
            until(lambda: failed_reloads(rproxy) >= failed + 3 or None, APPLY_WAIT, interval=0.1,
                  what="the reload tried again")
            logged = [e for e in rproxy.log_events() if e.get("event") == "registry_behind"][behind:]
            warned = [e for e in logged if e.get("level") == "warning"]
            assert len(warned) == 1 and len(logged) >= 3, logged  # a warning once; the retries at debug level
            assert "not currently accepting connections" in warned[0]["problem"]
        finally:
            pg.execute(f"ALTER DATABASE {REGISTRY_DB} ALLOW_CONNECTIONS true")
    applied(rproxy, version)
    assert count(rproxy, "uma") is None
    until(lambda: ready(rproxy)[0] == 200 or None, APPLY_WAIT, interval=0.1, what="ready again")
    assert any(e.get("event") == "registry_caught_up" for e in rproxy.log_events())


def test_a_reload_waiting_on_a_registry_lock_gives_up_and_readyz_waits_for_it(
        rproxy: ProxyProcess, pg: PgCluster) -> None:
    """Red team 9b2 P3: an ACCESS EXCLUSIVE lock on a registry table (an operator's ALTER TABLE, or one queued behind
    an idle reader) held the reload's read for as long as it lasted: the removed user logged in and /readyz stayed
    green. The read now gives up after LOCK_TIMEOUT_MS (`unreachable`: retried, not current) and the removal applies
    once the lock is gone."""
    applied(rproxy, change_number(add_user(rproxy, "luke", "acme", "luke-pw")))
    behind = sum(1 for e in rproxy.log_events() if e.get("event") == "registry_behind")
    with pg.connect(dbname=REGISTRY_DB, autocommit=False) as locker:
        locker.execute("LOCK TABLE pgtenant_registry.tenant_settings IN ACCESS EXCLUSIVE MODE")
        try:
            pg.execute("DELETE FROM pgtenant_registry.users WHERE name = 'luke'", dbname=REGISTRY_DB)
            version = pg.execute("SELECT max(version) FROM pgtenant_registry.changes", dbname=REGISTRY_DB)[0][0]
            detail = until(lambda: ready(rproxy)[0] == 503 and ready(rproxy)[1], APPLY_WAIT, interval=0.1,
                           what="not ready while the read waits on the lock")
            assert detail["registry"] is True and detail["registry_current"] is False
            logged = until(lambda: [e for e in rproxy.log_events() if e.get("event") == "registry_behind"][behind:]
                           or None, APPLY_WAIT, interval=0.1, what="registry_behind")
            assert "lock timeout" in logged[0]["problem"], logged  # (not the statement timeout)
        finally:
            locker.rollback()
    applied(rproxy, version)
    assert count(rproxy, "luke") is None
    until(lambda: ready(rproxy)[0] == 200 or None, APPLY_WAIT, interval=0.1, what="ready again")


def test_a_database_tenant_in_the_registrys_database_is_refused(rproxy: ProxyProcess, pg: PgCluster) -> None:
    """Red team 8b F2/F3, the config's lock: such a tenant could hold the instance slots' advisory locks and NOTIFY
    the registry's channel. The CLI refuses to add it; a row written by hand is rejected (alone) by the proxy and by
    check-config, and the rest serves on."""
    res = pgtenant("tenants", "add", "regco", "--strategy", "database", "--database", REGISTRY_DB,
                   "--config", str(rproxy.config_path))
    assert res.returncode == 2 and "tenants.regco: a database-strategy tenant may not be served from the " \
        "registry's database" in res.stderr, res.stderr
    assert not pg.execute("SELECT 1 FROM pgtenant_registry.tenants WHERE name = 'regco'", dbname=REGISTRY_DB)
    before = sum(1 for e in rproxy.log_events() if e.get("event") == "registry_row_rejected")
    pg.execute("INSERT INTO pgtenant_registry.tenants (name, strategy, database) VALUES ('regco', 'database', %s)",
               (REGISTRY_DB,), dbname=REGISTRY_DB)
    try:
        def rejected() -> dict | None:
            found = [e for e in rproxy.log_events() if e.get("event") == "registry_row_rejected"]
            return found[before] if len(found) > before else None

        event = until(rejected, APPLY_WAIT, interval=0.05, what="registry_row_rejected")  # (that row alone)
        assert event["row"] == "tenants.regco" and "tenants.regco: a database-strategy tenant may not be served " \
            f"from the registry's database (database '{REGISTRY_DB}'" in event["problem"]
        checked = pgtenant("check-config", str(rproxy.config_path))
        assert checked.returncode != 0 and "tenants.regco" in checked.stdout + checked.stderr
        assert count(rproxy, "alice") == 200
    finally:
        pg.execute("DELETE FROM pgtenant_registry.tenants WHERE name = 'regco'", dbname=REGISTRY_DB)


def test_a_database_tenant_cannot_take_the_slot_locks_nor_use_the_registry_channel(rproxy: ProxyProcess) -> None:
    """Red team 8b F2/F3, the policy's lock (whatever database the tenant is in): the slot class's two-key advisory
    locks and the registry's channel are refused, a literal at once, a parameter when the statement runs."""
    with psycopg.connect(rproxy.dsn("ivan"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="advisory lock class 1885828195"):
            conn.execute("SELECT pg_try_advisory_lock(1885828195, 3)")
        with pytest.raises(psycopg.errors.InvalidTextRepresentation, match="1885828195 is reserved for the proxy"):
            conn.execute("SELECT pg_try_advisory_lock(%s::int, 3)", (1885828195,))
        assert conn.execute("SELECT pg_try_advisory_lock(%s::int, 3)", (1885828196,)).fetchone() == (True,)
        assert conn.execute("SELECT pg_advisory_unlock(1885828196, 3)").fetchone() == (True,)
        for sql in ("LISTEN pgtenant_registry", "NOTIFY pgtenant_registry",
                    "SELECT pg_notify('pgtenant_registry', '1')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pgtenant_registry"):
                conn.execute(sql)
        with pytest.raises(psycopg.errors.InvalidTextRepresentation, match="channel pgtenant_registry is reserved"):
            conn.execute("SELECT pg_notify(%s, '1')", ("pgtenant_registry",))
        conn.execute("SELECT pg_notify(%s, '1')", ("jobs",))
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (7,)  # the session stays usable


def test_two_instances_on_one_registry_serve_the_same_users(
        pg: PgCluster, registry: str, rproxy: ProxyProcess, tmp_path: Path) -> None:
    other = _proxy(pg, tmp_path / "second", registry)
    other.start(provision=False)
    try:
        version = change_number(add_user(rproxy, "fred", "acme", "fred-pw"))
        other.extra_users["fred"] = ("acme", "fred-pw")
        for p in (rproxy, other):
            applied(p, version)
            assert count(p, "fred") == 200
    finally:
        other.stop()


@pytest.mark.parametrize(("database", "user", "rows"), [("initech", "ivan", 7), ("saas", "alice", 200),
                                                      ("saas", "gina", 40)])
def test_the_registry_schema_is_refused_to_a_tenant_whose_database_holds_it(
        rproxy: ProxyProcess, pg: PgCluster, database: str, user: str, rows: int) -> None:
    """The registry in a tenant's own database (database, shared and schema strategy), even readable by everyone
    (a mistake): the policy refuses it."""
    dsn = _registry_dsn(pg, database)
    assert pgtenant("registry", "init", "--dsn", dsn).returncode == 0
    try:
        pg.execute("GRANT USAGE ON SCHEMA pgtenant_registry TO PUBLIC; "
                   "GRANT SELECT ON pgtenant_registry.users TO PUBLIC", dbname=database)
        rproxy.reload("reloaded")  # the tenant is prepared again and sees the schema in its database
        with psycopg.connect(rproxy.dsn(user), autocommit=True) as conn:
            with pytest.raises(psycopg.Error, match="pgtenant_registry"):
                conn.execute("SELECT name, verifier FROM pgtenant_registry.users")
            conn.execute("SET search_path = pgtenant_registry, public")  # PostgreSQL gets public alone
            with pytest.raises(psycopg.errors.UndefinedTable):
                conn.execute("SELECT verifier FROM users")
            conn.execute("RESET search_path")
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (rows,)  # the session stays usable
            listed = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'pgtenant%'").fetchall()
            assert listed == []  # not even its name shows in the catalog
    finally:
        pg.execute("DROP SCHEMA pgtenant_registry CASCADE", dbname=database)
        rproxy.reload("reloaded")


# --- stateless replicas: a cancel landing on another instance (issue 19 point 3) ------------------------------------

PEER_SECRET = "0123456789abcdef0123456789abcdef-test"


@contextlib.contextmanager
def two_instances(pg: PgCluster, registry: str, tmp_path: Path,
                  a_workers: int = 1) -> Iterator[tuple[ProxyProcess, ProxyProcess]]:
    """Instances a (of `a_workers` worker processes) and b on one registry, each with a peer port."""
    keys = {"dsn": registry, "reconnect_delay": 0.2, "peer_port": 0, "peer_host": "127.0.0.1",
            "peer_secret": PEER_SECRET}
    a = ProxyProcess(pg, tmp_path / "a", registry=keys, server={"workers": a_workers} if a_workers > 1 else {})
    b = ProxyProcess(pg, tmp_path / "b", registry=keys)
    a.start(timeout=60)
    try:
        b.start(provision=False)
        yield a, b
    finally:
        b.stop()
        a.stop()


@pytest.fixture
def replicas(pg: PgCluster, registry: str, tmp_path: Path) -> Iterator[tuple[ProxyProcess, ProxyProcess]]:
    with two_instances(pg, registry, tmp_path) as pair:
        yield pair


def _cancelled_through(first: ProxyProcess, then: ProxyProcess, pg: PgCluster) -> int:
    """A psycopg session served by `first` whose cancel lands on `then`: the query ends cancelled, the session goes
    on. The session's cancel-key process id."""
    lb = Forwarder(first.port, then=then.port)  # the session on `first`, its cancel on `then`
    tag = f"pg_sleep(60.{time.time_ns() % 1000:03d})"
    try:
        with psycopg.connect(first.dsn("alice", port=lb.port), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (200,)
            outcome: list[psycopg.Error | None] = []

            def sleep() -> None:
                try:
                    conn.execute(f"SELECT {tag}")
                    outcome.append(None)
                except psycopg.Error as exc:  # the outcome is asserted below
                    outcome.append(exc)

            runner = threading.Thread(target=sleep)
            runner.start()
            until(lambda: pg.execute(f"SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT {tag}' "
                                     "AND state = 'active'"), APPLY_WAIT, interval=0.05, what="the query running")
            conn.cancel_safe()  # a new connection through the balancer: it lands on `then`
            runner.join(APPLY_WAIT)
            assert lb.accepted >= 2
            assert isinstance(outcome[0], psycopg.errors.QueryCanceled), outcome
            assert conn.execute("SELECT 3").fetchone() == (3,)  # the session goes on
            return conn.info.backend_pid
    finally:
        lb.close()


def test_a_cancel_landing_on_another_instance_reaches_the_query(
        replicas: tuple[ProxyProcess, ProxyProcess], pg: PgCluster) -> None:
    a, b = replicas
    slots = pg.execute("SELECT slot, port FROM pgtenant_registry.instances i WHERE EXISTS (SELECT FROM pg_locks l "
                       "WHERE l.locktype = 'advisory' AND l.objid = i.slot::oid AND l.granted)", dbname=REGISTRY_DB)
    assert len({slot for slot, _ in slots}) >= 2  # each instance holds its own slot
    _cancelled_through(a, b, pg)
    assert any(e.get("event") == "cancel_passed_to_instance" and e.get("outcome") == "found" for e in b.log_events())


def test_the_peer_port_refuses_a_frame_without_the_shared_secret(
        replicas: tuple[ProxyProcess, ProxyProcess], pg: PgCluster) -> None:
    from proxy import instancekey

    a, _ = replicas
    rows = pg.execute("SELECT port FROM pgtenant_registry.instances ORDER BY since DESC", dbname=REGISTRY_DB)
    ports = [port for (port,) in rows]
    for port in ports[:2]:
        with socket.create_connection(("127.0.0.1", port)) as s:
            opening = s.recv(instancekey.HELLO_LEN, socket.MSG_WAITALL)
            challenge = instancekey.challenge_of(opening)
            assert challenge is not None
            s.sendall(instancekey.request(b"not the shared secret, but 32+ bytes", challenge, 0, 0, 1234, b"abcd"))
            assert s.recv(1) == b""  # closed without an answer
    assert until(lambda: any(e.get("event") == "peer_cancel_refused" and e.get("reason") == "bad_mac"
                             for p in replicas for e in p.log_events()), APPLY_WAIT, interval=0.05,
                 what="peer_cancel_refused") is True
    assert a.proc is not None and a.proc.poll() is None


@pytest.fixture
def replicas_with_workers(pg: PgCluster, registry: str,
                          tmp_path: Path) -> Iterator[tuple[ProxyProcess, ProxyProcess]]:
    """Instance a of 2 worker processes (its supervisor holds the slot and the peer port), instance b of one."""
    with two_instances(pg, registry, tmp_path, a_workers=2) as pair:
        yield pair


def test_a_cancel_reaches_the_right_worker_of_another_instance(
        replicas_with_workers: tuple[ProxyProcess, ProxyProcess], pg: PgCluster) -> None:
    """`[registry] peer_port` with `[server] workers = 2` (refused before): the supervisor claims one slot for the
    instance and owns the peer port; a cancel another instance passes on reaches the worker the key's low bit names.
    Sessions are spread over a's workers by the kernel: repeated until both were cancelled from b."""
    a, b = replicas_with_workers
    assert a.count_events("instance_slot") == 1  # one slot for the instance (the supervisor's), not one per worker
    workers: set[int] = set()
    for _ in range(16):  # odds 1/2 per try of either worker (all failing: 1 in 32768)
        workers.add(_cancelled_through(a, b, pg) & 1)
        if workers == {0, 1}:
            break
    assert workers == {0, 1}
    _cancelled_through(b, a, pg)  # and the other way: it lands on either worker of a, which passes it on
    assert any(e.get("event") == "cancel_passed_to_instance" and e.get("outcome") == "found" for e in a.log_events())


def _login_error(p: ProxyProcess) -> str | None:
    """Why a login to `p` is refused (None: it logged in)."""
    try:
        with psycopg.connect(p.dsn("alice"), autocommit=True) as conn:
            conn.execute("SELECT 1")
            return None
    except psycopg.OperationalError as exc:
        return str(exc)


def test_an_instance_whose_slot_another_took_refuses_logins_until_it_holds_it_again(
        replicas_with_workers: tuple[ProxyProcess, ProxyProcess], pg: PgCluster) -> None:
    """Red team 9b N3: another instance claims a slot while its instance's registry connection is down; the loser
    used to answer its old claim and put the slot in new sessions' keys, /readyz green. Now it refuses logins
    (57P03) and /readyz answers 503 until the slot is free again (a of 2 workers: the supervisor holds the slot and
    tells them; b of one process)."""
    from proxy.registrynames import INSTANCE_LOCK

    a, b = replicas_with_workers
    for p in (a, b):
        until(lambda p=p: ready(p)[0] == 200 or None, APPLY_WAIT, interval=0.1, what="ready")
    held_slots = [s for (s,) in pg.execute(
        f"SELECT objid::int FROM pg_locks WHERE locktype = 'advisory' AND classid = {INSTANCE_LOCK}::oid "
        "AND objsubid = 2 AND granted", dbname=REGISTRY_DB)]
    assert len(held_slots) >= 2
    with pg.connect(dbname=REGISTRY_DB) as thief:  # open before the database refuses new connections
        thief.autocommit = True
        pg.execute(f"ALTER DATABASE {REGISTRY_DB} ALLOW_CONNECTIONS false")
        try:
            pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE application_name = 'pgtenant-listen'")
            for slot in held_slots:  # another instance's claim, taken while theirs are down
                until(lambda slot=slot: thief.execute("SELECT pg_try_advisory_lock(%s, %s)",
                                                      (INSTANCE_LOCK, slot)).fetchone()[0] or None,
                      APPLY_WAIT, interval=0.05, what=f"slot {slot} free")
        finally:
            pg.execute(f"ALTER DATABASE {REGISTRY_DB} ALLOW_CONNECTIONS true")
        for p in (a, b):
            until(lambda p=p: p.count_events("instance_slot_lost") or None, APPLY_WAIT, interval=0.1,
                  what="instance_slot_lost")
            until(lambda p=p: ready(p)[0] == 503 or None, APPLY_WAIT, interval=0.1, what="not ready")
            # (503 may come first from the reload after the reconnect; a worker sees the supervisor's loss at its
            # next tick: logins are refused from then on)
            until(lambda p=p: "another instance holds its instance slot" in (_login_error(p) or "") or None,
                  APPLY_WAIT, interval=0.1, what="logins refused for the lost slot")
        assert ready(b)[1]["instance_slot"] is False
        until(lambda: all(w["detail"].get("instance_slot") is False for w in ready(a)[1]["workers"]) or None,
              APPLY_WAIT, interval=0.1, what="every worker of a not ready for the slot")  # (each caches 1 s)
    # the thief is gone: each instance holds its slot again after its next round trip
    for p in (a, b):
        until(lambda p=p: ready(p)[0] == 200 or None, APPLY_WAIT, interval=0.1, what="ready again")
        until(lambda p=p: _login_error(p) is None or None, APPLY_WAIT, interval=0.1, what="logins served again")


def test_a_silent_partition_of_the_registry_path_is_noticed(pg: PgCluster, registry: str, tmp_path: Path) -> None:
    """Red team 9b N2: the watch's round trip had no timeout, so a registry path that went silent kept the proxy
    `registry_current` (a removed user logging in) until the kernel gave up (~15 min). Now the overdue round trip
    is a lost connection: /readyz 503, then reconnect and reload once the path is back."""
    path = Forwarder(pg.port)
    p = _proxy(pg, tmp_path, psycopg.conninfo.make_conninfo(registry, host="127.0.0.1", port=path.port))
    p.start()
    try:
        until(lambda: ready(p)[0] == 200 or None, APPLY_WAIT, interval=0.1, what="ready")
        path.frozen = True
        detail = until(lambda: ready(p)[0] == 503 and ready(p)[1], APPLY_WAIT, interval=0.2,
                       what="not ready once the round trip is overdue")
        assert detail["registry"] is False
        assert any(e.get("event") == "registry_connection_lost" and "no answer to a round trip" in e.get("problem", "")
                   for e in p.log_events())
        path.frozen = False
        until(lambda: ready(p)[0] == 200 or None, APPLY_WAIT, interval=0.1, what="ready again")
    finally:
        path.frozen = False
        p.stop()
        path.close()
