"""A client between messages, or mid-message, on a pool of ONE server (transaction pooling, sticky servers on and
off): what PostgreSQL would end the session for never reaches a pooled server (red team 9s2 M1), a message begun
and stalled takes no server, and one stalled while a server is held ends within client_message_timeout (9s F2)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from proxy.protocol import messages as m
from tests.support import wire
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.pools import console, pooled_proxy
from tests.support.proxyproc import ProxyProcess


@pytest.fixture(scope="module", params=[True, False], ids=["sticky", "no_sticky"])
def one(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[
        ProxyProcess]:
    """Transaction pooling, one server per pool, sticky servers on or off."""
    p = pooled_proxy(pg, tmp_path_factory.mktemp("midmessage"), pool_mode="transaction", pool_size=1,
                     query_wait_timeout=20.0, sticky_servers=request.param)
    yield p
    p.stop()


@pytest.fixture(scope="module", params=[True, False], ids=["sticky", "no_sticky"])
def budget(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[
        ProxyProcess]:
    """acme and bigco (one database) on a budget of ONE server, client_message_timeout 2 s."""
    p = pooled_proxy(pg, tmp_path_factory.mktemp("midmessage-budget"), pool_mode="transaction", pool_size=1,
                     max_db_connections=1, query_wait_timeout=20.0, client_message_timeout=2.0,
                     sticky_servers=request.param)
    yield p
    p.stop()


def _login(p: ProxyProcess, user: str = "alice") -> socket.socket:
    sock, messages = wire.login(p.port, {"user": user, "database": p.users[user][0]}, p.password(user), timeout=30)
    assert messages[-1][0] == b"Z", messages
    return sock


def _value(sock: socket.socket, sql: str) -> bytes:
    """The one value of `sql`'s one row (anything else fails, with what came)."""
    sock.sendall(m.query_message(sql))
    got = _answer(sock)
    assert [t for t, _ in got] == [b"T", b"D", b"C", b"Z"], got
    return got[1][1][6:]


def _answer(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    """The messages up to ReadyForQuery, or up to the end of the connection (then last: (b"closed", b""))."""
    out: list[tuple[bytes, bytes]] = []
    while not out or out[-1][0] not in (b"Z", b"closed"):
        try:
            out.append(wire.read_message(sock))
        except ConnectionError:
            out.append((b"closed", b""))
    return out


def _waiting(p: ProxyProcess) -> int:
    return sum(int(r["cl_waiting"]) for r in console(p, "SHOW POOLS;") if r["tenant"] == "acme")


@pytest.mark.parametrize(("message", "words"), [
    (m.frame(b"z", b"zzzz"), "invalid frontend message type 122"),
    # a CopyDone outside COPY longer than PostgreSQL's 10,000-byte limit for its type: it closes without a word
    (m.frame(b"c", b"x" * 10_000), "invalid message length 10004"),
], ids=["unknown_type", "copy_done_too_long"])
def test_an_unknown_message_type_is_refused_by_the_proxy_and_never_reaches_the_next_client(
        one: ProxyProcess, message: bytes, words: str) -> None:
    """Red team 9s2 M1 (two sessions on one server): A's COMMIT and an unknown message type ('z') in one read; B
    waits for the one server. PostgreSQL answers the COMMIT (ReadyForQuery 'I': the server went to B), then reads
    'z' and ends its session: B lost its server (08006) or got A's FATAL itself, and A went on. The proxy refuses the
    type itself (PostgreSQL's FATAL and words), never forwarding it; B gets the server, whole."""
    a, b = _login(one), _login(one)
    try:
        a.sendall(m.query_message("BEGIN"))
        assert _answer(a)[-1] == (b"Z", b"T")
        b.sendall(m.query_message("SELECT 'b', pg_backend_pid()"))
        until(lambda: _waiting(one) == 1, timeout=20, interval=0.05, what="B waiting for the one server")
        a.sendall(m.query_message("COMMIT") + message)
        got_a, got_b = _answer(a), _answer(b)
    finally:
        a.close()
        b.close()
    errors_a = [m.decode_error_fields(body) for t, body in got_a if t == b"E"]
    assert [(e["S"], e["C"], e["M"]) for e in errors_a] == [("FATAL", "08P01", words)]
    assert got_a[-1][0] == b"closed", got_a
    assert [t for t, _ in got_b] == [b"T", b"D", b"C", b"Z"], got_b  # B's own answer, not A's FATAL or a lost server
    assert b"\x00\x00\x00\x01b" in got_b[1][1]


def test_a_message_begun_and_stalled_takes_no_server_from_another_tenant(budget: ProxyProcess) -> None:
    """Red team 9s F2: A (acme) sends the first bytes of a query and stalls; it held a server (its kept one, or one
    it asked for), and with max_db_connections = 1 B (bigco) waited for the budget until 53300. A message begun
    takes no server until it is whole: B logs in and runs at once, and A's query runs once it is complete."""
    a = _login(budget)
    try:
        assert _value(a, "SELECT 'a1'") == b"a1"
        q = m.query_message("SELECT 'a2'")
        a.sendall(q[:3])
        b = _login(budget, "bruno")  # (its login needs a server of the database too)
        try:
            assert _value(b, "SELECT current_setting('pgtenant.tenant_id')") == b"bigco"
        finally:
            b.close()
        a.sendall(q[3:])
        got = _answer(a)
        assert [t for t, _ in got] == [b"T", b"D", b"C", b"Z"] and got[1][1][6:] == b"a2", got
    finally:
        a.close()


def test_a_message_stalled_while_a_server_is_held_ends_the_session_within_client_message_timeout(
        budget: ProxyProcess) -> None:
    """A holds the one server (a transaction) and sends the first bytes of a query, then nothing: after
    client_message_timeout the proxy ends A's session (FATAL 08P01 naming it) and closes the server; B, waiting for
    the budget meanwhile, gets a server and its answer."""
    a = _login(budget)
    try:
        a.sendall(m.query_message("BEGIN"))
        assert _answer(a)[-1] == (b"Z", b"T")
        a.sendall(m.query_message("SELECT 'never'")[:7])
        b = _login(budget, "bruno")  # waits for the budget until A's session is ended
        try:
            assert _value(b, "SELECT 'b'") == b"b"
        finally:
            b.close()
        got = _answer(a)
    finally:
        a.close()
    errors = [m.decode_error_fields(body) for t, body in got if t == b"E"]
    assert [(e["S"], e["C"]) for e in errors] == [("FATAL", "08P01")], got
    assert "client_message_timeout (2 s)" in errors[0]["M"] and got[-1][0] == b"closed"


@pytest.mark.parametrize(("first", "then"), [
    (m.frame(b"d", b"xxxx"), b""),
    (m.frame(b"H", b""), b""),
    (m.frame(b"f", b"no\x00"), b""),
    (m.query_message("SELECT 'a'") + m.frame(b"d", b"xxxx")[:3], m.frame(b"d", b"xxxx")[3:]),
], ids=["copydata", "flush", "copyfail", "copydata_split_after_a_query"])
def test_a_message_postgresql_answers_with_nothing_holds_no_server(
        budget: ProxyProcess, first: bytes, then: bytes) -> None:
    """Red team 9s3 R1: A (acme) sends a whole message PostgreSQL answers with nothing (CopyData/CopyFail outside
    COPY, a lone Flush) — alone, or completed after its query's ReadyForQuery — and idles; it took (or resumed) the
    one server and no answer ever came to give it back: B (bigco) waited for the budget until 53300, 8 of 8 runs. Now
    the server goes back after that read (a lone Flush's batch ended by the proxy's own Sync): B runs at once, and A's
    session goes on."""
    a = _login(budget)
    try:
        assert _value(a, "SELECT 'a1'") == b"a1"
        a.sendall(first)
        if then:
            assert _answer(a)[-1] == (b"Z", b"I")
            a.sendall(then)
        b = _login(budget, "bruno")  # (its login needs a server of the database too)
        try:
            assert _value(b, "SELECT current_setting('pgtenant.tenant_id')") == b"bigco"
        finally:
            b.close()
        assert _value(a, "SELECT 'a2'") == b"a2"
    finally:
        a.close()
