"""Read replicas against a real streaming replica (`pg_basebackup -R` of the fixture's primary): where reads and
writes land, read-your-writes while replay is paused, a lagging and a killed replica, both pool modes, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.protocol import messages as m
from tests.support import wire
from tests.support.jdbc import require_jdbc, run_jdbc
from tests.support.pgcluster import PgCluster, StandbyCluster
from tests.support.polling import until
from tests.support.proxyproc import BACKEND_PASSWORD, BACKEND_ROLE, ProxyProcess, prepare_backend

PORT = "SELECT inet_server_port()"  # a built-in a tenant may call: which server answered
LONG = 300.0  # max_replica_lag of the users whose replica must not be taken out for lagging during a test
_ids = itertools.count(10_000)


def _proxy(replicated: tuple[PgCluster, StandbyCluster], workdir: Any, mode: str, replayed: bool = False,
           **keys: Any) -> ProxyProcess:
    """A pgtenant in front of the primary with the standby as replica r1; `replayed`: the standby has replayed the
    provisioning before the proxy starts (and probes it)."""
    primary, standby = replicated
    p = ProxyProcess(
        primary, workdir, pool={"pool_mode": mode},
        replicas=[{"name": "r1", "host": standby.host, "port": standby.port}],
        extra_users={"iris": ("initech", "iris-pw"), "rhea": ("initech", "rhea-pw"), "abe": ("initech", "abe-pw"),
                     "tess": ("initech", "tess-pw")},
        admin_users={"ops": "ops-pw"}, **{"routing": {"route": "auto", "poll_interval": 0.1, "max_replica_lag": 1.0},
                                          **keys},
    )
    if replayed:
        p.provision()
        standby.wait_replayed()
    p.start(provision=not replayed)
    return p


@pytest.fixture(scope="module")
def proxy(replicated: tuple[PgCluster, StandbyCluster],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """Transaction pooling, route = "auto" for everyone; ivan and iris tolerate a long lag (read-your-writes is then
    the only reason their reads leave the replica), rhea reads only from the replica or is refused, tess has a
    replica_statement_timeout of 1 s (and no statement_timeout)."""
    p = _proxy(replicated, tmp_path_factory.mktemp("replicas"), "transaction", user_keys={
        "ivan": {"max_replica_lag": LONG}, "iris": {"max_replica_lag": LONG},
        "rhea": {"route": "replica", "replica_fallback": "refuse", "max_replica_lag": LONG},
        "abe": {"profile": "agent"},
        "tess": {"max_replica_lag": LONG, "replica_statement_timeout": 1.0},
    })
    yield p
    p.stop()


def port_of(conn: psycopg.Connection) -> int:
    return conn.execute(PORT).fetchone()[0]  # type: ignore[index]


def on_replica(conn: psycopg.Connection, standby: StandbyCluster) -> bool:
    """Wait until `conn`'s reads land on the replica (the poller has probed it healthy and caught up)."""
    return until(lambda: port_of(conn) == standby.port, 20, 0.05, "a read on the replica")


def metrics(proxy: ProxyProcess) -> str:
    with urllib.request.urlopen(proxy.metrics_url + "/metrics", timeout=10) as r:
        return r.read().decode()


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    return None


def test_reads_go_to_the_replica_writes_and_read_write_transactions_to_the_primary(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    primary, standby = replicated
    with psycopg.connect(proxy.dsn("ivan"), autocommit=True) as conn:
        on_replica(conn, standby)
        row = conn.execute(f"INSERT INTO orders VALUES ({next(_ids)}, 1) RETURNING inet_server_port()").fetchone()
        assert row == (primary.port,)
        on_replica(conn, standby)  # once the replica has replayed the write
        conn.autocommit = False
        assert port_of(conn) == primary.port  # BEGIN (read write): the whole transaction on the primary
        conn.rollback()
        conn.read_only = True  # BEGIN READ ONLY: a replica may serve it (once it holds what the session did)

        def read_only_on_replica() -> bool:
            port = port_of(conn)
            conn.rollback()
            return port == standby.port

        until(read_only_on_replica, 20, 0.05, "a read-only transaction on the replica")
        conn.read_only, conn.autocommit = False, True
        conn.execute("SET application_name = 'on-both'")  # a session setting follows the session to either server
        assert conn.execute("SELECT current_setting('application_name'), inet_server_port()").fetchone() == (
            "on-both", standby.port)
    rows = admin_rows(proxy, "SHOW SERVERS")
    roles = {(r["backend"], r["server_role"]) for r in rows if r["pool"] == "initech"}
    assert roles == {("main", "primary"), ("main/r1", "replica")}
    assert all(r["lag_s"] is not None for r in rows if r["server_role"] == "replica")
    text = metrics(proxy)
    assert metric(text, "pgtenant_replica_routed_total", backend="main", server="r1")  # (tenant: max_tenants = 3)
    assert metric(text, "pgtenant_replica_routed_total", backend="main", server="primary")
    assert metric(text, "pgtenant_replica_health", backend="main", replica="r1", state="healthy") == 1.0
    assert metric(text, "pgtenant_replica_lag_seconds", backend="main", replica="r1") is not None


def test_the_shared_tenant_on_the_replica_sees_only_its_rows(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    _, standby = replicated
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as conn:
        on_replica(conn, standby)
        rows = conn.execute("SELECT DISTINCT tenant_id, inet_server_port() FROM orders").fetchall()
        assert rows == [("acme", standby.port)]
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):  # the tenant is read-only: denied by the proxy
            conn.execute("DELETE FROM orders")


def test_read_your_writes_while_replay_is_paused(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    primary, standby = replicated
    new = next(_ids)
    count = f"SELECT count(*), inet_server_port() FROM orders WHERE id = {new}"
    with (psycopg.connect(proxy.dsn("ivan"), autocommit=True) as writer,
          psycopg.connect(proxy.dsn("iris"), autocommit=True) as other):
        on_replica(writer, standby)
        on_replica(other, standby)
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            until(lambda: standby.execute("SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused", 10)
            writer.execute(f"INSERT INTO orders VALUES ({new}, 1)")
            assert writer.execute(count).fetchone() == (1, primary.port)  # its own write: read on the primary
            assert other.execute(count).fetchone() == (0, standby.port)  # another session: the (stale) replica
            assert writer.execute(count).fetchone() == (1, primary.port)
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
        until(lambda: writer.execute(count).fetchone() == (1, standby.port), 20, 0.05, "the write on the replica")


@pytest.mark.parametrize("opening", ["BEGIN READ ONLY, READ WRITE", "START TRANSACTION READ ONLY, READ WRITE",
                                     "BEGIN; SET TRANSACTION READ ONLY, READ WRITE", "BEGIN; COMMIT AND CHAIN",
                                     "START TRANSACTION; ROLLBACK AND CHAIN", "BEGIN; SELECT 1; COMMIT AND CHAIN"])
def test_a_transaction_read_write_as_postgresql_applies_it(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster], opening: str) -> None:
    """The last READ ONLY / READ WRITE wins and AND CHAIN keeps the ended transaction's mode, as in PostgreSQL: such a
    transaction is read-write, on the primary, and its write is the session's (read on the primary until the
    replica holds it; red team 9r F1)."""
    primary, standby = replicated
    new = next(_ids)
    count = f"SELECT count(*), inet_server_port() FROM orders WHERE id = {new}"
    with psycopg.connect(proxy.dsn("ivan"), autocommit=True) as conn:
        on_replica(conn, standby)
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            until(lambda: standby.execute("SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused", 10)
            conn.execute(opening)
            row = conn.execute(f"INSERT INTO orders VALUES ({new}, 1) RETURNING inet_server_port()").fetchone()
            assert row == (primary.port,)
            conn.execute("COMMIT")
            assert conn.execute(count).fetchone() == (1, primary.port)  # its own write: read on the primary
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
        until(lambda: conn.execute(count).fetchone() == (1, standby.port), 20, 0.05, "the write on the replica")


@pytest.mark.parametrize("serializable", [
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET default_transaction_isolation = 'serializable'", "-c default_transaction_isolation=serializable"])
def test_a_serializable_session_reads_on_the_primary(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster], serializable: str) -> None:
    """A standby refuses SERIALIZABLE transactions (0A000): a session whose transactions are SERIALIZABLE reads on
    the primary, and back on the replica once it resets its default (red team 9r F8)."""
    primary, standby = replicated
    options = serializable if serializable.startswith("-c") else ""
    with psycopg.connect(proxy.dsn("ivan"), autocommit=True, options=options) as conn:
        if not options:
            on_replica(conn, standby)
            conn.execute(serializable)
        standby.wait_replayed()
        for _ in range(20):  # (also once the poller has seen the replica hold what the session did)
            time.sleep(0.05)
            assert conn.execute(f"SELECT current_setting('transaction_isolation'), {PORT[7:]}").fetchone() == (
                "serializable", primary.port)
        conn.execute("SET default_transaction_isolation = 'read committed'")
        on_replica(conn, standby)


def test_an_explicit_serializable_transaction_runs_on_the_primary(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    primary, standby = replicated
    with psycopg.connect(proxy.dsn("ivan"), autocommit=True) as conn:
        on_replica(conn, standby)
        for opening in ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
                        "BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE"):
            conn.execute(opening)
            assert conn.execute(PORT).fetchone() == (primary.port,), opening
            conn.execute("COMMIT")

        def repeatable_read_on_replica() -> bool:  # (not SERIALIZABLE: a replica may serve it)
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            port = port_of(conn)
            conn.execute("COMMIT")
            return port == standby.port

        until(repeatable_read_on_replica, 20, 0.05, "a repeatable read transaction on the replica")


def test_a_cancel_reaches_the_replica_the_query_runs_on(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    """A read running on a replica is cancelled there (the cancel follows the session's server, whichever pool it
    came from): 57014 at once, nothing left running on the replica, the session usable."""
    primary, standby = replicated
    sleeping = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'"
    with psycopg.connect(proxy.dsn("ivan"), autocommit=True) as conn:
        on_replica(conn, standby)
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(conn.execute, "SELECT pg_sleep(30), inet_server_port()")
            until(lambda: standby.execute(sleeping)[0][0] == 1, 20, 0.05, "the query running on the replica")
            assert primary.execute(sleeping)[0][0] == 0
            conn.cancel()
            with pytest.raises(psycopg.errors.QueryCanceled):
                running.result(timeout=10)
        until(lambda: standby.execute(sleeping)[0][0] == 0, 10, 0.05, "nothing left running on the replica")
        assert port_of(conn) in (primary.port, standby.port)


def test_replica_statement_timeout_cancels_a_request_on_the_replica_only(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    """A request running on a replica past replica_statement_timeout is canceled by the proxy (57014 naming the
    limit, counted); the same statement on the primary (in a read-write transaction) runs past it."""
    primary, standby = replicated
    before = metric(metrics(proxy), "pgtenant_limit_refusals_total", limit="replica_statement_timeout") or 0.0
    with psycopg.connect(proxy.dsn("tess"), autocommit=True) as conn:
        on_replica(conn, standby)
        with pytest.raises(psycopg.errors.QueryCanceled, match=r"pgtenant replica_statement_timeout is 1 s"):
            conn.execute("SELECT pg_sleep(5), inet_server_port()")
        assert port_of(conn) in (primary.port, standby.port)  # usable
        with conn.transaction():  # read-write: on the primary
            assert conn.execute("SELECT pg_sleep(1.5), inet_server_port()").fetchone() == ("", primary.port)
    until(lambda: (metric(metrics(proxy), "pgtenant_limit_refusals_total", limit="replica_statement_timeout") or 0)
          >= before + 1, 10, 0.1, "the refusal counted")


def test_a_batch_with_a_write_behind_its_read_runs_on_the_primary(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    """A client pipelines a read and a write before any answer (two Query messages in one write): the batch runs
    where its least-permissive request may, the primary, not on the read's replica (25006 there)."""
    primary, standby = replicated
    with psycopg.connect(proxy.dsn("ivan"), autocommit=True) as conn:
        on_replica(conn, standby)
    new = next(_ids)
    sock, _ = wire.login(proxy.port, {"user": "ivan", "database": proxy.users["ivan"][0]}, proxy.password("ivan"))
    with sock:
        sock.sendall(m.query_message(PORT) + m.query_message(
            f"INSERT INTO orders VALUES ({new}, 1) RETURNING inet_server_port()"))
        rows, errors, ready = [], [], 0
        while ready < 2:
            kind, body = wire.read_message(sock)
            if kind == b"D":
                rows.append(int(body[6:].decode()))
            elif kind == b"E":
                errors.append(m.decode_error_fields(body))
            ready += kind == b"Z"
    assert errors == [] and rows == [primary.port, primary.port]


def test_a_lagging_replica_is_taken_out_and_put_back(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    primary, standby = replicated
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as conn:  # max_replica_lag 1 s
        on_replica(conn, standby)
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            primary.execute("CREATE TABLE IF NOT EXISTS lag_tick (at timestamptz); INSERT INTO lag_tick VALUES (now())")
            until(lambda: port_of(conn) == primary.port, 20, 0.05, "reads leaving the lagging replica")
            text = metrics(proxy)
            assert metric(text, "pgtenant_replica_health", backend="main", replica="r1", state="lagging") == 1.0
            assert metric(text, "pgtenant_replica_lag_seconds", backend="main", replica="r1") > 1.0  # type: ignore
            with psycopg.connect(proxy.dsn("iris"), autocommit=True) as patient:  # its max_replica_lag: 300 s
                assert port_of(patient) == standby.port
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
        on_replica(conn, standby)
        assert metric(metrics(proxy), "pgtenant_replica_health", backend="main", replica="r1", state="healthy") == 1.0


def test_an_agent_reads_on_the_replica_admission_included(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    """An agent-profile login (read-only at both ends; each query admitted by the proxy's EXPLAIN on the server it
    got) under route = "auto": its queries, EXPLAIN and all, run on the replica."""
    _, standby = replicated
    with psycopg.connect(proxy.dsn("abe"), autocommit=True) as conn:
        on_replica(conn, standby)
        count, port = conn.execute("SELECT count(*), inet_server_port() FROM orders").fetchone()  # type: ignore[misc]
        assert port == standby.port and count >= 7  # (7 rows, and what the other tests inserted)


def test_asyncpg_and_jdbc_read_through_auto(proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    primary, standby = replicated

    async def main() -> None:
        conn = await asyncpg.connect(proxy.url("alice"))
        try:  # the extended protocol: Parse/Bind/Execute/Sync, named statements kept by the proxy
            for _ in range(400):
                if await conn.fetchval(PORT) == standby.port:
                    break
                await asyncio.sleep(0.05)
            assert await conn.fetchval(PORT) == standby.port
            stmt = await conn.prepare("SELECT count(*), inet_server_port() FROM orders WHERE amount > $1")
            assert tuple(await stmt.fetchrow(0)) == (200, standby.port)
            async with conn.transaction():  # BEGIN: the primary
                assert await conn.fetchval(PORT) == primary.port
        finally:
            await conn.close()

    asyncio.run(main())
    require_jdbc()

    def jdbc_port() -> bool:
        out = run_jdbc(proxy.jdbc_url("alice"), "alice", proxy.password("alice"), "query", PORT)
        return out["rows"] == [[str(standby.port)]]

    until(jdbc_port, 60, 0.2, "pgJDBC reading on the replica")


def test_asyncpg_prepare_then_a_write_or_a_transaction_runs_on_the_primary(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    """Red team 9r F7: asyncpg's prepare() is Parse/Describe/Flush, never a Sync. Answered in full, it holds nothing
    on the replica it went to: the proxy ends it with a Sync of its own and the server goes back, so the next write,
    or the BEGIN of conn.transaction(), is judged again and runs on the primary (not 25006 on the replica); the
    statement prepared on the replica runs later wherever the session then is."""
    primary, standby = replicated

    async def on_the_replica(conn: asyncpg.Connection) -> None:
        for _ in range(400):
            if await conn.fetchval(PORT) == standby.port:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("reads never reached the replica")

    async def main() -> None:
        conn = await asyncpg.connect(proxy.url("ivan"))
        try:
            await on_the_replica(conn)
            stmt = await conn.prepare("SELECT count(*), inet_server_port() FROM orders WHERE id = $1")
            new = next(_ids)
            assert await conn.fetchval("INSERT INTO orders VALUES ($1, 1) RETURNING inet_server_port()",
                                       new) == primary.port
            await on_the_replica(conn)
            other = await conn.prepare("SELECT inet_server_port() WHERE $1::int > 0")
            async with conn.transaction():  # BEGIN (read write): the primary
                assert await conn.fetchval(PORT) == primary.port
                await conn.execute("INSERT INTO orders VALUES ($1, 1)", next(_ids))
            await on_the_replica(conn)
            assert tuple(await stmt.fetchrow(new)) == (1, standby.port)
            assert await other.fetchval(1) == standby.port
        finally:
            await conn.close()

    asyncio.run(main())


def test_psycopg_pipeline_fetch_then_a_write_runs_on_the_primary(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    """Red team 9r F7, psycopg 3's pipeline mode: fetching a result inside the pipeline sends a Flush (no Sync); the
    read ran to its end on the replica, so the write pipelined after it goes to the primary."""
    primary, standby = replicated
    ports: list[int] = []
    while ports.count(standby.port) < 2 and len(ports) < 30:  # (the read reaches the replica when the proxy reads
        # the pipelined query with its Flush; read without it, it is judged unfinished and goes to the primary)
        with psycopg.connect(proxy.dsn("ivan"), autocommit=True) as conn:
            on_replica(conn, standby)
            new = next(_ids)
            with conn.pipeline():
                cur = conn.execute("SELECT inet_server_port() WHERE %s::int > 0", [1])
                ports.append(cur.fetchone()[0])  # type: ignore[index]
                written = conn.execute("INSERT INTO orders VALUES (%s, 1) RETURNING inet_server_port()", [new])
            assert written.fetchone() == (primary.port,)
            assert conn.execute("SELECT count(*) FROM orders WHERE id = %s", [new]).fetchone() == (1,)
    assert standby.port in ports  # (the read went to the replica: the case being tested)


def test_a_killed_replica_falls_back_to_the_primary_or_is_refused(
        proxy: ProxyProcess, replicated: tuple[PgCluster, StandbyCluster]) -> None:
    primary, standby = replicated
    with (psycopg.connect(proxy.dsn("alice"), autocommit=True) as conn,
          psycopg.connect(proxy.dsn("rhea"), autocommit=True) as strict):
        on_replica(conn, standby)
        assert port_of(strict) == standby.port
        standby.pause()
        try:
            until(lambda: metric(metrics(proxy), "pgtenant_replica_health", backend="main", replica="r1",
                                 state="down") == 1.0, 20, 0.05, "the replica marked down")
            assert port_of(conn) == primary.port
            for _ in range(2):  # refused with a clear SQLSTATE, and the session stays usable
                with pytest.raises(psycopg.errors.CannotConnectNow, match="no healthy replica"):
                    strict.execute(PORT)
        finally:
            standby.resume()
        standby.wait_streaming()
        on_replica(conn, standby)
        assert port_of(strict) == standby.port


def test_a_replica_dying_between_probes_sends_the_request_to_the_primary(
        replicated: tuple[PgCluster, StandbyCluster], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Probed once (the next probe an hour away), the replica is killed: the next read's new server connection to
    it fails, and the request goes to the primary instead of failing (the replica is out from then on)."""
    primary, standby = replicated
    p = _proxy(replicated, tmp_path_factory.mktemp("replicas-dying"), "transaction", replayed=True,
               routing={"route": "auto", "poll_interval": 3600.0, "max_replica_lag": 3600.0})
    try:
        with psycopg.connect(p.dsn("alice"), autocommit=True) as conn:
            on_replica(conn, standby)
            standby.pause()
            try:
                until(lambda: not [s for s in admin_rows(p, "SHOW SERVERS") if s["server_role"] == "replica"], 20,
                      0.05, "the replica's servers gone from the pool")
                assert port_of(conn) == primary.port  # no error: the primary served it
                assert port_of(conn) == primary.port
            finally:
                standby.resume()
        assert [e for e in p.log_events() if e.get("event") == "replica_fallback"]
    finally:
        p.stop()
    standby.wait_streaming()


def _process_tree(pid: int) -> list[int]:
    """`pid` and its children (a postmaster's backends and auxiliary processes)."""
    out = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry))
    return out


def test_a_hung_replica_ends_the_request_running_there(
        replicated: tuple[PgCluster, StandbyCluster], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Red team 9r F5: a replica that stops answering without closing anything (SIGSTOP of its postmaster and every
    child; a partition looks the same) held the reads running there until it came back. Once its probes time out
    and the poller marks it down, its servers are closed: the request running there ends with a clear, retryable
    error (08006, replica_down) instead of hanging, and the next reads go to the primary."""
    primary, standby = replicated
    p = _proxy(replicated, tmp_path_factory.mktemp("replicas-hung"), "transaction", replayed=True,
               routing={"route": "auto", "poll_interval": 0.1, "probe_timeout": 1.0, "max_replica_lag": LONG})
    pids: list[int] = []
    try:
        with psycopg.connect(p.dsn("alice"), autocommit=True) as conn:
            on_replica(conn, standby)
            outcome: list[object] = []

            def read() -> None:
                try:
                    outcome.append(conn.execute("SELECT pg_sleep(60), inet_server_port()").fetchone())
                except psycopg.Error as exc:
                    outcome.append(exc)

            thread = threading.Thread(target=read, daemon=True)
            thread.start()
            until(lambda: bool(standby.execute(
                "SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'")), 20, 0.05,
                "the read running on the replica")
            assert standby.pid is not None
            pids = [standby.pid]
            try:
                os.kill(standby.pid, signal.SIGSTOP)  # (first: it forks nothing more)
                pids = _process_tree(standby.pid)
                for pid in pids[1:]:
                    with contextlib.suppress(ProcessLookupError):  # (a backend that just ended)
                        os.kill(pid, signal.SIGSTOP)
                thread.join(60)  # (a guard against a hang: without the fix it lasts until SIGCONT)
            finally:
                _resume(pids)
            thread.join(90)
            assert len(outcome) == 1 and isinstance(outcome[0], psycopg.OperationalError), outcome
            assert 'replica "r1" of backend "main" stopped answering' in str(outcome[0])
            assert outcome[0].sqlstate == "08006"
        with psycopg.connect(p.dsn("alice"), autocommit=True) as again:  # the replica is down: the primary
            assert port_of(again) == primary.port
        assert [e for e in p.log_events() if e.get("event") == "replica_down_request_ended"]
    finally:
        _resume(pids)
        p.stop()
    standby.wait_streaming()


def _resume(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def admin_rows(p: ProxyProcess, command: str) -> list[dict[str, Any]]:
    dsn = f"host=127.0.0.1 port={p.port} user=ops password=ops-pw dbname=pgtenant sslmode=disable"
    with psycopg.connect(dsn, autocommit=True) as admin:
        cur = admin.execute(command)
        columns = [d.name for d in cur.description]  # type: ignore[union-attr]
        return [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]


def test_session_pooling_routes_at_connect(replicated: tuple[PgCluster, StandbyCluster],
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    """In session pooling a session lives on one server: route = "replica" on a replica (writes refused by
    PostgreSQL itself), "auto" on the primary."""
    primary, standby = replicated
    p = _proxy(replicated, tmp_path_factory.mktemp("replicas-session"), "session",
               user_keys={"rhea": {"route": "replica", "max_replica_lag": LONG}})
    try:
        def rhea_on_replica() -> bool:
            with psycopg.connect(p.dsn("rhea"), autocommit=True) as c:
                return port_of(c) == standby.port

        until(rhea_on_replica, 20, 0.05, "a route = replica session on the replica")
        with psycopg.connect(p.dsn("rhea"), autocommit=True) as conn:
            assert port_of(conn) == standby.port
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute(f"INSERT INTO orders VALUES ({next(_ids)}, 1)")
            assert conn.execute("SELECT count(*), inet_server_port() FROM orders").fetchone()[1] == standby.port  # type: ignore[index]
        with psycopg.connect(p.dsn("ivan"), autocommit=True) as conn:
            assert port_of(conn) == primary.port
            conn.execute(f"INSERT INTO orders VALUES ({next(_ids)}, 1)")
    finally:
        p.stop()


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_replicas_own_lower_statement_timeout_default_binds_there(replicated: tuple[PgCluster, StandbyCluster],
                                                                    tmp_path_factory: pytest.TempPathFactory,
                                                                    mode: str) -> None:
    """A session under a statement_timeout limit: its servers on the replica start with the replica's own default
    where that is lower (ALTER SYSTEM on the standby, not replicated), its servers on the primary with the limit."""
    primary, standby = replicated
    standby.execute("ALTER SYSTEM SET statement_timeout = '1500ms'")
    standby.execute("SELECT pg_reload_conf()")
    p = _proxy(replicated, tmp_path_factory.mktemp("replicas-default"), mode, user_keys={
        "rhea": {"route": "replica", "max_replica_lag": LONG, "statement_timeout": 300.0},
        "ivan": {"route": "primary", "statement_timeout": 300.0}})
    read = "SELECT current_setting('statement_timeout'), inet_server_port()"
    try:
        def on_the_replica() -> tuple[str, int] | None:
            with psycopg.connect(p.dsn("rhea"), autocommit=True) as c:
                row = c.execute(read).fetchone()
                return row if row is not None and row[1] == standby.port else None

        assert until(on_the_replica, 20, 0.05, "a route = replica session on the replica")[0] == "1500ms"
        with psycopg.connect(p.dsn("ivan"), autocommit=True) as conn:
            assert conn.execute(read).fetchone() == ("5min", primary.port)
    finally:
        p.stop()
        standby.execute("ALTER SYSTEM RESET statement_timeout")
        standby.execute("SELECT pg_reload_conf()")


def test_an_etl_fed_replica_is_as_stale_as_its_query_says(replicated: tuple[PgCluster, StandbyCluster],
                                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    """A reporting database fed by ETL: its staleness comes from the configured query (here constants), not from
    WAL positions; past max_replica_lag it is lagging and reads stay on the primary."""
    primary, standby = replicated
    for staleness, state, port in (("0.25", "healthy", standby.port), ("600", "lagging", primary.port)):
        p = ProxyProcess(
            primary, tmp_path_factory.mktemp("replicas-etl"), pool={"pool_mode": "transaction"},
            replicas=[{"name": "etl", "host": standby.host, "port": standby.port,
                       "staleness_query": f"SELECT {staleness}::float8"}],
            routing={"route": "auto", "poll_interval": 0.1, "max_replica_lag": 5.0},
        )
        p.start()
        try:
            until(lambda p=p, state=state: metric(metrics(p), "pgtenant_replica_health", backend="main",
                                                  replica="etl", state=state) == 1.0, 20, 0.05, f"etl {state}")
            lag = metric(metrics(p), "pgtenant_replica_lag_seconds", backend="main", replica="etl")
            assert lag is not None and lag >= float(staleness)
            with psycopg.connect(p.dsn("alice"), autocommit=True) as conn:
                assert port_of(conn) == port
        finally:
            p.stop()


def test_a_replica_failing_the_start_up_checks_is_never_routed_to(replicated: tuple[PgCluster, StandbyCluster],
                                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    """A reporting database built apart (ETL) whose backend role is a superuser and whose tables have no RLS: the
    checks the primary gets at start fail there, so it is down with the failed check as its reason and no read goes
    there (red team 9r F10); the streaming standby of the other tests passes them (a copy of the primary)."""
    primary, _ = replicated
    etl = PgCluster(primary.installation).start()
    try:
        prepare_backend(etl)  # the tenants' databases and tables, without pgtenant's provisioning: no RLS
        etl.execute(f"CREATE ROLE {BACKEND_ROLE} LOGIN SUPERUSER PASSWORD '{BACKEND_PASSWORD}'")
        p = ProxyProcess(
            primary, tmp_path_factory.mktemp("replicas-unchecked"), pool={"pool_mode": "transaction"},
            replicas=[{"name": "etl", "host": etl.host, "port": etl.port, "staleness_query": "SELECT 0::float8"}],
            routing={"route": "auto", "poll_interval": 0.1, "max_replica_lag": 5.0},
        )
        p.start()
        try:
            until(lambda: "replica_preflight_failed" in p.read_log(), 30, 0.1, "the replica's checks failing")
            assert "is a superuser" in p.read_log()
            assert metric(metrics(p), "pgtenant_replica_health", backend="main", replica="etl", state="down") == 1.0
            with psycopg.connect(p.dsn("alice"), autocommit=True) as conn:
                for _ in range(20):
                    time.sleep(0.05)  # (over several polls)
                    assert port_of(conn) == primary.port
        finally:
            p.stop()
    finally:
        etl.stop()


def test_a_reload_moves_a_logged_in_sessions_reads_where_its_new_route_says(
        replicated: tuple[PgCluster, StandbyCluster], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Red team 9s8 F3: `route = "primary"` reloaded for ivan reached only new logins; a session logged in before
    kept reading on the replica. Its next requests follow the reload (and back again under "auto")."""
    primary, standby = replicated
    p = _proxy(replicated, tmp_path_factory.mktemp("replicas-reload"), "transaction",
               user_keys={"ivan": {"max_replica_lag": LONG}})
    try:
        with psycopg.connect(p.dsn("ivan"), autocommit=True) as conn:
            on_replica(conn, standby)
            p.user_keys["ivan"] = {"max_replica_lag": LONG, "route": "primary"}
            p.write_config()
            p.reload("reloaded")
            assert {port_of(conn) for _ in range(5)} == {primary.port}
            p.user_keys["ivan"] = {"max_replica_lag": LONG}
            p.write_config()
            p.reload("reloaded")
            on_replica(conn, standby)
    finally:
        p.stop()
