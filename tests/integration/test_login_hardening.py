"""Login hardening: pre-login caps and timeouts, an idle-socket flood, the admin console's session, TLS suites,
and the timing of every login reply for known and unknown users (a statistical test, marked slow)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import random
import socket
import ssl
import struct
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from proxy.auth.scram import derive_keys
from proxy.protocol import messages as m
from tests.support.certs import TlsFiles
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.proxyproc import ProxyProcess, prepare_backend
from tests.support.psql import run_psql
from tests.support.wire import read_message

PRELOGIN = {"max_prelogin_connections_per_address": 20, "max_prelogin_connections": 40,
            "max_client_connections": 100, "first_message_timeout": 0.5, "startup_timeout": 30.0}


@pytest.fixture(scope="module")
def capped(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("prelogin"), limits=PRELOGIN).start()
    yield p
    p.stop()


def _error_fields(sock: socket.socket) -> dict[str, str]:
    sock.settimeout(10)
    t, body = read_message(sock)
    assert t == b"E"
    return m.decode_error_fields(body)


def test_an_idle_socket_flood_from_one_address_does_not_lock_out_a_real_client(capped: ProxyProcess) -> None:
    # 300 sockets that never send a byte, from the real client's own address, three times the whole
    # max_client_connections: they hold at most 20 places, and a real client still logs in.
    idle = [socket.create_connection(("127.0.0.1", capped.port), timeout=10) for _ in range(300)]
    try:
        with psycopg.connect(capped.dsn("ivan")) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
        fields = _error_fields(idle[0])  # the oldest silent ones made room
        assert fields["C"] == "53300" and "waiting to log in from this address" in fields["M"]
    finally:
        for s in idle:
            s.close()
    text = urllib.request.urlopen(capped.metrics_url + "/metrics", timeout=10).read().decode()
    assert 'pgtenant_prelogin_closed_total{limit="address"}' in text
    # The flood's log lines are rate-limited: far fewer than the three a connection wrote each.
    events = [e for e in capped.log_events() if e.get("event") in ("connection_accepted", "connection_closed",
                                                                    "session_error")]
    assert len(events) < 300
    assert any(e.get("suppressed_before") for e in capped.log_events()) or "pgtenant_log_lines_suppressed_total" in text


def test_a_login_in_its_scram_exchange_is_never_closed_to_make_room(capped: ProxyProcess) -> None:
    # ivan is in his SCRAM exchange when 300 connections from his address each send one byte (20 places):
    # they close one another, never him, and he finishes his login.
    from scramp import ScramClient

    sock = socket.create_connection(("127.0.0.1", capped.port), timeout=10)
    sock.sendall(m.encode_startup_message({"user": "ivan", "database": capped.users["ivan"][0]}))
    t, body = read_message(sock)
    assert t == b"R" and struct.unpack_from("!i", body)[0] == m.AUTH_SASL
    flood = []
    try:
        for _ in range(300):
            f = socket.create_connection(("127.0.0.1", capped.port), timeout=10)
            f.sendall(b"\x00")
            flood.append(f)
        assert _error_fields(flood[0])["C"] == "53300"
        client = ScramClient(["SCRAM-SHA-256"], "ivan", capped.users["ivan"][1])
        first = client.get_client_first().encode()
        sock.sendall(m.frame(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first))
        t, body = read_message(sock)
        assert t == b"R" and struct.unpack_from("!i", body)[0] == m.AUTH_SASL_CONTINUE
        client.set_server_first(body[4:].decode())
        sock.sendall(m.frame(b"p", client.get_client_final().encode()))
        types = []
        while not types or types[-1] not in (b"Z", b"E"):
            types.append(read_message(sock)[0])
        assert types[-1] == b"Z"
    finally:
        sock.close()
        for f in flood:
            f.close()


def _parked_in_scram(proxy: ProxyProcess, source: str, user: str) -> socket.socket:
    """A login from `source` that reaches the SCRAM exchange (client-first sent, server-first read) and stays."""
    from scramp import ScramClient

    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10, source_address=(source, 0))
    sock.sendall(m.encode_startup_message({"user": user, "database": "initech"}))
    t, body = read_message(sock)
    assert t == b"R" and struct.unpack_from("!i", body)[0] == m.AUTH_SASL
    first = ScramClient(["SCRAM-SHA-256"], user, "x").get_client_first().encode()
    sock.sendall(m.frame(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first))
    t, body = read_message(sock)
    assert t == b"R" and struct.unpack_from("!i", body)[0] == m.AUTH_SASL_CONTINUE
    return sock


def test_logins_parked_in_scram_by_a_few_addresses_do_not_lock_everyone_out(capped: ProxyProcess) -> None:
    # Red team round 4 F5: logins parked in their SCRAM exchange (unknown names, each new) from a few addresses held
    # every pre-login place (here 2 x 20 = 40), and every other login was refused with 53300. Now the newcomer gets
    # a place: the oldest parked login of the busiest address of the busiest network (/24) is closed instead.
    parked = [_parked_in_scram(capped, f"127.0.1.{2 + i % 2}", f"junk_{i}") for i in range(40)]
    try:
        with psycopg.connect(capped.dsn("ivan")) as c:  # from 127.0.0.1: another /24
            assert c.execute("SELECT 1").fetchone() == (1,)
        fields = _error_fields(parked[0])  # the oldest of 127.0.1.2 made room
        assert fields["C"] == "53300" and "waiting to log in" in fields["M"]
        # the attacker renews: each new parked login pushes out one of its own, never a real client's
        parked += [_parked_in_scram(capped, f"127.0.1.{4 + i}", f"junk_more_{i}") for i in range(3)]
        with psycopg.connect(capped.dsn("ivan")) as c:
            assert c.execute("SELECT 2").fetchone() == (2,)
    finally:
        for sock in parked:
            sock.close()


def test_cancel_requests_with_unknown_keys_are_counted_and_their_log_lines_rate_limited(capped: ProxyProcess) -> None:
    # Anyone can send CancelRequests: 1,000 with random keys wrote 1,000 cancel_ignored lines.
    for i in range(1000):
        with socket.create_connection(("127.0.0.1", capped.port), timeout=10) as sock:
            sock.sendall(struct.pack("!iiii", 16, 80877102, 1_000_000 + i, random.getrandbits(31)))

    def ignored() -> float:
        text = urllib.request.urlopen(capped.metrics_url + "/metrics", timeout=10).read().decode()
        line = next((x for x in text.splitlines() if x.startswith("pgtenant_cancel_ignored_total ")), "x 0")
        return float(line.split()[1]) >= 1000

    until(ignored, timeout=60, what="1,000 ignored cancel requests counted")
    # (they share the limiter with every other pre-login line: after earlier floods, possibly none is left)
    lines = [e for e in capped.log_events() if e.get("event") == "cancel_ignored"]
    assert len(lines) < 1000


@pytest.fixture(scope="module")
def tls_capped(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, tls_certs: TlsFiles) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("tlscapped"), tls=tls_certs, limits=PRELOGIN).start()
    yield p
    p.stop()


def test_a_connection_closed_mid_tls_handshake_gets_no_plaintext(tls_capped: ProxyProcess) -> None:
    # 21 connections from one address answered 'S' to SSLRequest and never start the handshake: the one closed
    # to make room (cap 20) is cut, without a plaintext ErrorResponse written into what should be TLS.
    socks = []
    try:
        for _ in range(PRELOGIN["max_prelogin_connections_per_address"] + 1):
            sock = socket.create_connection(("127.0.0.1", tls_capped.port), timeout=10)
            sock.sendall(m.encode_ssl_request())
            assert sock.recv(1) == b"S"
            socks.append(sock)
        try:
            first = socks[0].recv(1)
        except ConnectionResetError:
            first = b""
        assert first == b""  # closed, and not b"E"
    finally:
        for sock in socks:
            sock.close()


def test_a_silent_connection_is_closed_early_a_slow_one_is_not(capped: ProxyProcess) -> None:
    silent = socket.create_connection(("127.0.0.1", capped.port), timeout=10)
    slow = socket.create_connection(("127.0.0.1", capped.port), timeout=10)
    packet = m.encode_startup_message({"user": "ivan", "database": "initech"})
    slow.sendall(packet[:6])  # it spoke: the whole startup_timeout (30 s) applies from now on
    try:
        # closed after first_message_timeout (0.5 s), long before startup_timeout
        assert _error_fields(silent)["C"] == "08006"
        assert silent.recv(1) == b""
        slow.sendall(packet[6:])
        assert read_message(slow)[0] == b"R"
    finally:
        silent.close()
        slow.close()
    events = until(lambda: [e for e in capped.log_events() if e.get("reason") == "first_message_timeout"] or None,
                   what="the first_message_timeout close in the log")
    assert events


# --- the admin console --------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin_proxy(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    workdir = tmp_path_factory.mktemp("adminlogin")
    p = ProxyProcess(pg, workdir, limits={"startup_timeout": 1.0, "first_message_timeout": 1.0},
                     admin_users={"ops": "ops-secret"},
                     audit={"enabled": True, "file": str(workdir / "audit.log")}).start()
    yield p
    p.stop()


def test_the_admin_console_outlives_the_startup_timeout(admin_proxy: ProxyProcess) -> None:
    # No startup timer after an admin login: the console stays open past startup_timeout (1 s).
    conninfo = f"host=127.0.0.1 port={admin_proxy.port} user=ops password=ops-secret dbname=pgtenant sslmode=disable"
    with psycopg.connect(conninfo, autocommit=True) as c:
        c.pgconn.exec_(b"SHOW TENANTS")
        time.sleep(1.5)  # past startup_timeout
        res = c.pgconn.exec_(b"SHOW CONFIG")
        assert res.status == psycopg.pq.ExecStatus.TUPLES_OK, res.error_message
    events = admin_proxy.log_events()
    assert not [e for e in events if e.get("reason") == "startup_timeout"]
    [ok] = [e for e in events if e.get("event") == "auth_ok" and e.get("user") == "ops"]
    assert ok.get("admin") is True
    commands = [e for e in events if e.get("event") == "admin_command"]
    assert [c["command"] for c in commands] == ["SHOW TENANTS", "SHOW CONFIG"]
    assert all(c.get("user") == "ops" for c in commands)
    text = urllib.request.urlopen(admin_proxy.metrics_url + "/metrics", timeout=10).read().decode()
    assert 'pgtenant_auth_attempts_total{outcome="success",reason="ok"} 1.0' in text
    assert 'outcome="refused"' not in text
    audit = Path(admin_proxy.config_path).parent / "audit.log"
    lines = until(lambda: [json.loads(x) for x in audit.read_text().splitlines()
                           if '"admin_command"' in x and "SHOW CONFIG" in x] and audit.read_text().splitlines(),
                  what="the admin lines in the audit log")
    records = [json.loads(x) for x in lines]
    assert [r["event"] for r in records if r["event"].startswith("admin")] == [
        "admin_login", "admin_command", "admin_command"]
    assert all(r["user"] == "ops" for r in records if r["event"].startswith("admin"))


def test_admin_command_with_psql_carries_the_user(admin_proxy: ProxyProcess) -> None:
    conninfo = f"host=127.0.0.1 port={admin_proxy.port} user=ops dbname=pgtenant sslmode=disable"
    res = run_psql(conninfo, "SHOW STATS;\n", password="ops-secret")
    assert res.returncode == 0, res.stderr
    assert [e for e in admin_proxy.log_events() if e.get("event") == "admin_command"
            and e.get("command") == "SHOW STATS;" and e.get("user") == "ops"]


# --- TLS -----------------------------------------------------------------------------------


def _tls_handshake(port: int, ca: Path, *, ciphers: str) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(m.encode_ssl_request())
    assert sock.recv(1) == b"S"
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    return ctx.wrap_socket(sock, server_hostname="localhost")


def test_tls12_offers_only_aead_suites(proxy: ProxyProcess, tls_certs: TlsFiles) -> None:
    cbc = "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA"
    with pytest.raises(ssl.SSLError):
        _tls_handshake(proxy.port, tls_certs.ca_file, ciphers=cbc).close()
    with _tls_handshake(proxy.port, tls_certs.ca_file, ciphers="ECDHE+AESGCM:ECDHE+CHACHA20") as tls:
        assert tls.version() == "TLSv1.2" and tls.cipher()[0].split("-")[-2:] in (["GCM", "SHA256"],
                                                                                 ["GCM", "SHA384"],
                                                                                 ["POLY1305", "SHA256"])


# --- timing ---------------------------------------------------------------------------------


def _mann_whitney_z(a: list[float], b: list[float]) -> float:
    """The normal approximation of the Mann-Whitney U statistic (ties averaged): |z| > 4 is a difference."""
    ranked = sorted([(x, 0) for x in a] + [(x, 1) for x in b])
    ranks = [0.0] * len(ranked)
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    r_a = sum(r for r, (_, group) in zip(ranks, ranked, strict=True) if group == 0)
    n1, n2 = len(a), len(b)
    u = r_a - n1 * (n1 + 1) / 2
    return (u - n1 * n2 / 2) / math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)


class _Prober:
    """One login as a stopwatch: the time from each client message to the proxy's reply."""

    def __init__(self, port: int, password: str) -> None:
        self.port = port
        self.password = password
        self._keys: dict[tuple[bytes, int], tuple[bytes, bytes]] = {}

    def probe(self, user: str) -> tuple[float, float, float]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            startup = m.encode_startup_message({"user": user, "database": "acme"})
            t0 = time.perf_counter()
            sock.sendall(startup)
            assert read_message(sock)[0] == b"R"
            t1 = time.perf_counter()
            nonce = base64.b64encode(random.randbytes(18))
            bare = b"n=,r=" + nonce
            first = b"n,," + bare
            message = m.frame(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first)
            t2 = time.perf_counter()
            sock.sendall(message)
            _, body = read_message(sock)
            t3 = time.perf_counter()
            server_first = body[4:]
            parts = dict(p.split(b"=", 1) for p in server_first.split(b","))
            salt, iterations = base64.b64decode(parts[b"s"]), int(parts[b"i"])
            if (salt, iterations) not in self._keys:  # PBKDF2 once per user, not inside the measurement
                client_key, stored_key, _ = derive_keys(self.password, salt, iterations)
                self._keys[(salt, iterations)] = (client_key, stored_key)
            client_key, stored_key = self._keys[(salt, iterations)]
            without_proof = b"c=biws,r=" + parts[b"r"]
            auth = b",".join((bare, server_first, without_proof))
            signature = hmac.new(stored_key, auth, hashlib.sha256).digest()
            proof = bytes(x ^ y for x, y in zip(client_key, signature, strict=True))
            final = m.frame(b"p", without_proof + b",p=" + base64.b64encode(proof))
            t4 = time.perf_counter()
            sock.sendall(final)
            t, _ = read_message(sock)
            t5 = time.perf_counter()
            assert t == b"E"
            assert sock.recv(1) == b""  # the proxy is done with this login before the next one starts
            return t1 - t0, t3 - t2, t5 - t4


_timed = False


@pytest.mark.slow
def test_known_and_unknown_users_cannot_be_told_apart_by_timing(
    pg: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Interleaved samples of each reply (AuthenticationSASL, server-first, the final 28P01) for a real user
    # and an unknown one, both with a wrong password; a Mann-Whitney test per step with a generous bound
    # (the issue measured z = -16.9 for the server-first before the fix).
    global _timed
    if _timed:
        pytest.skip("measured once, against the first PostgreSQL selected (it does not depend on it)")
    _timed = True
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("timing"), limits={
        "max_auth_failures": 100000, "max_auth_failures_per_user": 100000, "max_auth_failures_per_address": 100000,
    }).start()
    try:
        prober = _Prober(p.port, "wrong password")
        for user in ("alice", "alicx"):  # warm up both paths
            prober.probe(user)
        # A step fails only if it stands out in two independent rounds: a burst of load on the shared host can push
        # one round's z past the bound (seen under parallel merges); a real difference (z = -16.9) shows in both.
        flagged: list[set[str]] = []
        for _round in range(2):
            zs = _timing_round(prober)
            flagged.append({name for name, z in zs.items() if abs(z) >= 4.0})
            if not flagged[-1]:
                break
    finally:
        p.stop()
    assert not (flagged[0] & flagged[-1]), (flagged, zs)


def _timing_round(prober: _Prober) -> dict[str, float]:
    """Interleaved samples of both users; the Mann-Whitney z per step."""
    known: list[tuple[float, float, float]] = []
    unknown: list[tuple[float, float, float]] = []
    for i in range(500):
        order = (("alice", known), ("alicx", unknown)) if i % 2 else (("alicx", unknown), ("alice", known))
        for user, into in order:
            into.append(prober.probe(user))
    return {name: _mann_whitney_z([s[step] for s in known], [s[step] for s in unknown])
            for step, name in enumerate(("AuthenticationSASL", "server-first", "final error"))}
