"""Red team 21p F1: past 10,000 requests in flight (Queries, batches to their Sync, sent and not answered) the request
tracker dropped the oldest one's attribution and matched the answers to come against the wrong request (a ROLLBACK
TO PostgreSQL never ran taken as run); now the session ends with FATAL 54000 (too_many_in_flight) before any answer
is matched. gina of `saas`, both pool modes, every PostgreSQL the fixtures offer."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import psycopg
import pytest

from proxy.protocol import messages as m
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import ProxyProcess, dan_proxy, started_per_mode
from tests.support.wire import answer_codes as _errors
from tests.support.wire import answers as _wire
from tests.support.wire import login, read_message

MODES = ("transaction", "session")


@pytest.fixture(scope="module")
def proxies(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ProxyProcess]]:
    yield from started_per_mode(lambda mode: dan_proxy(
        pg, tmp_path_factory.mktemp(f"in-flight-{mode}"),
        pool={"pool_mode": mode, **({"statement_cache": False} if mode == "session" else {})}), MODES)


def _session(proxy: ProxyProcess) -> socket.socket:
    sock, msgs = login(proxy.port, {"user": "gina", "database": "saas"}, proxy.password("gina"))
    assert msgs[-1][0] == b"Z", msgs
    return sock


def _pipelined(sock: socket.socket, data: bytes) -> list[tuple[bytes, bytes]]:
    """Send `data` from a thread while reading every answer to the connection's end (or a read timeout)."""
    sender = threading.Thread(target=_send_all, args=(sock, data), daemon=True)
    sender.start()
    out: list[tuple[bytes, bytes]] = []
    sock.settimeout(30)  # (not a timing: the end of an answer that never comes, on the base)
    try:
        while True:
            out.append(read_message(sock))
    except (OSError, ConnectionError, EOFError):
        pass
    sender.join(10)
    return out


def _send_all(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # (the proxy ended the connection first)
        sock.sendall(data)


@pytest.mark.parametrize("mode", MODES)
def test_more_than_ten_thousand_requests_in_flight_end_the_session(
        proxies: dict[str, ProxyProcess], pg: PgCluster, mode: str) -> None:
    """rt21p F1 (ow.py): in a transaction, cursors declared after SAVEPOINT a, SAVEPOINT t, then one write of 10,001
    Queries behind a head held on a lock another session has: `SELECT 1; SELECT 1; SELECT 1`, `SELECT 1/0; ROLLBACK
    TO a` and 9,999 Syncs (each a request PostgreSQL answers; 5 bytes each, all in the socket buffers while the
    head waits). Past 10,000 in flight the tracker dropped the head's attribution and took its
    CommandCompletes for the next request's ROLLBACK TO (never run). Now the session ends with FATAL 54000 before
    any answer is matched; the other session's transaction then ends as usual."""
    holder = psycopg.connect(pg.dsn(dbname="saas"))  # (a transaction of its own, directly: LOCK is not a tenant's)
    sock = _session(proxies[mode])
    try:
        holder.execute("LOCK TABLE globex.orders IN ACCESS EXCLUSIVE MODE")
        for sql in ("BEGIN", "SAVEPOINT a", "DECLARE c0 CURSOR FOR SELECT 1; DECLARE c1 CURSOR FOR SELECT 1",
                    "SAVEPOINT t"):
            assert _errors(_wire(sock, m.Query(sql).encode())) == []
        head = m.Query("SELECT count(*) FROM orders; SELECT 1; SELECT 1").encode()  # (waits for the lock)
        data = head + m.Query("SELECT 1/0; ROLLBACK TO a").encode() + m.SYNC_MESSAGE * 9999
        answered = _pipelined(sock, data)
        fatal = [m.decode_error_fields(body) for t, body in answered if t == b"E"]
        assert fatal and fatal[-1].get("S") == "FATAL" and fatal[-1].get("C") == "54000", fatal[-3:]
        assert "more than 10000 requests in flight" in str(fatal[-1].get("M"))
        assert sum(1 for t, _ in answered if t == b"Z") == 0  # (the head was still waiting: nothing answered)
    finally:
        holder.rollback()
        sock.close()
        holder.close()
