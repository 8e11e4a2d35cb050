"""Faults as a client and an operator see them: SQLSTATE, log event, metric — and docs/operations.md says so.

Each test provokes one fault against a real pgtenant and PostgreSQL, checks what the client got and what the
operator can see, and holds the fault's row in the "Faults" table of docs/operations.md to those same words.
"""

from __future__ import annotations

import re
import socket
import struct
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.protocol import messages as m
from tests.support.certs import TlsFiles
from tests.support.differential import GSSENC, read_outcome
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.proxyproc import TENANT_ROLES, ProxyProcess, prepare_backend
from tests.support.wire import login

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def doc_row(fault: str) -> str:
    """The row of docs/operations.md's fault table whose first cell is `fault` (in backticks)."""
    for line in DOC.read_text().splitlines():
        if line.startswith(f"| `{fault}` |"):
            return line
    raise AssertionError(f"docs/operations.md has no fault row for `{fault}`")


def assert_documented(fault: str, *facts: str) -> None:
    row = doc_row(fault)
    for fact in facts:
        assert fact in row, f"docs/operations.md, fault `{fault}`: {fact!r} missing from\n{row}"


def metric(p: ProxyProcess, name: str, **labels: str) -> float:
    with urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def events(p: ProxyProcess, event: str, **fields: object) -> list[dict[str, object]]:
    return [e for e in p.log_events() if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())]


@pytest.fixture(scope="module")
def limited(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, tls_certs: TlsFiles) -> Iterator[ProxyProcess]:
    """pgtenant with room for two client connections (one of them not logged in yet)."""
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("limited"), tls=tls_certs, backend_sslmode="disable",
                     limits={"max_client_connections": 2, "max_prelogin_connections": 1,
                             "max_prelogin_connections_per_address": 1})
    p.start()
    yield p
    p.stop()


def test_backend_refusal_keeps_its_sqlstate(pg: PgCluster, proxy: ProxyProcess) -> None:
    """PostgreSQL out of slots for the backend role: 53300 reaches the client (was 08001), naming the backend."""
    role = TENANT_ROLES["globex"][0]
    before = metric(proxy, "pgtenant_backend_errors_total", tenant="globex", sqlstate_class="53")
    pg.execute(f"ALTER ROLE {role} CONNECTION LIMIT 0")
    try:
        sock, msgs = login(proxy.port, {"user": "gina", "database": "globex"}, proxy.password("gina"))
        sock.close()
    finally:
        pg.execute(f"ALTER ROLE {role} CONNECTION LIMIT -1")
    err = next(fields for t, fields in msgs if t == "E")
    assert (err["V"], err["C"]) == ("FATAL", "53300"), err
    assert err["M"].startswith('pgtenant could not connect to backend "main') and "too many connections" in err["M"]
    until(lambda: events(proxy, "backend_failed", sqlstate="53300"), what="backend_failed with sqlstate 53300")
    assert metric(proxy, "pgtenant_backend_errors_total", tenant="globex", sqlstate_class="53") == before + 1
    assert_documented("backend-refuses-login", "`53300`", "`backend_failed`",
                      "`pgtenant_backend_errors_total{sqlstate_class}`")


def test_own_connection_limit_is_distinguishable(limited: ProxyProcess) -> None:
    """pgtenant's max_client_connections: 53300 too, in words that say whose limit it is."""
    def logged_in() -> socket.socket | None:  # the start-up probe's connection may not be gone yet
        sock, msgs = login(limited.port, {"user": "ivan", "database": "initech"}, limited.password("ivan"))
        if msgs and msgs[-1][0] == b"Z":
            return sock
        sock.close()
        return None

    first = until(logged_in, what="one session within the limit")
    try:
        with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as second:
            second.sendall(b"\x00\x00")  # has spoken (half a length word): kept while it waits
            with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as third:
                got = read_outcome(third)
    finally:
        first.close()
    assert got.end == "closed" and len(got.errors) == 1, got
    severity, code, message = got.errors[0]
    assert (severity, code) == ("FATAL", "53300")
    assert "pgtenant accepts at most 2 client connections" in message and "backend" not in message
    until(lambda: metric(limited, "pgtenant_auth_attempts_total", outcome="refused", reason="too_many_clients"),
          what="the refusal counted")
    assert events(limited, "session_error", reason="too_many_clients", sqlstate="53300")
    assert_documented("client-limit", "`53300`", "`session_error`", 'reason="too_many_clients"')


def test_backend_fatal_is_the_only_fatal(pg: PgCluster, proxy: ProxyProcess) -> None:
    """The backend ends the session (pg_terminate_backend): its FATAL 57P01 and nothing more (was a second
    FATAL 08006 from pgtenant). The client is inside a transaction, so it holds its server in either pool mode (in
    transaction pooling an idle client holds none: test_transaction_pooling.py, the idle server's end)."""
    sock, _ = login(proxy.port, {"user": "ivan", "database": "initech"}, proxy.password("ivan"))
    try:
        sock.sendall(m.Query("BEGIN; SELECT pg_backend_pid()").encode())
        got = read_outcome(sock)
        assert got.end == "ZT", got
        role = TENANT_ROLES["initech"][0]
        pg.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        got = read_outcome(sock)
    finally:
        sock.close()
    assert got.end == "closed" and [e[:2] for e in got.errors] == [("FATAL", "57P01")], got
    until(lambda: events(proxy, "connection_closed", reason="server_fatal"), what="connection_closed server_fatal")
    assert_documented("backend-ends-session", "`57P01`", "`connection_closed`", 'reason="server_fatal"')


def test_unknown_message_type_one_fatal(proxy: ProxyProcess) -> None:
    sock, _ = login(proxy.port, {"user": "ivan", "database": "initech"}, proxy.password("ivan"))
    try:
        sock.sendall(m.frame(b"y", b""))
        got = read_outcome(sock)
    finally:
        sock.close()
    assert got.end == "closed" and [e[:2] for e in got.errors] == [("FATAL", "08P01")], got
    assert got.errors[0][2] == "invalid frontend message type 121"
    # the proxy's own answer, in PostgreSQL's words: never forwarded (red team 9s2 M1: PostgreSQL's FATAL for it came
    # after the pooled server had gone to another client)
    until(lambda: events(proxy, "session_error", reason="framing"), what="session_error framing")
    assert_documented("protocol-violation-after-login", "`08P01`", 'reason="framing"')


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x00SELECT 1\x00" + struct.pack("!hi", 2, 23), "insufficient data left in message"),
        (b"\x00SELECT 1", "invalid string in message"),
    ],
)
def test_malformed_parse_keeps_the_session(proxy: ProxyProcess, body: bytes, message: str) -> None:
    sock, _ = login(proxy.port, {"user": "ivan", "database": "initech"}, proxy.password("ivan"))
    try:
        sock.sendall(m.frame(b"P", body) + m.SYNC_MESSAGE)
        got = read_outcome(sock)
        sock.sendall(m.Query("SELECT 1").encode())
        after = read_outcome(sock)
    finally:
        sock.close()
    assert got.errors == (("ERROR", "08P01", message),) and got.end == "ZI", got
    assert after.end == "ZI" and not after.errors
    assert_documented("malformed-message", "`08P01`", "session goes on")


def test_bytes_after_gssenc_request(proxy: ProxyProcess) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(GSSENC + GSSENC)
        got = read_outcome(sock, negotiation=True)
    assert got.types == "NE" and got.end == "closed", got
    assert got.errors == (("FATAL", "08P01", "received unencrypted data after GSSAPI encryption request"),)
    until(lambda: events(proxy, "session_error", reason="ssl_injection"), what="session_error ssl_injection")
    assert_documented("unencrypted-after-negotiation", "`08P01`", 'reason="ssl_injection"')


def test_startup_packet_without_terminator(proxy: ProxyProcess) -> None:
    body = b"user\x00ivan\x00database\x00initech\x00"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(struct.pack("!ii", len(body) + 8, m.PROTOCOL_3_0) + body)
        got = read_outcome(sock)
    assert got.errors == (("FATAL", "08P01", "invalid startup packet layout: expected terminator as last byte"),)
    assert got.end == "closed"
    until(lambda: events(proxy, "session_error", reason="decode"), what="session_error decode")
    assert_documented("bad-startup-packet", "`08P01`", 'reason="decode"')


def test_fault_table_rows_are_all_checked() -> None:
    """Every row of the table is one of the faults above or one checked elsewhere (named here)."""
    here = {"backend-refuses-login", "client-limit", "backend-ends-session", "protocol-violation-after-login",
            "malformed-message", "unencrypted-after-negotiation", "bad-startup-packet"}
    elsewhere = {
        "backend-down": "test_startup_auth.py::test_backend_unreachable_gives_08001, test_observability.py (/readyz)",
        "startup-timeout": "tests/integration/test_startup_auth.py::test_stalled_client_is_dropped",
        "message-too-large": "tests/unit/test_session.py (54000)",
        "client-message-timeout": "tests/integration/test_pool_midmessage.py (transaction pooling, pool of one)",
        "client-write-timeout": "tests/integration/test_unread_results.py (both pool modes, a budget of one)",
        "backend-closes": "no test: a killed backend makes PostgreSQL restart every session of the shared cluster",
    }
    rows = re.findall(r"^\| `([a-z-]+)` \|", DOC.read_text(), re.M)
    assert rows and set(rows) == here | set(elsewhere), set(rows) ^ (here | set(elsewhere))
