"""A reload that removes a user ends its sessions at once, in both pool modes: what a session pipelined on its
server is not run (its backend process is terminated), and an idle one is closed with FATAL 28000 unasked (red
team 9b3 F1, F3). Config users, removed from the file and SIGHUP."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import psycopg
import pytest

from proxy.protocol import messages as m
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.proxyproc import ProxyProcess, prepare_backend
from tests.support.wire import login, read_message

SLEEP = 0.5  # each pipelined request's pg_sleep
K = 3  # requests pipelined in one write


@pytest.fixture(scope="module", params=["session", "transaction"])
def proxy(request: pytest.FixtureRequest, pg: PgCluster,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp(f"revocation-{request.param}"), pool={"pool_mode": request.param},
                     extra_users={"victor": ("initech", "victor-pw"), "lena": ("initech", "lena-pw")}).start()
    yield p
    p.stop()


def _remove(p: ProxyProcess, user: str) -> None:
    """The operator removes `user` from the config and reloads (SIGHUP); returns once the reload applied."""
    p.extra_users.pop(user)
    p.write_config()
    p.reload(expect="reloaded")


def _read_to_end(sock: socket.socket, seconds: float) -> tuple[list[tuple[bytes, bytes]], bool]:
    """Every message until the proxy closes the connection (True) or `seconds` pass without one (False)."""
    sock.settimeout(seconds)
    out: list[tuple[bytes, bytes]] = []
    try:
        while True:
            out.append(read_message(sock))
    except ConnectionError:
        return out, True
    except TimeoutError:
        return out, False


def _fatal_28000(messages: list[tuple[bytes, bytes]]) -> bool:
    return any(t == b"E" and m.decode_error_fields(body).get("C") == "28000"
               and m.decode_error_fields(body).get("S") == "FATAL" for t, body in messages)


def test_a_removed_users_pipelined_requests_are_not_run(proxy: ProxyProcess, pg: PgCluster) -> None:
    """Red team 9b3 F1: a removed user's pipelined Query messages ran after the removal and were answered (2 932 of
    3 000 INSERTs, the last +69 s): the reload's CancelRequest stopped only the running statement. Now the backend
    process is terminated: no row of the K requests behind the running one is written, and the client gets FATAL
    28000."""
    ids = [900_000 + i for i in range(K)]
    pg.execute(f"DELETE FROM orders WHERE id >= {ids[0]}", dbname="initech")
    sock, msgs = login(proxy.port, {"user": "victor", "database": "initech"}, "victor-pw")
    assert msgs[-1][0] == b"Z", msgs
    try:
        # A long statement first (running when the removal applies, however long the reload takes), then K
        # requests pipelined behind it in the same write.
        sock.sendall(m.Query("SELECT pg_sleep(60) /* rt9b3-f1 */").encode() + b"".join(
            m.Query(f"INSERT INTO orders VALUES ({i}, extract(epoch FROM clock_timestamp())); "
                    f"SELECT pg_sleep({SLEEP}) /* rt9b3-f1 */").encode() for i in ids))
        until(lambda: pg.execute("SELECT pid FROM pg_stat_activity WHERE state = 'active' "
                                 "AND query LIKE '%rt9b3-f1%' AND query NOT LIKE '%pg_stat_activity%'") or None,
              10, interval=0.02, what="the first request runs")
        _remove(proxy, "victor")
        answers, closed = _read_to_end(sock, K * SLEEP + 5)
    finally:
        sock.close()
    until(lambda: not pg.execute("SELECT 1 FROM pg_stat_activity WHERE query LIKE '%rt9b3-f1%' "
                                 "AND query NOT LIKE '%pg_stat_activity%'") or None,
          K * SLEEP + 10, interval=0.05, what="no request of the removed user left on a backend")
    written = pg.execute(f"SELECT id FROM orders WHERE id >= {ids[0]} ORDER BY id", dbname="initech")
    assert written == [], f"rows written after the removal: {written}"
    assert closed and _fatal_28000(answers), [t for t, _ in answers]
    assert not [t for t, _ in answers if t == b"C"], "a request's CommandComplete reached the removed user"
    assert any(e.get("event") == "backend_terminated" and e.get("terminated") for e in proxy.log_events())
    # The other tenants' sessions are untouched, and the pool serves the tenant's other users.
    with psycopg.connect(proxy.dsn("ivan"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE id < 100").fetchone() == (7,)


def test_a_removed_users_idle_session_is_closed_at_once_and_hears_no_notify(
    proxy: ProxyProcess, pg: PgCluster
) -> None:
    """Red team 9b3 F3: a removed user's idle session stayed open and kept receiving NOTIFY payloads (3 of 3). Now
    it is closed at the reload with FATAL 28000, sent unasked as PostgreSQL's own termination is."""
    sock, msgs = login(proxy.port, {"user": "lena", "database": "initech"}, "lena-pw")
    assert msgs[-1][0] == b"Z", msgs
    try:
        sock.sendall(m.Query("LISTEN reports").encode())
        listened, _ = _read_until_ready(sock)
        assert not [t for t, _ in listened if t == b"E"], listened
        _remove(proxy, "lena")
        with psycopg.connect(proxy.dsn("ivan"), autocommit=True) as other:
            other.execute("NOTIFY reports, 'quarterly numbers'")
        answers, closed = _read_to_end(sock, 5)
    finally:
        sock.close()
    assert not [body for t, body in answers if t == b"A"], "a NOTIFY payload reached the removed user"
    assert closed and _fatal_28000(answers), [t for t, _ in answers]


def _read_until_ready(sock: socket.socket) -> tuple[list[tuple[bytes, bytes]], bytes]:
    sock.settimeout(10)
    out = []
    while True:
        t, body = read_message(sock)
        out.append((t, body))
        if t == b"Z":
            return out, body
