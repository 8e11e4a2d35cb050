"""A client that does not read its result holds no server for ever (red team 9s6 F1, F2): PostgreSQL acts on no cancel
while it is blocked writing to a client that does not read, so before this a statement past its statement_timeout
kept its backend running (its snapshot, its place in max_db_connections) until the client's socket closed, and with
no limit configured nothing ended it at all. One database (initech), three tenants (initech: ivan, no limits; timed:
tim, statement_timeout 1 s; hooli: hank, the other tenant), a budget of ONE server; transaction and session pooling;
limits.cancel_grace 1 s, pool.client_write_timeout 3 s (the pool's other clock off: client_message_timeout 0)."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator

import psycopg
import pytest

from proxy.protocol import messages as m
from tests.support import wire
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.proxyproc import TENANT_ROLES, ProxyProcess, prepare_backend

WRITE_BOUND = 3.0  # [pool] client_write_timeout
GRACE = 1.0  # [limits] cancel_grace
UNREAD = "SELECT repeat('x', 1000) FROM generate_series(1, 1000000) AS unread_probe"  # 1 GB: more than any buffer


@pytest.fixture(scope="module", params=["transaction", "session"])
def budget(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[
        ProxyProcess]:
    prepare_backend(pg)
    role = TENANT_ROLES["initech"][0]
    p = ProxyProcess(pg, tmp_path_factory.mktemp("unread"), backend_sslmode="disable",
                     pool={"pool_mode": request.param, "pool_size": 1, "max_db_connections": 1,
                           "query_wait_timeout": 30.0, "client_message_timeout": 0,
                           "client_write_timeout": WRITE_BOUND},
                     limits={"cancel_grace": GRACE},
                     extra_tenants={"hooli": {"strategy": "database", "database": "initech", "backend_user": role},
                                    "timed": {"strategy": "database", "database": "initech", "backend_user": role,
                                              "statement_timeout": 1.0}},
                     extra_users={"hank": ("hooli", "hank-pw"), "tim": ("timed", "tim-pw")}).start()
    yield p
    p.stop()


def _login(p: ProxyProcess, user: str) -> socket.socket:
    sock, msgs = wire.login(p.port, {"user": user, "database": p.users[user][0]}, p.password(user), timeout=60)
    assert msgs[-1][0] == b"Z", msgs
    return sock


def _backends(pg: PgCluster) -> list[tuple[str, str | None]]:
    """(state, wait_event) of the backends running the unread query (a superuser's view)."""
    with psycopg.connect(pg.dsn(dbname="initech"), autocommit=True) as conn:
        return conn.execute("SELECT state, wait_event FROM pg_stat_activity WHERE query LIKE '%unread_probe%' "
                            "AND pid <> pg_backend_pid()").fetchall()


def _closed(p: ProxyProcess, reason: str) -> float:
    """pgtenant_unread_sessions_closed_total{reason}, every tenant."""
    with urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return sum(float(ln.split()[-1]) for ln in lines
               if ln.startswith("pgtenant_unread_sessions_closed_total{") and f'reason="{reason}"' in ln)


def _logged(p: ProxyProcess, reason: str) -> list[dict]:
    return [e for e in p.log_events() if e.get("event") == "session_error" and e.get("reason") == reason]


def _another_tenant_served(p: ProxyProcess) -> None:
    """hank (another tenant of the same database, its budget of one server) logs in and is answered."""
    b = _login(p, "hank")  # (session pooling: its login waits for the server)
    with b:
        b.settimeout(60)
        b.sendall(m.query_message("SELECT 'B'"))
        got = wire.read_until(b, b"Z")
    assert [t for t, _ in got] == [b"T", b"D", b"C", b"Z"], got
    assert got[1][1].endswith(b"B")


@pytest.mark.parametrize(("user", "reason", "sqlstate"), [("tim", "statement_timeout", "57014"),
                                                          ("ivan", "client_write_timeout", "08006")],
                         ids=["statement_timeout", "no_limit"])
def test_a_client_that_never_reads_loses_its_server(budget: ProxyProcess, pg: PgCluster, user: str, reason: str,
                                                     sqlstate: str) -> None:
    """The client sends a query with a 1 GB result and reads nothing. tim (statement_timeout 1 s): the watchdog's
    cancel is not acted on (the backend is blocked in ClientWrite), so past limits.cancel_grace the proxy closes the
    server; ivan (no limit at all): past client_write_timeout with none of its output taken, the same. Either way the
    backend is gone from pg_stat_activity (before: still running, for as long as the client's socket stayed open),
    the session ended (logged and counted under its reason), and hank, another tenant of the database's budget of
    one server, gets it (before: 53300 after query_wait_timeout)."""
    closed = _closed(budget, reason)
    logged = len(_logged(budget, reason))
    a = _login(budget, user)
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        a.sendall(m.query_message(UNREAD))
        until(lambda: _backends(pg), timeout=30, interval=0.05, what="the backend running")
        until(lambda: not _backends(pg), timeout=40, interval=0.1, what="the backend gone")
        _another_tenant_served(budget)
        until(lambda: len(_logged(budget, reason)) > logged, timeout=20, interval=0.05, what="the close logged")
    finally:
        a.close()
    assert _logged(budget, reason)[-1]["sqlstate"] == sqlstate
    assert _closed(budget, reason) > closed


def test_a_slow_but_steady_reader_completes_its_result(budget: ProxyProcess) -> None:
    """ivan reads its 6 MB result 64 KiB at a time, a tenth of a second apart: longer in all than client_write_timeout
    with its output pending (the server writes far faster), but taking some at every tick. The result arrives whole
    and the session goes on (the bound is on a client taking nothing, not on a slow one)."""
    a = _login(budget, "ivan")
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        a.settimeout(60)
        a.sendall(m.query_message("SELECT repeat('x', 1000) FROM generate_series(1, 6000)"))
        data = bytearray()
        while not data.endswith(m.ready_for_query(b"I")):
            start = len(data)
            while len(data) - start < 65536 and not data.endswith(m.ready_for_query(b"I")):
                chunk = a.recv(65536)
                assert chunk, f"closed after {len(data)} bytes: {bytes(data[-300:])!r}"
                data += chunk
            time.sleep(0.1)  # (pacing the client: a slow reader, not a timing asserted)
        rows, pos = 0, 0
        while pos < len(data):
            rows += data[pos:pos + 1] == b"D"
            pos += 1 + int.from_bytes(data[pos + 1:pos + 5], "big")
        assert rows == 6000
        a.sendall(m.query_message("SELECT 'again'"))
        got = wire.read_until(a, b"Z")
        assert [t for t, _ in got] == [b"T", b"D", b"C", b"Z"], got
    finally:
        a.close()

