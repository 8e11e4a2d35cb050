"""A COPY FROM STDIN the client leaves idle holds its server no longer than idle_in_transaction_timeout (red team
9s5: PostgreSQL times nothing in a COPY IN, so a tenant's idle COPYs held a database's whole max_db_connections
budget for ever, and every other tenant of that database got 53300). One database (initech), two tenants (initech:
ivan, hooli: hank), a budget of ONE server, pool size 1, transaction pooling (sticky servers on and off) and session
pooling, the pool's other clock off (client_message_timeout = 0: the bound runs whatever that is)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import psycopg
import pytest

from proxy.protocol import messages as m
from tests.support import wire
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.pools import ADMIN_PASSWORD
from tests.support.proxyproc import TENANT_ROLES, ProxyProcess, prepare_backend

BOUND = 2.0  # [limits] idle_in_transaction_timeout, seconds


@pytest.fixture(scope="module", params=[("transaction", True), ("transaction", False), ("session", False)],
                ids=["transaction-sticky", "transaction-no_sticky", "session"])
def budget(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[
        ProxyProcess]:
    prepare_backend(pg)
    mode, sticky = request.param
    p = ProxyProcess(pg, tmp_path_factory.mktemp("copyidle"), backend_sslmode="disable",
                     pool={"pool_mode": mode, "sticky_servers": sticky, "pool_size": 1, "max_db_connections": 1,
                           "query_wait_timeout": 15.0, "client_message_timeout": 0, "max_pin_time": 0.5},
                     limits={"idle_in_transaction_timeout": BOUND}, admin_users={"ops": ADMIN_PASSWORD},
                     extra_tenants={"hooli": {"strategy": "database", "database": "initech",
                                              "backend_user": TENANT_ROLES["initech"][0]}},
                     extra_users={"hank": ("hooli", "hank-pw")}).start()
    role = TENANT_ROLES["initech"][0]
    pg.execute("CREATE TABLE IF NOT EXISTS public.copy_idle (id int NOT NULL, v text NOT NULL);"
               f'ALTER TABLE public.copy_idle OWNER TO "{role}";'
               "CREATE TABLE IF NOT EXISTS public.copy_idle_u (id int PRIMARY KEY, v text NOT NULL);"
               f'ALTER TABLE public.copy_idle_u OWNER TO "{role}"', dbname="initech")
    yield p
    p.stop()


def _login(p: ProxyProcess, user: str) -> socket.socket:
    sock, msgs = wire.login(p.port, {"user": user, "database": p.users[user][0]}, p.password(user), timeout=30)
    assert msgs[-1][0] == b"Z", msgs
    return sock


def _until(sock: socket.socket, types: bytes) -> list[tuple[bytes, bytes]]:
    """The messages up to one of `types` (included), or up to the end of the connection (then last: b"closed")."""
    out: list[tuple[bytes, bytes]] = []
    while not out or out[-1][0] not in (*[types[i:i + 1] for i in range(len(types))], b"closed"):
        try:
            out.append(wire.read_message(sock))
        except ConnectionError:
            out.append((b"closed", b""))
    return out


def _query(sock: socket.socket, sql: str) -> list[tuple[bytes, bytes]]:
    sock.sendall(m.query_message(sql))
    return _until(sock, b"Z")


def _parse(sql: str) -> bytes:
    return m.frame(b"P", b"\0" + sql.encode() + b"\0\0\0")


_BIND = m.frame(b"B", b"\0\0" + b"\0\0" * 3)
_EXECUTE = m.frame(b"E", b"\0\0\0\0\0")
_FLUSH = m.frame(b"H", b"")
_SYNC = m.frame(b"S", b"")
_COPY = "COPY public.copy_idle FROM STDIN"

# How A begins its COPY FROM STDIN: a simple Query; P/B/E and a Flush; libpq's P/B/D/E/S (the COPY swallows the
# Sync); and a simple Query in an explicit transaction.
SHAPES = {
    "simple": m.query_message(_COPY),
    "extended_flush": _parse(_COPY) + _BIND + _EXECUTE + _FLUSH,
    "extended_sync": _parse(_COPY) + _BIND + m.frame(b"D", b"P\0") + _EXECUTE + _SYNC,
    "in_transaction": m.query_message("BEGIN") + m.query_message(_COPY),
}


def _held_in_copy(p: ProxyProcess) -> float:
    """pgtenant_servers_held_without_sync{waiting="copy_in"}, every tenant label."""
    with urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return sum(float(ln.split()[-1]) for ln in lines
               if ln.startswith("pgtenant_servers_held_without_sync{") and 'waiting="copy_in"' in ln)


def _copy_logged(p: ProxyProcess) -> int:
    return len([e for e in p.log_events()
                if e.get("event") == "server_held_without_sync" and e.get("waiting") == "copy_in"])


def _fatal(got: list[tuple[bytes, bytes]]) -> list[tuple[str, str, str]]:
    return [(f["S"], f["C"], f["M"]) for f in (m.decode_error_fields(body) for t, body in got if t == b"E")]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_an_idle_copy_in_ends_and_another_tenant_of_the_database_gets_the_server(budget: ProxyProcess,
                                                                                  shape: str) -> None:
    """A (initech) begins a COPY FROM STDIN and sends nothing more. Before: A held the database's one server for
    ever and B (hooli, the same database) got 53300 after query_wait_timeout. Now: past idle_in_transaction_timeout
    without a byte from A, A's session ends with FATAL 25P03 (the COPY named), its server is closed, and B gets a
    server and its answer. In transaction pooling the server is counted (waiting="copy_in") and logged past
    max_pin_time while A holds it."""
    pooled = budget.pool["pool_mode"] == "transaction"
    logged = _copy_logged(budget)
    a = _login(budget, "ivan")
    try:
        a.sendall(SHAPES[shape])
        got = _until(a, b"G")
        assert got[-1][0] == b"G", got
        if pooled:
            until(lambda: _held_in_copy(budget) == 1, timeout=20, interval=0.05, what="the server counted")
            until(lambda: _copy_logged(budget) > logged, timeout=20, interval=0.05, what="the hold logged")
        b = _login(budget, "hank")  # (session pooling: its login waits for the server)
        with b:
            b.settimeout(60)
            answer = _query(b, "SELECT 'B'")
            assert [t for t, _ in answer] == [b"T", b"D", b"C", b"Z"], answer
            assert answer[1][1].endswith(b"B")
        a.settimeout(60)
        ended = _until(a, b"")
    finally:
        a.close()
    assert ended[-1][0] == b"closed", ended
    assert _fatal(ended) == [("FATAL", "25P03", "terminating connection due to idle COPY FROM STDIN: no data from "
                              "the client for 2 s (pgtenant idle_in_transaction_timeout)")]
    if pooled:
        until(lambda: _held_in_copy(budget) == 0, timeout=20, interval=0.05, what="the count back to 0")


def test_a_copy_sending_slowly_under_the_bound_completes_and_its_next_idle_copy_ends(budget: ProxyProcess) -> None:
    """A sends its COPY's rows one at a time, BOUND / 3 apart, for more than twice the bound, then CopyDone: the
    COPY completes (COPY n, the rows there) and the session goes on. Its next COPY left idle ends as above (before:
    never ended)."""
    rows = 8  # 8 x BOUND / 3 > 2 x BOUND
    a = _login(budget, "ivan")
    try:
        got = _query(a, "DELETE FROM public.copy_idle")
        assert got[-1][0] == b"Z", got
        a.sendall(m.query_message(_COPY))
        got = _until(a, b"G")
        assert got[-1][0] == b"G", got
        for i in range(rows):
            time.sleep(BOUND / 3)  # (pacing the client: under the bound between bytes, over it in all)
            a.sendall(m.frame(b"d", f"{i}\trow {i}\n".encode()))
        a.sendall(m.frame(b"c", b""))
        got = _until(a, b"Z")
        assert [t for t, _ in got] == [b"C", b"Z"], got
        assert got[0][1] == f"COPY {rows}\0".encode()
        got = _query(a, "SELECT count(*) FROM public.copy_idle")
        assert [t for t, _ in got] == [b"T", b"D", b"C", b"Z"], got
        assert got[1][1].endswith(str(rows).encode())
        a.sendall(m.query_message(_COPY))
        got = _until(a, b"G")
        assert got[-1][0] == b"G", got
        a.settimeout(60)
        ended = _until(a, b"")
    finally:
        a.close()
    assert [(s, c) for s, c, _ in _fatal(ended)] == [("FATAL", "25P03")], ended


def test_a_copy_whose_server_takes_no_data_is_not_ended(budget: ProxyProcess, pg: PgCluster) -> None:
    """A's COPY waits for a row lock (another transaction, directly on PostgreSQL, inserted the same key and has not
    ended): PostgreSQL reads nothing meanwhile, the proxy stops reading A once the server link is full, and A's
    sender blocks. That is no idle client: past the bound A is not ended (the bound's first form ended it: no byte
    read from A for idle_in_transaction_timeout); once the other transaction rolls back the COPY completes."""
    rows, value = 256, "x" * 262_144  # 64 MiB: more than the sockets' buffers on the way hold
    with psycopg.connect(pg.dsn(dbname="initech")) as blocker:
        blocker.execute("DELETE FROM public.copy_idle_u")
        blocker.commit()
        blocker.execute("INSERT INTO public.copy_idle_u VALUES (0, 'blocker')")  # (its transaction stays open)
        a = _login(budget, "ivan")
        try:
            a.sendall(m.query_message("COPY public.copy_idle_u FROM STDIN"))
            got = _until(a, b"G")
            assert got[-1][0] == b"G", got
            sent: list[BaseException] = []

            def send() -> None:
                try:
                    a.sendall(m.frame(b"d", b"0\tfirst\n"))
                    for i in range(1, rows + 1):
                        a.sendall(m.frame(b"d", f"{i}\t{value}\n".encode()))
                    a.sendall(m.frame(b"c", b""))
                except OSError as exc:  # (the proxy ended the session)
                    sent.append(exc)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            time.sleep(3 * BOUND)  # (the COPY waits for the lock this long: more than the bound)
            blocker.rollback()
            a.settimeout(60)
            got = _until(a, b"Z")
            sender.join(60)
            assert not sent, sent
            assert [t for t, _ in got] == [b"C", b"Z"], got[:3]
            assert got[0][1] == f"COPY {rows + 1}\0".encode()
            got = _query(a, "SELECT count(*) FROM public.copy_idle_u")
            assert [t for t, _ in got] == [b"T", b"D", b"C", b"Z"], got
        finally:
            a.close()
