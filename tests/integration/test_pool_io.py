"""The pools on a real PostgreSQL: a tenant's servers are capped by its pool (redteam-guards-2 G7), servers are reset
and reused, a cancel racing the release of its server (or reaching it idle, or unconfirmed) never reaches the next
client, a cancel of a waiting client answers its query, ParameterStatus follows the client across servers, servers
held by a batch without its Sync are counted, SHOW POOLS / SERVERS."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from proxy.protocol import messages as m
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.pools import console, pooled_proxy, until_waiting
from tests.support.proxyproc import TENANT_ROLES, ProxyProcess
from tests.support.wire import backend_key, login, login_error, read_message

CANCEL_CODE = 80877102


@pytest.fixture(scope="module")
def small_pools(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    p = pooled_proxy(pg, tmp_path_factory.mktemp("pool"), pool_size=2, query_wait_timeout=3.0)
    yield p
    p.stop()


def backends_of(pg: PgCluster, role: str) -> int:
    with psycopg.connect(pg.dsn(), autocommit=True) as su:
        row = su.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND backend_type = 'client backend'",
                         (role,)).fetchone()
    assert row is not None
    return int(row[0])


def test_one_tenant_cannot_take_every_backend_connection(small_pools: ProxyProcess, pg: PgCluster) -> None:
    """G7 of redteam-guards-2: initech's sessions beyond its pool_size wait (and time out with the wait error)
    instead of each taking a PostgreSQL backend; another tenant still logs in and queries."""
    p = small_pools
    role = TENANT_ROLES["initech"][0]
    held = [psycopg.connect(p.dsn("ivan"), autocommit=True) for _ in range(2)]
    try:
        for conn in held:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        error = login_error(p.port, {"user": "ivan", "database": "initech"}, p.password("ivan"))
        assert (error["S"], error["C"]) == ("FATAL", "53300")
        assert error["M"] == ('pgtenant: no server connection for tenant "initech" within query_wait_timeout (3 s); '
                              "its pool_size is 2"), error
        assert "tenants.initech.pool_size" in error["H"]
        assert backends_of(pg, role) == 2
        with psycopg.connect(p.dsn("alice"), autocommit=True) as other:  # another tenant is not locked out
            assert other.execute("SELECT current_setting('pgtenant.tenant_id')").fetchone() == ("acme",)
        rows = {r["tenant"]: r for r in console(p, "SHOW POOLS;")}
        assert (rows["initech"]["cl_active"], rows["initech"]["sv_active"], rows["initech"]["pool_size"]) == (
            "2", "2", "2")
    finally:
        for conn in held:
            conn.close()


def test_a_waiting_session_gets_the_server_another_releases(small_pools: ProxyProcess, pg: PgCluster) -> None:
    p = small_pools
    role = TENANT_ROLES["initech"][0]
    held = [psycopg.connect(p.dsn("ivan"), autocommit=True) for _ in range(2)]
    pids = {conn.execute("SELECT pg_backend_pid()").fetchone()[0] for conn in held}  # type: ignore[index]
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(_connect_and_pid(p)))
    waiter.start()
    until_waiting(p, "initech")
    held[0].execute("SET application_name = 'left behind'")  # session state the next client must not see
    held[0].close()
    waiter.join(30)
    held[1].close()
    assert got and isinstance(got[0], tuple), got
    pid, app = got[0]
    assert pid in pids  # the same backend, reused
    assert app == ""  # reset (DISCARD ALL) before it was handed over
    assert backends_of(pg, role) <= 2


def test_the_database_budget_is_shared_by_its_tenants(pg: PgCluster, tmp_path: Path) -> None:
    """max_db_connections 1 on saas (acme and bigco, one backend role): bigco waits while acme's session holds the
    only server, and gets one (acme's idle server closed to make room) when acme's session ends."""
    p = pooled_proxy(pg, tmp_path, max_db_connections=1)
    try:
        acme = psycopg.connect(p.dsn("alice"), autocommit=True)
        acme.execute("SELECT 1")
        got: list[object] = []

        def bigco() -> None:
            try:
                with psycopg.connect(p.dsn("bruno"), autocommit=True) as conn:
                    got.append(conn.execute("SELECT current_setting('pgtenant.tenant_id')").fetchone())
            except Exception as exc:
                got.append(exc)

        waiter = threading.Thread(target=bigco)
        waiter.start()
        until_waiting(p, "bigco")
        assert saas_backends(p, pg) == 1
        acme.close()
        waiter.join(30)
        assert got == [("bigco",)]
        assert saas_backends(p, pg) <= 1
    finally:
        p.stop()


def saas_backends(p: ProxyProcess, pg: PgCluster) -> int:
    """The backends of database saas this proxy holds open (SHOW SERVERS), each checked in pg_stat_activity."""
    pids = [int(r["backend_pid"]) for r in console(p, "SHOW SERVERS;") if r["database"] == "saas"]
    with psycopg.connect(pg.dsn(), autocommit=True) as su:
        row = su.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND datname = 'saas'",
                         (pids,)).fetchone()
    assert row is not None and row[0] == len(pids)
    return len(pids)


def _connect_and_pid(p: ProxyProcess) -> tuple[int, str] | Exception:
    try:
        with psycopg.connect(p.dsn("ivan"), autocommit=True) as conn:
            row = conn.execute("SELECT pg_backend_pid(), current_setting('application_name')").fetchone()
            assert row is not None
            return int(row[0]), str(row[1])
    except Exception as exc:  # reported to the test thread
        return exc


def test_client_startup_parameters_are_set_on_the_pooled_server(small_pools: ProxyProcess) -> None:
    with psycopg.connect(small_pools.dsn("alice", application_name="tableau", options="-c DateStyle=SQL,DMY"),
                         autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('application_name'), current_setting('DateStyle'), "
                           "current_setting('pgtenant.tenant_id')").fetchone()
        assert row == ("tableau", "SQL, DMY", "acme")
        assert conn.info.parameter_status("application_name") == "tableau"
    with pytest.raises(psycopg.OperationalError, match="DateStyle"):
        psycopg.connect(small_pools.dsn("alice", options="-c DateStyle=nonsense"))


def test_show_servers_lists_pool_state_and_holder(small_pools: ProxyProcess) -> None:
    with psycopg.connect(small_pools.dsn("gina"), autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        rows = [r for r in console(small_pools, "SHOW SERVERS;") if r["backend_pid"] == str(pid)]
        assert len(rows) == 1 and rows[0]["pool"] == "globex" and rows[0]["state"] == "active"
        assert rows[0]["client_id"]
    rows = [r for r in console(small_pools, "SHOW SERVERS;") if r["backend_pid"] == str(pid)]
    assert [r["state"] for r in rows] in (["idle"], ["reset"])


# --- the cancel race ---------------------------------------------------------------------------------


class SlowCancels:
    """A TCP forwarder to PostgreSQL that holds back every CancelRequest for `delay` seconds (a slow network
    between the proxy and the database), and forwards everything else at once."""

    def __init__(self, host: str, port: int, delay: float) -> None:
        self.target = (host, port)
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cancels = 0
        self.delivered = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        first = b""
        while len(first) < 8:
            chunk = client.recv(8 - len(first))
            if not chunk:
                client.close()
                return
            first += chunk
        cancel = struct.unpack("!ii", first)[1] == CANCEL_CODE
        if cancel:
            self.cancels += 1
            time.sleep(self.delay)
        server = socket.create_connection(self.target)
        server.sendall(first)
        if cancel:
            self.delivered += 1  # (PostgreSQL reads the rest of the packet and closes only after this)
        threading.Thread(target=_pipe, args=(server, client), daemon=True).start()
        _pipe(client, server)

    def close(self) -> None:
        self.listener.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class RawClient:
    """A client on a raw socket (its cancel key at hand, nothing blocking the test's threads): psycopg's cancel()
    holds the GIL until the cancel connection closes, which would stall SlowCancels' forwarding threads."""

    def __init__(self, p: ProxyProcess, user: str = "alice", **params: str) -> None:
        self.port = p.port
        self.sock, messages = login(p.port, {"user": user, "database": p.users[user][0], **params}, p.password(user))
        self.key = backend_key(messages)
        self.status = dict(m.decode_parameter_status(body) for t, body in messages if t == b"S")

    def send(self, sql: str) -> None:
        self.sock.sendall(m.query_message(sql))

    def results(self) -> list[tuple[bytes, bytes]]:
        """The messages up to ReadyForQuery."""
        out = []
        while True:
            t, body = read_message(self.sock)
            out.append((t, body))
            if t == b"Z":
                return out

    def value(self, sql: str) -> str:
        self.send(sql)
        rows = [body for t, body in self.results() if t == b"D"]
        assert len(rows) == 1, rows
        return rows[0][6:].decode()  # one column: count, length, value

    def cancel(self) -> socket.socket:
        """Send a CancelRequest for this session on a new connection and return that connection (not waiting)."""
        c = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        c.sendall(m.encode_cancel_request(*self.key))
        return c

    def close(self) -> None:
        self.sock.sendall(m.TERMINATE_MESSAGE)
        self.sock.close()


def b_runs(p: ProxyProcess, outcome: list[object]) -> threading.Thread:
    """Client B (psycopg, in a thread): its backend pid, then pg_sleep(2); `outcome` gets ("done", pid) or the
    exception."""
    def run() -> None:
        try:
            with psycopg.connect(p.dsn("alice"), autocommit=True) as b:
                pid = b.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
                b.execute("SELECT pg_sleep(2)")
                outcome.append(("done", pid))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_cancel_racing_the_release_never_cancels_the_next_clients_query(pg: PgCluster, tmp_path: Path) -> None:
    """pool_size 1: A's cancel (for its query waiting for a lock) is still on its way to PostgreSQL when A's query
    ends and A leaves, and B, waiting, would get the same server and start pg_sleep; the server goes to B only once
    A's cancel connection has closed, so B's query runs to its end. (Without that rule B's pg_sleep is cancelled by
    A's late CancelRequest.) (A cancel while nothing runs is not forwarded at all: test_cancel_flood.py.)"""
    slow = SlowCancels(pg.host, pg.port, delay=1.0)
    p = pooled_proxy(pg, tmp_path, backend=("127.0.0.1", slow.port), pool_size=1)
    lock = psycopg.connect(pg.dsn(dbname="saas"))
    try:
        a = RawClient(p)
        a_pid = int(a.value("SELECT pg_backend_pid()"))
        lock.execute("LOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE")
        a.send("SELECT count(*) FROM orders")  # running (waiting for the lock): A's cancel is forwarded
        outcome: list[object] = []
        b_thread = b_runs(p, outcome)
        until_waiting(p, "acme")
        cancel = a.cancel()  # only on its way (held back by the forwarder)
        until(lambda: slow.cancels == 1, timeout=10, interval=0.01, what="the cancel at the forwarder")
        lock.commit()  # A's query ends before its cancel arrives
        assert [t for t, _ in a.results()] == [b"T", b"D", b"C", b"Z"]
        a.close()  # A releases its server while its cancel is in flight
        assert cancel.recv(1) == b""  # A's cancel connection closes only once PostgreSQL has it
        assert slow.delivered == 1
        cancel.close()
        b_thread.join(30)
        assert outcome and outcome[0] == ("done", a_pid), outcome  # B got A's server and its query was not cancelled
    finally:
        lock.close()
        p.stop()
        slow.close()


def test_a_server_whose_cancel_was_not_confirmed_is_closed_not_reused(pg: PgCluster, tmp_path: Path) -> None:
    """The cancel connection to PostgreSQL does not close within connect_timeout (0.5 s; the forwarder holds the
    cancel 2 s): PostgreSQL may still act on it later, so A's server is closed when A leaves, not handed to B, whose
    query on a new server runs to its end; the late cancel names a backend that no longer exists."""
    slow = SlowCancels(pg.host, pg.port, delay=2.0)
    p = pooled_proxy(pg, tmp_path, backend=("127.0.0.1", slow.port), connect_timeout=0.5, pool_size=1)
    lock = psycopg.connect(pg.dsn(dbname="saas"))
    try:
        a = RawClient(p)
        a_pid = int(a.value("SELECT pg_backend_pid()"))
        lock.execute("LOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE")
        a.send("SELECT count(*) FROM orders")  # running (waiting for the lock): A's cancel is forwarded
        cancel = a.cancel()
        assert cancel.recv(1) == b""  # closed once the proxy gave up on the cancel connection
        assert slow.delivered == 0
        cancel.close()
        lock.commit()  # A's query ends before its late cancel arrives
        assert [t for t, _ in a.results()] == [b"T", b"D", b"C", b"Z"]
        outcome: list[object] = []
        b_thread = b_runs(p, outcome)
        until_waiting(p, "acme")
        a.close()
        b_thread.join(30)
        [result] = outcome
        assert isinstance(result, tuple) and result[0] == "done" and result[1] != a_pid, result  # a new server
        until(lambda: slow.delivered == 1, timeout=10, interval=0.05, what="the late cancel")
        events = [e for e in p.log_events() if e.get("event") == "cancel_failed"]
        assert len(events) == 1
        with urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10) as r:
            assert 'pgtenant_pool_servers_closed_total{reason="cancel_unconfirmed"} 1.0' in r.read().decode()
    finally:
        lock.close()
        p.stop()
        slow.close()


def test_a_cancel_pending_on_an_idle_server_is_absorbed_before_the_next_client_gets_it(
        pg: PgCluster, tmp_path: Path) -> None:
    """Transaction mode, pool_size 1: A's query ends while A's cancel is still on its way, so A releases the server
    at ReadyForQuery and the cancel reaches it idle. B, waiting, gets the server only after A's cancel connection
    closed and a round trip of the pool's own has met it (PostgreSQL drops a cancel that finds its backend idle
    when the next command is read), so B's pg_sleep runs to its end."""
    slow = SlowCancels(pg.host, pg.port, delay=1.0)
    p = pooled_proxy(pg, tmp_path, backend=("127.0.0.1", slow.port), pool_size=1, pool_mode="transaction")
    lock = psycopg.connect(pg.dsn(dbname="saas"))
    try:
        a = RawClient(p)
        a_pid = int(a.value("SELECT pg_backend_pid()"))
        lock.execute("LOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE")
        a.send("SELECT count(*) FROM orders")  # A holds the server while this waits for the lock
        outcome: list[object] = []
        b_thread = b_runs(p, outcome)
        until_waiting(p, "acme")
        cancel = a.cancel()
        until(lambda: slow.cancels == 1, timeout=10, interval=0.01, what="the cancel at the forwarder")
        lock.commit()  # A's query ends (A releases the server at ReadyForQuery) before its cancel arrives
        assert [t for t, _ in a.results()] == [b"T", b"D", b"C", b"Z"]
        assert cancel.recv(1) == b""
        assert slow.delivered == 1
        cancel.close()
        b_thread.join(30)
        assert outcome and outcome[0] == ("done", a_pid), outcome
        assert a.value("SELECT 7") == "7"  # A, idle meanwhile, is untouched too
        a.close()
    finally:
        lock.close()
        p.stop()
        slow.close()


def test_a_cancel_while_waiting_for_a_server_answers_the_waiting_query(pg: PgCluster, tmp_path: Path) -> None:
    """Transaction mode, pool_size 1, A in a transaction: B's query waits for the server; B's cancel ends the wait
    and B gets PostgreSQL's 57014 at once, as if its query had been cancelled (it never ran), and B goes on once
    the server is free. (Before, the cancel was ignored and B hung until A committed.)"""
    p = pooled_proxy(pg, tmp_path, pool_size=1, pool_mode="transaction")
    try:
        with psycopg.connect(p.dsn("alice"), autocommit=True) as a, \
                psycopg.connect(p.dsn("alice"), autocommit=True) as b:
            a.execute("BEGIN")  # A holds the only server
            outcome: list[object] = []

            def b_query() -> None:
                try:
                    outcome.append(b.execute("SELECT 42").fetchone())
                except psycopg.Error as exc:
                    outcome.append(exc)

            thread = threading.Thread(target=b_query)
            thread.start()
            until_waiting(p, "acme")
            b.cancel_safe()
            thread.join(20)
            assert len(outcome) == 1 and isinstance(outcome[0], psycopg.errors.QueryCanceled), outcome
            assert str(outcome[0]) == "canceling statement due to user request"
            a.execute("COMMIT")
            assert b.execute("SELECT 43").fetchone() == (43,)
    finally:
        p.stop()


# --- ParameterStatus across servers -------------------------------------------------------------------


REPORTED = ("application_name", "DateStyle", "IntervalStyle", "TimeZone")


def reported(conn: psycopg.Connection) -> dict[str, str | None]:
    return {name: conn.info.parameter_status(name) for name in REPORTED}


def server_values(conn: psycopg.Connection) -> dict[str, str]:
    row = conn.execute("SELECT " + ", ".join(f"current_setting('{n}')" for n in REPORTED)).fetchone()
    assert row is not None
    return dict(zip(REPORTED, row, strict=True))


def other_settings(p: ProxyProcess) -> list[psycopg.Connection]:
    """Two clients of alice's tenant whose settings differ from the defaults."""
    return [psycopg.connect(p.dsn("alice", application_name="h-app", options="-c DateStyle=German "
                                  "-c TimeZone=Asia/Tokyo -c IntervalStyle=sql_standard"), autocommit=True)
            for _ in range(2)]


def hand_over(holders: list[psycopg.Connection], i: int) -> int:
    """Pool of two: the holders in turn keep one server each in a transaction, so that a third client always gets
    the server the other holder just gave back (round `i`: holder i % 2 begins, taking the only idle server — the
    one the third client used last —, and the other one commits); the backend pid now held."""
    following = holders[i % 2]
    following.execute("BEGIN")
    pid = following.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    if i:
        holders[(i + 1) % 2].execute("COMMIT")
    return int(pid)


def test_parameter_status_follows_the_client_across_servers_of_other_settings(pg: PgCluster, tmp_path: Path) -> None:
    """Transaction mode, pool_size 2: X's transactions alternate between the two servers, each last used by a client
    H of other settings. X is told its own values only (its startup ones, then what its own SETs change), never H's
    nor the servers' defaults, and its own SETs and RESETs show as on a direct connection."""
    p = pooled_proxy(pg, tmp_path, pool_size=2, pool_mode="transaction")
    try:
        x = psycopg.connect(p.dsn("alice", application_name="x-app", options="-c DateStyle=SQL,DMY"), autocommit=True)
        holders = other_settings(p)
        mine = {"application_name": "x-app", "DateStyle": "SQL, DMY", "IntervalStyle": "postgres",
                "TimeZone": x.info.parameter_status("TimeZone")}
        assert reported(x) == mine
        steps = [
            ("SELECT 1", {}),
            ("SET TimeZone = 'America/New_York'", {"TimeZone": "America/New_York"}),
            ("SELECT 1", {}),
            ("SET TimeZone = 'Asia/Tokyo'", {"TimeZone": "Asia/Tokyo"}),  # H's value, on a server H left it on
            ("BEGIN; SET IntervalStyle = 'iso_8601'; ROLLBACK", {}),
            ("SET application_name = 'x2'", {"application_name": "x2"}),
            ("RESET application_name", {"application_name": "x-app"}),  # back to its startup value
            ("SELECT 1", {}),
            ("RESET ALL", {"TimeZone": mine["TimeZone"]}),
            ("SELECT 1", {}),
            ("DISCARD ALL", {}),
            ("SELECT 1", {}),
        ]
        held = hand_over(holders, 0)
        pids = []
        for i, (sql, changes) in enumerate(steps):
            x.execute(sql)
            mine.update(changes)
            assert reported(x) == mine, sql
            x_pid = x.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
            assert x_pid != held
            assert server_values(x) == mine, sql
            pids.append(x_pid)
            held = hand_over(holders, i + 1)
        assert len(set(pids)) == 2 and all(a != b for a, b in itertools.pairwise(pids))  # alternating
        assert all(reported(h)["TimeZone"] == "Asia/Tokyo" and reported(h)["DateStyle"] == "German, DMY"
                   for h in holders)
        x.close()
        for h in holders:
            h.close()
    finally:
        p.stop()


def test_no_parameter_status_but_for_the_clients_own_changes(pg: PgCluster, tmp_path: Path) -> None:
    """The messages themselves (a raw client): landing on a server of other settings sends X no ParameterStatus at
    all; its own SET sends exactly one, with its value, as on a direct connection; a RESET of a startup setting
    none (its value does not change)."""
    p = pooled_proxy(pg, tmp_path, pool_size=2, pool_mode="transaction")
    try:
        x = RawClient(p, application_name="x-app")
        holders = other_settings(p)
        held = hand_over(holders, 0)
        steps = [
            ("SELECT pg_backend_pid()", []),
            ("SET TimeZone = 'America/New_York'", [("TimeZone", "America/New_York")]),
            ("SELECT pg_backend_pid()", []),
            ("SET DateStyle = 'German'", [("DateStyle", "German, DMY")]),  # the holders' value
            ("SELECT pg_backend_pid()", []),
            ("RESET application_name", []),
            ("RESET ALL", [("DateStyle", "ISO, MDY"), ("TimeZone", x.status["TimeZone"])]),
            ("SELECT pg_backend_pid()", []),
        ]
        pids = set()
        for i, (sql, expected) in enumerate(steps):
            x.send(sql)
            answer = x.results()
            statuses = sorted(m.decode_parameter_status(body) for t, body in answer if t == b"S")
            assert statuses == expected, sql
            pid = {int(body[6:].decode()) for t, body in answer if t == b"D"}
            assert held not in pid
            pids |= pid
            held = hand_over(holders, i + 1)
        assert len(pids) == 2
        x.close()
        for h in holders:
            h.close()
    finally:
        p.stop()


# --- a server held by a batch without its Sync ------------------------------------------------------------


def held_without_sync(p: ProxyProcess) -> float:
    """pgtenant_servers_held_without_sync of tenant acme waiting for a Sync, from /metrics."""
    with urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    found = [ln for ln in lines
             if ln.startswith('pgtenant_servers_held_without_sync{tenant="acme",waiting="sync"}')]
    return float(found[0].split()[-1]) if found else 0.0


def test_a_server_held_by_a_batch_without_its_sync_is_counted_and_logged(pg: PgCluster, tmp_path: Path) -> None:
    """A batch that ran a statement and was flushed without its Sync (Parse, Bind, Execute, Flush: libpq's pipeline
    fetch) keeps its server in transaction mode until its Sync (PostgreSQL holds the batch's implicit transaction
    open until then, and times nothing out meanwhile; what it wrote commits only then). While it lasts the server is
    counted, and past max_pin_time logged once. asyncpg's prepare() (Parse, Describe, Flush: nothing ran) holds
    none: answered, the proxy ends it with a Sync of its own (red team 9r F7/F9)."""
    p = pooled_proxy(pg, tmp_path, pool_size=2, pool_mode="transaction", max_pin_time=0.5)
    try:
        sock, _ = login(p.port, {"user": "alice", "database": p.users["alice"][0]}, p.password("alice"))
        with sock:
            sock.sendall(m.Parse("", "SELECT 41 + 1", b"\x00\x00").encode() + m.frame(b"B", b"\x00\x00" + b"\x00" * 6)
                         + m.frame(b"E", b"\x00\x00\x00\x00\x00") + m.frame(b"H", b""))
            while read_message(sock)[0] != b"C":
                pass
            until(lambda: held_without_sync(p) == 1, timeout=10, interval=0.05, what="the server counted")
            until(lambda: [e for e in p.log_events() if e.get("event") == "server_held_without_sync"],
                  timeout=10, interval=0.05, what="server_held_without_sync in the log")
            sock.sendall(m.SYNC_MESSAGE)  # the batch ends, the server goes back
            assert read_message(sock)[0] == b"Z"
            until(lambda: held_without_sync(p) == 0, timeout=10, interval=0.05, what="the count back to 0")

        async def client() -> None:
            conn = await asyncpg.connect(p.url("alice"), ssl=False, statement_cache_size=0)
            try:
                stmt = await conn.prepare("SELECT $1::int + 1")
                until(lambda: held_without_sync(p) == 0, timeout=10, interval=0.05, what="no server held")
                await asyncio.sleep(1.0)  # (past max_pin_time: a server still held would be logged)
                assert await stmt.fetchval(41) == 42
                assert await conn.fetchval("SELECT 7") == 7
            finally:
                await conn.close()

        asyncio.run(client())
        events = [e for e in p.log_events() if e.get("event") == "server_held_without_sync"]
        assert len(events) == 1 and events[0]["max_pin_time"] == 0.5
        assert held_without_sync(p) == 0
    finally:
        p.stop()


def _running_sleeps(pg: PgCluster, role: str) -> int:
    with psycopg.connect(pg.dsn(), autocommit=True) as su:
        row = su.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND state = 'active'"
                         " AND query LIKE '%%pg_sleep(60)%%'", (role,)).fetchone()
    assert row is not None
    return int(row[0])


def _pids(pg: PgCluster, role: str, where: str = "true") -> set[int]:
    with psycopg.connect(pg.dsn(), autocommit=True) as su:
        rows = su.execute(f"SELECT pid FROM pg_stat_activity WHERE usename = %s AND {where}", (role,)).fetchall()
    return {int(r[0]) for r in rows}


def _sleeping_pids(pg: PgCluster, role: str) -> set[int]:
    return _pids(pg, role, "state = 'active' AND query LIKE '%%pg_sleep(60)%%'")


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_client_that_leaves_mid_statement_holds_its_pool_place_until_the_statement_is_cancelled(
        pg: PgCluster, tmp_path: Path, mode: str) -> None:
    """Red team 7 F6: a client that disconnects while its statement runs used to free its pool's place at once while
    its backend ran on outside every pool (178 such backends filled max_connections). The statement is cancelled
    and the server counted until then: a tenant never has more than pool_size backends, none left running."""
    p = pooled_proxy(pg, tmp_path, pool_size=1, query_wait_timeout=20.0, pool_mode=mode)
    role = TENANT_ROLES["initech"][0]
    drained: set[int] = set()
    try:
        for _ in range(3):
            conn = psycopg.connect(p.dsn("ivan"), autocommit=True)
            conn.pgconn.send_query(b"SELECT pg_sleep(60)")
            until(lambda: _running_sleeps(pg, role) == 1, timeout=20, what="one running statement, no orphan")
            drained |= _sleeping_pids(pg, role)
            conn.pgconn.finish()  # leaves while the statement runs
        until(lambda: _running_sleeps(pg, role) == 0, timeout=20, what="the left statement cancelled")
        with psycopg.connect(p.dsn("ivan"), autocommit=True) as again:
            assert again.execute("SELECT 1").fetchone() == (1,)
            # (a drained backend ends once it reads the proxy's close after its cancelled statement: milliseconds;
            # other tests' proxies may hold idle backends of the same role, so the drained ones are named by pid)
            until(lambda: not drained & _pids(pg, role), timeout=10, what="the drained backends gone")
        assert len(drained) == 3
        assert any(r["tenant"] == "initech" for r in console(p, "SHOW POOLS;"))
    finally:
        p.stop()


def test_a_client_that_leaves_with_a_request_pipelined_behind_leaves_nothing_running(pg: PgCluster,
                                                                                      tmp_path: Path) -> None:
    """Red team 8a F7: the drain's cancel ends the statement running when the client leaves; a request pipelined
    behind it (already in the server's socket buffer) then ran to its end outside every pool. Servers start with
    client_connection_check_interval = 1s: PostgreSQL ends it once the drained server's socket is closed."""
    p = pooled_proxy(pg, tmp_path, pool_size=2, pool_mode="transaction")
    role = TENANT_ROLES["initech"][0]
    try:
        for _ in range(2):
            conn = psycopg.connect(p.dsn("ivan"), autocommit=True)
            pgconn = conn.pgconn
            pgconn.enter_pipeline_mode()
            pgconn.send_query_params(b"SELECT pg_sleep(0.5)", None)
            pgconn.pipeline_sync()
            pgconn.send_query_params(b"SELECT pg_sleep(60)", None)
            pgconn.pipeline_sync()
            pgconn.flush()
            time.sleep(0.2)
            pgconn.finish()  # leaves during the first statement, the second one pipelined behind it
        time.sleep(1.0)  # (the first statements would have ended by now: the second ones start if anything does)
        until(lambda: _running_sleeps(pg, role) == 0, timeout=15, what="no pipelined statement left running")
    finally:
        p.stop()
