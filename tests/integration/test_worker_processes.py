"""`[server] workers = 2`: two worker processes on one port (SO_REUSEPORT) under a supervisor — sessions on each,
cancels that land on the other worker (psycopg, asyncpg, pgJDBC), a worker SIGKILLed mid-query, SIGHUP reload in
every worker, the console and /metrics over both.

Which worker accepts a connection is the kernel's choice (a hash of the addresses): tests that need a connection on
a given worker, or a cancel landing on the other one, repeat until it happens (bounded; each try has odds 1/2)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.jdbc import require_jdbc, run_jdbc
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.proxyproc import ProxyProcess, prepare_backend

ADMIN_PASSWORD = "ops-pw"
TRIES = 16  # attempts at an outcome of odds 1/2 each (all failing: 1 in 65536)


@pytest.fixture(scope="module")
def wproxy(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("pgtenant-workers"), server={"workers": 2},
                     admin_users={"ops": ADMIN_PASSWORD},
                     backend_sslmode="require" if pg.ssl_enabled else "disable")
    p.start(timeout=60)
    yield p
    p.stop()


def admin_rows(p: ProxyProcess, command: str) -> list[dict[str, Any]]:
    """A console command's rows as dicts (the console answers the simple query protocol: a ClientCursor)."""
    dsn = f"host=127.0.0.1 port={p.port} user=ops password={ADMIN_PASSWORD} dbname=pgtenant sslmode=disable"
    with psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as admin, admin.cursor() as cur:
        cur.execute(command)
        columns = [c.name for c in cur.description or ()]
        return [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]


def worker_of(p: ProxyProcess, app: str) -> int:
    rows = [r for r in admin_rows(p, "SHOW CLIENTS") if r["application_name"] == app]
    assert len(rows) == 1, rows
    return int(rows[0]["worker"])


def connect_on(p: ProxyProcess, worker: int, user: str = "alice") -> tuple[psycopg.Connection, str]:
    """A psycopg connection served by `worker` (connections on the other one are closed and tried again)."""
    for _ in range(TRIES):
        app = f"w-{uuid.uuid4().hex[:10]}"
        conn = psycopg.connect(p.dsn(user, application_name=app), autocommit=True)
        if worker_of(p, app) == worker:
            return conn, app
        conn.close()
    raise AssertionError(f"no connection landed on worker {worker} in {TRIES} tries")


def worker_pids(p: ProxyProcess) -> dict[int, int]:
    """Each worker's current process id, from the supervisor's worker_listening lines."""
    out: dict[int, int] = {}
    for e in p.log_events():
        if e.get("event") == "worker_listening":
            out[int(e["worker"])] = int(e["pid"])
    return out


def metric(p: ProxyProcess, name: str, **labels: str) -> float:
    body = urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10).read().decode()
    return sum(s.value for f in text_string_to_metric_families(body) for s in f.samples
               if s.name == name and s.labels == labels)


def test_sessions_on_each_worker(wproxy: ProxyProcess) -> None:
    seen: set[int] = set()
    conns = []
    try:
        for _ in range(TRIES):
            app = f"spread-{uuid.uuid4().hex[:10]}"
            conn = psycopg.connect(wproxy.dsn("alice", application_name=app), autocommit=True)
            conns.append(conn)
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (200,)  # acme's rows only
            seen.add(worker_of(wproxy, app))
            if seen == {0, 1}:
                break
        assert seen == {0, 1}
        # The console's pools add the workers up: every open session holds or held a server of acme's pool.
        pools = [r for r in admin_rows(wproxy, "SHOW POOLS") if r["tenant"] == "acme"]
        assert len(pools) == 1, pools
        tenants = {r["tenant"]: r for r in admin_rows(wproxy, "SHOW TENANTS")}
        assert int(tenants["acme"]["clients"]) >= len(conns)
        config = {r["key"]: r["value"] for r in admin_rows(wproxy, "SHOW CONFIG")}
        assert config["server.workers"] == "2"
    finally:
        for conn in conns:
            conn.close()


def test_cancel_keys_name_the_worker(wproxy: ProxyProcess) -> None:
    for worker in (0, 1):
        conn, _ = connect_on(wproxy, worker)
        with conn:
            assert conn.info.backend_pid & 1 == worker  # the process id's low bit is the worker (2 workers)


def _passed(p: ProxyProcess) -> int:
    return p.count_events("cancel_passed_to_worker")


def _until_passed(p: ProxyProcess, attempt: Any) -> None:
    """Run `attempt()` (a cancelled query that must end with a cancel) until one of its cancels landed on the other
    worker and was passed on."""
    before = _passed(p)
    for _ in range(TRIES):
        attempt()
        if _passed(p) > before:
            return
    raise AssertionError(f"no cancel landed on the other worker in {TRIES} tries")


@pytest.mark.parametrize("protocol", ["3.0", "3.2"])
def test_psycopg_cancel_across_workers(wproxy: ProxyProcess, protocol: str) -> None:
    """3.2 (libpq 18): the 32-byte secret travels to the other worker whole."""
    if protocol == "3.2" and psycopg.pq.version() < 180000:
        pytest.skip("libpq < 18 cannot request protocol 3.2")
    asked = {"max_protocol_version": "3.2"} if protocol == "3.2" else {}
    with psycopg.connect(wproxy.dsn("alice", **asked), autocommit=True) as conn:
        if asked:
            assert conn.pgconn.full_protocol_version == 30002
        def attempt() -> None:
            timer = threading.Timer(0.3, conn.cancel)
            timer.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(60)")
            timer.join()
            assert conn.execute("SELECT 1").fetchone() == (1,)

        _until_passed(wproxy, attempt)


def test_asyncpg_cancel_across_workers(wproxy: ProxyProcess) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(wproxy.url("ivan"), ssl=False)
        try:
            before = _passed(wproxy)
            for _ in range(TRIES):
                with pytest.raises(asyncio.TimeoutError):
                    await conn.fetchval("SELECT pg_sleep(600)", timeout=0.3)  # asyncpg cancels on timeout
                # Usable again only once the backend answered the sleep, i.e. the cancel reached it.
                assert await conn.fetchval("SELECT 1") == 1
                if _passed(wproxy) > before:
                    return
            raise AssertionError(f"no cancel landed on the other worker in {TRIES} tries")
        finally:
            await conn.close()

    asyncio.run(main())


def test_jdbc_cancel_across_workers(wproxy: ProxyProcess) -> None:
    require_jdbc()

    def attempt() -> None:
        out = run_jdbc(wproxy.jdbc_url("ivan"), "ivan", wproxy.password("ivan"), "cancel", 500, 60)
        assert out["sqlstate"] == "57014", out
        assert out["usable_after"] is True

    _until_passed(wproxy, attempt)


def test_metrics_over_both_workers(wproxy: ProxyProcess) -> None:
    conns = [connect_on(wproxy, w)[0] for w in (0, 1)]
    try:
        assert metric(wproxy, "pgtenant_client_connections", state="active", tenant="acme") >= 2  # one per worker
        assert metric(wproxy, "pgtenant_worker_processes", state="running") == 2
        ready = urllib.request.urlopen(wproxy.metrics_url + "/readyz", timeout=10)
        assert ready.status == 200
    finally:
        for conn in conns:
            conn.close()


def test_worker_killed_mid_query(wproxy: ProxyProcess) -> None:
    victim, survivor = 0, 1
    doomed, _ = connect_on(wproxy, victim, "bruno")
    other, _ = connect_on(wproxy, survivor, "bruno")
    pids = worker_pids(wproxy)
    restarted = wproxy.count_events("worker_listening")
    logins = metric(wproxy, "pgtenant_auth_attempts_total", outcome="success", reason="ok")
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            doomed.execute("SELECT pg_sleep(60)")
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    sleeping = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(60)%'"
    until(lambda: wproxy.cluster.execute(sleeping)[0][0] > 0 or None, 10, what="the query running")
    os.kill(pids[victim], signal.SIGKILL)
    thread.join(30)
    assert outcome and isinstance(outcome[0], psycopg.OperationalError), outcome
    doomed.close()
    assert other.execute("SELECT count(*) FROM orders").fetchone() == (100,)  # bigco's rows, on the other worker
    other.close()
    # (PostgreSQL notices the dead worker's connection only when the sleep ends: end it now)
    wproxy.cluster.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                           "AND query LIKE '%pg_sleep(60)%'")
    until(lambda: wproxy.count_events("worker_listening") > restarted or None, 30, what="the worker replaced")
    assert worker_pids(wproxy)[victim] != pids[victim]
    conn, _ = connect_on(wproxy, victim, "bruno")
    with conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (100,)
    # The dead worker's logins stay counted (its counters as last scraped), the new one's are added: never down.
    assert metric(wproxy, "pgtenant_auth_attempts_total", outcome="success", reason="ok") > logins


def test_sighup_reload_in_every_worker(wproxy: ProxyProcess) -> None:
    wproxy.extra_users["newbie"] = ("acme", "newbie-pw")
    wproxy.write_config()
    before = wproxy.count_events("reloaded")
    assert wproxy.proc is not None
    wproxy.proc.send_signal(signal.SIGHUP)
    until(lambda: wproxy.count_events("reloaded") >= before + 2 or None, 30, what="both workers reloaded")
    for worker in (0, 1):
        conn, _ = connect_on(wproxy, worker, "newbie")
        with conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (200,)


def test_a_sighup_while_the_workers_start_reaches_them_once_they_listen(
        pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Review 20 F12: a reload sent to the supervisor as it spawned its workers was forwarded to processes still
    starting (their interpreter, their imports: no handler yet), which it ended, and so the whole start. Now it
    waits for each worker to listen, which then reloads (the file may have changed since it read it)."""
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("pgtenant-workers-hup"), server={"workers": 2},
                     backend_sslmode="require" if pg.ssl_enabled else "disable")
    failed: list[BaseException] = []

    def start() -> None:
        try:
            p.start(timeout=60)
        except BaseException as exc:  # (handed to the test's thread)
            failed.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    try:
        until(lambda: p.count_events("worker_started") >= 2, 30, 0.005, "both workers spawned")
        assert p.proc is not None
        p.proc.send_signal(signal.SIGHUP)  # (both still start: their interpreters take over a second to listen)
        starter.join(90)
        assert not failed, failed
        until(lambda: p.count_events("reloaded") >= 2 or None, 30, what="both workers reloaded once listening")
        assert [e for e in p.log_events() if e.get("event") == "worker_exited"] == []
        with psycopg.connect(p.dsn("alice"), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (200,)
    finally:
        starter.join(90)
        p.stop()


def test_sigterm_drains_every_worker(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    """SIGTERM to the supervisor: both workers stop accepting, end what is left at limits.shutdown_timeout with
    57P01, and the supervisor exits 0."""
    p = ProxyProcess(pg, tmp_path_factory.mktemp("pgtenant-workers-stop"), server={"workers": 2},
                     admin_users={"ops": ADMIN_PASSWORD}, limits={"shutdown_timeout": 1.0},
                     backend_sslmode="require" if pg.ssl_enabled else "disable")
    p.start(timeout=60, provision=False)
    try:
        conns = [connect_on(p, w)[0] for w in (0, 1)]
        assert p.proc is not None
        p.proc.send_signal(signal.SIGTERM)
        assert p.proc.wait(30) == 0
        for conn in conns:
            with pytest.raises(psycopg.OperationalError, match="terminating connection due to administrator command"):
                conn.execute("SELECT 1")
            conn.close()
        assert p.count_events("shutdown_complete") == 2
    finally:
        p.stop()


def test_workers_end_with_a_killed_supervisor(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A supervisor SIGKILLed (no chance to stop anyone): its workers get SIGTERM from the kernel (PR_SET_PDEATHSIG),
    drain and exit, so nothing is left holding the port."""
    p = ProxyProcess(pg, tmp_path_factory.mktemp("pgtenant-workers-orphans"), server={"workers": 2},
                     limits={"shutdown_timeout": 1.0}, backend_sslmode="require" if pg.ssl_enabled else "disable")
    p.start(timeout=60, provision=False)
    pids = worker_pids(p)
    assert sorted(pids) == [0, 1]
    p.stop(signal.SIGKILL)

    def gone() -> bool:
        for pid in pids.values():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            with open(f"/proc/{pid}/stat") as fh:  # a zombie (exited, not reaped yet) is gone too
                if fh.read().rsplit(")", 1)[1].split()[0] != "Z":
                    return False
        return True

    until(lambda: gone() or None, 30, what="the workers exited")
