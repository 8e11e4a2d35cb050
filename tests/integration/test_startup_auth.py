"""Startup and authentication through pgtenant: SCRAM, TLS, identity, options, hostile input, shutdown."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from proxy.protocol import messages as m
from tests.support.certs import TlsFiles
from tests.support.pgcluster import PgCluster, free_port
from tests.support.proxyproc import USERS, ProxyProcess, prepare_backend
from tests.support.wire import backend_key, login, login_error, send_cancel
from tests.support.wire import read_message as _read_message


def _error_of(sock: socket.socket) -> dict[str, str]:
    """Read messages until an ErrorResponse; return its fields."""
    while True:
        t, body = _read_message(sock)
        if t == b"E":
            return m.decode_error_fields(body)


def _raw(proxy: ProxyProcess) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    return s


def _assert_closed(sock: socket.socket) -> None:
    sock.settimeout(5)
    assert sock.recv(1) == b""


# --- SCRAM ---------------------------------------------------------------------------------


def test_wrong_password_and_unknown_user_look_the_same(proxy: ProxyProcess) -> None:
    wrong = login_error(proxy.port, {"user": "ivan", "database": "initech"}, "nope")
    unknown = login_error(proxy.port, {"user": "nobody_here", "database": "initech"}, "nope")
    assert wrong.pop("M") == 'password authentication failed for user "ivan"'
    assert unknown.pop("M") == 'password authentication failed for user "nobody_here"'
    assert wrong == unknown == {"S": "FATAL", "V": "FATAL", "C": "28P01"}
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(f"host=127.0.0.1 port={proxy.port} user=ivan password=nope sslmode=disable")


NO_THROTTLE = {"max_auth_failures": 100000, "max_auth_failures_per_user": 100000,
               "max_auth_failures_per_address": 100000}


@pytest.fixture(scope="module")
def budget_proxy(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """Small failed-login budgets: 3 per (address, user), 10 per address."""
    prepare_backend(pg)
    p = ProxyProcess(
        pg, tmp_path_factory.mktemp("budget"),
        limits={"max_auth_failures": 3, "max_auth_failures_per_address": 10, "auth_failure_window": 600},
    ).start()
    yield p
    p.stop()


def _attempt(port: int, user: str, password: str) -> dict[str, str] | None:
    """The error a login ends with, or None when it succeeds."""
    sock, msgs = login(port, {"user": user, "database": USERS.get(user, ("x",))[0]}, password)
    sock.close()
    errs = [fields for t, fields in msgs if t == "E"]
    return errs[0] if errs else None


def test_one_tenants_failures_never_lock_out_another_tenants_user(budget_proxy: ProxyProcess) -> None:
    # Behind one address (a Tableau Server, a NAT): alice (acme) logs in, bruno (bigco) is guessed at.
    port = budget_proxy.port
    assert _attempt(port, "alice", budget_proxy.password("alice")) is None
    answers = [_attempt(port, "bruno", "guess") for _ in range(12)]
    assert [a["M"].startswith("password authentication failed") for a in answers] == [True] * 3 + [False] * 9
    refused = answers[-1]
    assert refused["C"] == "28P01" and 'too many failed authentication attempts for user "bruno"' in refused["M"]
    assert "try again in" in refused["M"]
    # alice's success in between clears nothing of bruno's, and bruno's failures refuse nothing of alice's.
    for _ in range(3):
        assert _attempt(port, "alice", budget_proxy.password("alice")) is None
        assert _attempt(port, "bruno", budget_proxy.password("bruno"))["M"].startswith("too many failed")
    # The address budget (10) is spent by a spray over new names: a sprayed name is refused there, but gina
    # (another tenant's user, never logged in nor failed from here) and alice still log in.
    for i in range(8):
        _attempt(port, f"spray{i}", "guess")
    assert _attempt(port, "spray0", "guess")["M"].startswith("too many failed")
    assert _attempt(port, "gina", budget_proxy.password("gina")) is None
    assert _attempt(port, "alice", budget_proxy.password("alice")) is None
    text = urllib.request.urlopen(budget_proxy.metrics_url + "/metrics", timeout=10).read().decode()
    assert 'pgtenant_auth_throttled_total{limit="address_user"}' in text
    assert 'pgtenant_auth_throttled_total{limit="address"}' in text


def test_wrong_passwords_under_a_users_name_from_its_own_address_do_not_lock_it_out(
    pg: PgCluster, tmp_path: Path,
) -> None:
    # Red team 7 F11: behind one address, someone types wrong passwords under ivan's name; ivan, who logged in from
    # there, still does (his budget there is the per-user one's size); the guesser is still bounded by it.
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path, limits={"max_auth_failures": 3, "max_auth_failures_per_user": 8,
                                           "auth_failure_window": 600}).start()
    try:
        assert _attempt(p.port, "ivan", p.password("ivan")) is None
        answers = [_attempt(p.port, "ivan", "guess") for _ in range(5)]
        assert all(a is not None and a["M"].startswith("password authentication failed") for a in answers)
        assert _attempt(p.port, "ivan", p.password("ivan")) is None
        answers = [_attempt(p.port, "ivan", "guess") for _ in range(9)]
        assert [a is not None and a["M"].startswith("too many failed") for a in answers] == [False] * 8 + [True]
    finally:
        p.stop()


def test_parallel_guesses_cannot_outrun_the_budget(budget_proxy: ProxyProcess) -> None:
    # 40 logins of ivan at once: they all start before any fails, yet only the budget's worth try a password.
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda _: _attempt(budget_proxy.port, "ivan", "guess"), range(40)))
    tried = [a for a in answers if a is not None and a["M"].startswith("password authentication failed")]
    refused = [a for a in answers if a is not None and a["M"].startswith("too many failed")]
    assert len(tried) <= 3 and len(tried) + len(refused) == 40


def _server_first(port: int, user: str) -> bytes:
    """The salt and iteration count (",s=...,i=...") the proxy offers `user`; hangs up before any proof."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(m.encode_startup_message({"user": user}))
        assert _read_message(sock)[0] == b"R"
        first = b"n,,n=,r=fixedclientnonce"
        sock.sendall(m.frame(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first))
        t, body = _read_message(sock)
        assert t == b"R" and struct.unpack_from("!i", body)[0] == m.AUTH_SASL_CONTINUE
        return body[4:].split(b",", 1)[1]


def test_unknown_users_salts_stay_the_same_across_reloads_and_restarts(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # No auth_mock_secret configured (as in the demo before): the proxy persists one beside its config.
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("salts"), limits=NO_THROTTLE).start()
    users = ("alice", "nosuchuser", "Alice", "alice ")
    try:
        before = [_server_first(p.port, u) for u in users]
        p.reload("reloaded")
        assert [_server_first(p.port, u) for u in users] == before
        p.stop()
        p.start(provision=False)
        assert [_server_first(p.port, u) for u in users] == before
    finally:
        p.stop()
    assert len(set(before)) == len(users)


def test_scram_over_tls_with_channel_binding(proxy: ProxyProcess, tls_certs: TlsFiles) -> None:
    dsn = proxy.dsn("ivan", sslmode="verify-full", sslrootcert=str(tls_certs.ca_file), channel_binding="require")
    with psycopg.connect(dsn) as c:
        assert c.info.pgconn.ssl_in_use
        assert c.execute("SELECT current_database()").fetchone() == ("initech",)


def test_tls_require_mode(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("alice", sslmode="require")) as c:
        assert c.info.pgconn.ssl_in_use


def test_wrong_ca_is_rejected_by_client(proxy: ProxyProcess, tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.support.certs import make_certs

    other = make_certs(tmp_path_factory.mktemp("otherca"))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(proxy.dsn("ivan", sslmode="verify-full", sslrootcert=str(other.ca_file)))


# --- identity: the tenant comes only from the authenticated user ---------------------------


def test_database_name_of_another_tenant_is_refused(proxy: ProxyProcess) -> None:
    for db in ("initech", "bigco", "postgres", "does_not_exist"):
        fields = login_error(proxy.port, {"user": "alice", "database": db}, proxy.password("alice"))
        assert (fields["C"], fields["M"]) == ("3D000", f'database "{db}" does not exist')
    for db in ("saas", "acme", "alice"):  # backend name, tenant name, libpq's default (= user)
        with psycopg.connect(proxy.dsn("alice", dbname=db)) as c:
            assert c.execute("SELECT current_database()").fetchone() == ("saas",)


def test_options_allow_list(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("ivan", options="-c statement_timeout=1234 -c DateStyle=German")) as c:
        assert c.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
        assert c.execute("SHOW DateStyle").fetchone()[0].startswith("German")
    for options, name in [
        ("-c search_path=public", "search_path"),
        ("-c pgtenant.tenant_id=bigco", "pgtenant.tenant_id"),
        ("-c role=postgres", "role"),
        ("-c session_authorization=postgres", "session_authorization"),
        ("--work_mem=1GB", "work_mem"),
    ]:
        fields = login_error(proxy.port, {"user": "alice", "options": options}, proxy.password("alice"))
        assert fields["C"] == "42501", options
        assert f'"{name}" is not allowed by pgtenant' in fields["M"]
        assert "allowed_parameters" in fields["H"]
    fields = login_error(proxy.port, {"user": "alice", "search_path": "bigco"}, proxy.password("alice"))
    assert fields["C"] == "42501" and '"search_path"' in fields["M"]
    fields = login_error(proxy.port, {"user": "alice", "options": "-P"}, proxy.password("alice"))
    assert fields["C"] == "08P01"


def test_tenant_setting_cannot_be_forged_in_startup_packet(proxy: ProxyProcess) -> None:
    fields = login_error(
        proxy.port, {"user": "alice", "database": "saas", "pgtenant.tenant_id": "bigco"}, proxy.password("alice")
    )
    assert fields["C"] == "42501" and '"pgtenant.tenant_id"' in fields["M"]


def test_replication_refused(proxy: ProxyProcess) -> None:
    fields = login_error(proxy.port, {"user": "ivan", "replication": "database"}, proxy.password("ivan"))
    assert fields["C"] == "42501" and "replication" in fields["M"]


def test_protocol_3_3_is_negotiated_down_to_3_2(proxy: ProxyProcess) -> None:
    sock = _raw(proxy)
    body = struct.pack("!i", (3 << 16) | 3) + b"user\x00ivan\x00_pq_.future\x00x\x00\x00"
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    t, payload = _read_message(sock)
    assert t == b"v"
    version, count = struct.unpack_from("!ii", payload)
    assert (version, count) == (m.PROTOCOL_3_2, 1)  # as PostgreSQL 18
    assert payload[8:] == b"_pq_.future\x00"
    t, payload = _read_message(sock)
    assert t == b"R" and struct.unpack_from("!i", payload)[0] == m.AUTH_SASL
    sock.close()


def test_libpq_with_max_protocol_3_2(proxy: ProxyProcess) -> None:
    if psycopg.pq.version() < 180000:
        pytest.skip("libpq < 18 cannot request protocol 3.2")
    with psycopg.connect(proxy.dsn("ivan", max_protocol_version="3.2"), autocommit=True) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
        assert c.pgconn.full_protocol_version == 30002  # taken: a 32-byte cancel key (issue 19)
        # libpq cancels with the whole key it was given: the proxy knows the session by it.
        threading.Timer(0.3, c.cancel_safe).start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("SELECT pg_sleep(60)")
        assert c.execute("SELECT 2").fetchone() == (2,)


def test_unsupported_protocol_major(proxy: ProxyProcess) -> None:
    sock = _raw(proxy)
    body = struct.pack("!i", 2 << 16) + b"user\x00ivan\x00\x00"
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    fields = _error_of(sock)
    assert fields["C"] == "0A000"
    _assert_closed(sock)


# --- hostile input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x00\x00\x03garbage",  # impossible length
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # an HTTP client
        b"\xff" * 64,
        struct.pack("!ii", 16, 196608) + b"user\x00ivan",  # unterminated parameters
    ],
)
def test_garbage_gets_08p01_and_close(proxy: ProxyProcess, payload: bytes) -> None:
    sock = _raw(proxy)
    sock.sendall(payload)
    fields = _error_of(sock)
    assert fields["C"] == "08P01" and fields["S"] == "FATAL"
    assert "Traceback" not in fields["M"]
    _assert_closed(sock)
    with psycopg.connect(proxy.dsn("ivan")) as c:  # the proxy is still fine
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_garbage_after_login(proxy: ProxyProcess) -> None:
    # A logged-in client sending a bogus frame is cut off with 08P01, like PostgreSQL does.
    import psycopg.pq

    conn = psycopg.connect(proxy.dsn("ivan"))
    sock = socket.socket(fileno=conn.pgconn.socket)
    try:
        sock.sendall(b"Q\x00\x00\x00\x02")  # length < 4
        sock.settimeout(5)
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data[:1] == b"E" and b"C08P01" in data
    finally:
        sock.detach()
        conn.close()


def test_oversized_message(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("big"), limits={"max_message_length": 65536}).start()
    try:
        with psycopg.connect(p.dsn("ivan")) as c:
            assert c.execute("SELECT length(%s)", ("a" * 60000,)).fetchone() == (60000,)
            with pytest.raises(psycopg.OperationalError) as exc:
                c.execute("SELECT length(%s)", ("a" * 70000,))
            assert "exceeds pgtenant's limit" in str(exc.value)
        # an oversized startup-phase message is refused too
        sock = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        sock.sendall(struct.pack("!i", 1 << 20) + b"\x00" * 8)
        assert _error_of(sock)["C"] == "08P01"
    finally:
        p.stop()


def test_stalled_client_is_dropped(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("stall"), limits={"startup_timeout": 1.0}).start()
    try:
        sock = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        sock.sendall(m.encode_startup_message({"user": "ivan", "database": "initech"}))
        t, _ = _read_message(sock)
        assert t == b"R"  # SASL offered; we never answer
        fields = _error_of(sock)
        assert (fields["C"], fields["M"]) == ("08006", "canceling authentication due to timeout")
        _assert_closed(sock)
        # A client that sends nothing at all is dropped too.
        idle = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        _error_of(idle)
        _assert_closed(idle)
    finally:
        p.stop()


def test_ssl_request_with_trailing_plaintext_is_refused(proxy: ProxyProcess) -> None:
    sock = _raw(proxy)
    sock.sendall(m.encode_ssl_request() + m.encode_startup_message({"user": "ivan"}))
    assert _error_of(sock)["C"] == "08P01"


def test_gssenc_request_declined(proxy: ProxyProcess) -> None:
    with psycopg.connect(proxy.dsn("ivan", gssencmode="prefer")) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


# --- require_tls, plaintext cancel, backend TLS, backend down, shutdown ------------------


@pytest.fixture(scope="module")
def tls_only_proxy(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, tls_certs: TlsFiles
) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    p = ProxyProcess(
        pg, tmp_path_factory.mktemp("tlsonly"), tls=tls_certs, require_tls=True,
        backend_sslmode="verify-full" if pg.ssl_enabled else "disable",
    ).start()
    yield p
    p.stop()


def test_require_tls_refuses_plaintext(tls_only_proxy: ProxyProcess) -> None:
    with pytest.raises(psycopg.OperationalError) as exc:
        psycopg.connect(tls_only_proxy.dsn("ivan", sslmode="disable"))
    assert "accepts only TLS" in str(exc.value)


def test_require_tls_accepts_plaintext_cancel(tls_only_proxy: ProxyProcess, tls_certs: TlsFiles) -> None:
    import threading

    sock, msgs = login(
        tls_only_proxy.port, {"user": "ivan", "database": "initech"}, tls_only_proxy.password("ivan"),
        tls_ca=str(tls_certs.ca_file),
    )
    assert isinstance(sock, ssl.SSLSocket) and msgs[-1][0] == b"Z"
    pid, secret = backend_key(msgs)
    assert len(secret) == 4
    sock.sendall(m.Query("SELECT pg_sleep(20)").encode())
    timer = threading.Timer(0.5, send_cancel, (tls_only_proxy.port, pid, secret))
    timer.start()
    fields = _error_of(sock)
    timer.join()
    assert (fields["C"], fields["M"]) == ("57014", "canceling statement due to user request")
    assert _read_message(sock)[0] == b"Z"
    # A wrong secret cancels nothing.
    sock.sendall(m.Query("SELECT pg_sleep(1.5)").encode())
    send_cancel(tls_only_proxy.port, pid, bytes(b ^ 0xFF for b in secret))
    kinds = []
    while True:
        t, _ = _read_message(sock)
        kinds.append(t)
        if t == b"Z":
            break
    assert b"E" not in kinds and b"C" in kinds
    sock.close()


def test_backend_verify_full(tls_only_proxy: ProxyProcess, tls_certs: TlsFiles, pg: PgCluster) -> None:
    if not pg.ssl_enabled:
        pytest.skip("cluster without TLS")
    with psycopg.connect(tls_only_proxy.dsn("ivan", sslmode="require")) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        # pg_stat_ssl is closed to tenants: ask the server as superuser, and the proxy's log.
        assert pg.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = %s", (pid,)) == [(True,)]
    events = [e for e in tls_only_proxy.log_events() if e.get("event") == "backend_connected"]
    assert events and all(e["tls"] is True for e in events)


def test_backend_unreachable_gives_08001(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("down"))
    dead_port = free_port()

    class _Dead:
        host = "127.0.0.1"
        port = dead_port
        ca_file = None
        ssl_enabled = False

    p.cluster = _Dead()  # type: ignore[assignment]
    p.start(provision=False)  # the proxy starts even though the backend is down; tenants wait
    try:
        fields = login_error(p.port, {"user": "ivan"}, p.password("ivan"))
        assert fields["C"] == "08001"
        assert 'backend "main"' in fields["M"] and str(dead_port) not in fields["M"]  # the address: only logged
        failed = [e for e in p.log_events() if e.get("event") == "backend_failed"]
        assert any(str(dead_port) in str(e.get("backend")) for e in failed)
        assert "Traceback" not in fields["M"]
    finally:
        p.stop()


def test_sigterm_lets_sessions_finish_then_57p01(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("term"), limits={"shutdown_timeout": 2.0}).start()
    conn = psycopg.connect(p.dsn("ivan"), autocommit=True)
    assert p.proc is not None
    p.proc.send_signal(15)
    # New connections are refused at once; the open session keeps working until the deadline.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", p.port), timeout=0.5).close()
        except OSError:
            break
        time.sleep(0.02)
    else:
        pytest.fail("listener still accepting after SIGTERM")
    assert conn.execute("SELECT 42").fetchone() == (42,)
    with pytest.raises(psycopg.OperationalError) as exc:
        conn.execute("SELECT pg_sleep(10)")
    assert "administrator command" in str(exc.value)
    assert p.proc.wait(10) == 0  # exits by itself, cleanly, once the sessions are gone
    p.stop()
    conn.close()
