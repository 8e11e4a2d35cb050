"""A session's own CancelRequests: one forwarded per running request, none while nothing runs (red team 9s6 F4)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import psycopg
import pytest

from proxy.protocol import messages as m
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.pools import pooled_proxy
from tests.support.proxyproc import ProxyProcess
from tests.support.wire import backend_key, login, read_until


@pytest.fixture(scope="module", params=["session", "transaction"])
def px(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory,
       request: pytest.FixtureRequest) -> Iterator[ProxyProcess]:
    p = pooled_proxy(pg, tmp_path_factory.mktemp("cancelflood"), pool_mode=request.param, pool_size=2)
    yield p
    p.stop()


def _running(pg: PgCluster, marker: str) -> bool:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
                           (f"%{marker}%",)).fetchone()
    return bool(row and row[0])


def _burst(port: int, key: tuple[int, bytes], n: int) -> None:
    """`n` CancelRequests with `key`, all sent before any is waited for; then until the proxy closed each."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]
    try:
        for sock in socks:
            sock.sendall(m.encode_cancel_request(*key))
        for sock in socks:
            assert sock.recv(1) == b""  # closed without an answer, like PostgreSQL (once it acted, if forwarded)
    finally:
        for sock in socks:
            sock.close()


def _sleep_canceled(px: ProxyProcess, pg: PgCluster, sock: socket.socket, key: tuple[int, bytes], marker: str,
                    cancels: int) -> list[bytes]:
    sock.sendall(m.query_message(f"SELECT pg_sleep(60) /* {marker} */"))
    until(lambda: _running(pg, marker), timeout=30, what="the pg_sleep running")
    _burst(px.port, key, cancels)
    msgs = read_until(sock)
    return [body for t, body in msgs if t == b"E"]


def test_a_burst_of_cancels_reaches_postgresql_once_and_cancels(px: ProxyProcess, pg: PgCluster) -> None:
    """100 CancelRequests at once for one running pg_sleep: at most two reach PostgreSQL (before: all 100, ~600 a
    second from one session, each a PostgreSQL fork), the statement is cancelled, and so is a later one."""
    sock, msgs = login(px.port, {"user": "alice", "database": px.users["alice"][0]}, px.password("alice"))
    key = backend_key(msgs)
    try:
        before = px.count_events("cancel_forwarded")
        errors = _sleep_canceled(px, pg, sock, key, "flood-1", 100)
        assert len(errors) == 1 and b"C57014\x00" in errors[0], errors
        first = px.count_events("cancel_forwarded") - before
        assert 1 <= first <= 2, first
        errors = _sleep_canceled(px, pg, sock, key, "flood-2", 1)  # a later request: its cancel is forwarded
        assert len(errors) == 1 and b"C57014\x00" in errors[0], errors
        assert px.count_events("cancel_forwarded") - before == first + 1
    finally:
        sock.close()


def test_a_cancel_while_nothing_runs_is_not_forwarded(px: ProxyProcess, pg: PgCluster) -> None:
    """Idle (in a transaction too, where session and transaction pooling hold the server): PostgreSQL ignores such a
    cancel; it is not forwarded (before: forwarded, one PostgreSQL fork each, at any rate)."""
    sock, msgs = login(px.port, {"user": "alice", "database": px.users["alice"][0]}, px.password("alice"))
    key = backend_key(msgs)
    try:
        sock.sendall(m.query_message("BEGIN"))
        read_until(sock)
        before = px.count_events("cancel_forwarded")
        _burst(px.port, key, 20)
        sock.sendall(m.query_message("SELECT 1"))
        assert not [t for t, _ in read_until(sock) if t == b"E"]  # the transaction goes on
        sock.sendall(m.query_message("COMMIT"))
        read_until(sock)
        assert px.count_events("cancel_forwarded") == before
    finally:
        sock.close()
