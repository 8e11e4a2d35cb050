"""A LISTEN session whose client stops reading pins PostgreSQL's NOTIFY queue no longer than client_write_timeout
(red team 9s6 F2: its backend, blocked writing notifications, held the tail of the server-wide 8 GB queue; one
tenant's notifications filled it in 19-68 min, then every NOTIFY of the cluster fails). ivan, alone on its database
(initech, database strategy: LISTEN allowed), no limits; client_write_timeout 3 s; transaction and session pooling."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import psycopg
import pytest

from proxy.protocol import messages as m
from tests.support import wire
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.proxyproc import ProxyProcess, prepare_backend


@pytest.fixture(scope="module", params=["transaction", "session"])
def proxy(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[
        ProxyProcess]:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("unread-listen"), backend_sslmode="disable",
                     pool={"pool_mode": request.param, "client_message_timeout": 0, "client_write_timeout": 3.0}
                     ).start()
    yield p
    p.stop()


def _listening(pg: PgCluster) -> list[tuple]:
    with psycopg.connect(pg.dsn(dbname="initech"), autocommit=True) as conn:
        return conn.execute("SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN unread_probe_channel'").fetchall()


def test_a_listener_that_stops_reading_ends_and_leaves_the_notify_queue(proxy: ProxyProcess, pg: PgCluster) -> None:
    """ivan LISTENs and then reads nothing while notifications come (straight from PostgreSQL, 7.8 KB each). Before:
    its backend stayed `idle` in ClientWrite for as long as ivan's socket stayed open. Now: once none of its output
    is taken for client_write_timeout the session ends, its server is closed and the listening backend is gone."""
    sock, msgs = wire.login(proxy.port, {"user": "ivan", "database": "initech"}, proxy.password("ivan"), timeout=60)
    try:
        assert msgs[-1][0] == b"Z", msgs
        sock.settimeout(60)
        sock.sendall(m.query_message("LISTEN unread_probe_channel"))
        got = wire.read_until(sock, b"Z")
        assert [t for t, _ in got] == [b"C", b"Z"], got
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert _listening(pg)
        with psycopg.connect(pg.dsn(dbname="initech"), autocommit=True) as notifier:
            def notified_and_gone() -> bool:
                notifier.execute("SELECT pg_notify('unread_probe_channel', g || repeat('n', 7800)) "
                                 "FROM generate_series(1, 200) g")
                return not _listening(pg)

            until(notified_and_gone, timeout=60, interval=0.1, what="the listener's backend gone")
    finally:
        sock.close()
    until(lambda: [e for e in proxy.log_events() if e.get("event") == "session_error"
                   and e.get("reason") == "client_write_timeout"], timeout=20, interval=0.05, what="the close logged")
