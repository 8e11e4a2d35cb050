"""PROXY protocol v2 on the listener: behind a load balancer the per-address limits, logs and SHOW CLIENTS see the
client's address its header gives; only a trusted sender's header is believed, and one is required from it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from proxy.protocol import messages as m
from proxy.protocol.proxyheader import encode
from tests.support.balancer import ProxyBalancer
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.proxyproc import ProxyProcess, prepare_backend
from tests.support.wire import login, recv_exact

BALANCER = "127.0.0.3"  # the trusted sender's address (all of 127/8 is this host's loopback); clients use 127.0.0.1


@pytest.fixture(scope="module")
def behind(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("proxyproto"),
                     admin_users={"ops": "ops-secret"},
                     server={"proxy_protocol": "v2", "proxy_protocol_from": [f"{BALANCER}/32"]},
                     limits={"max_auth_failures": 3, "max_auth_failures_per_address": 50,
                             "auth_failure_window": 600, "first_message_timeout": 1.0}).start()
    yield p
    p.stop()


@pytest.fixture
def balancers(behind: ProxyProcess) -> Iterator[tuple[ProxyBalancer, ProxyBalancer]]:
    a = ProxyBalancer(behind.port, "203.0.113.1", source=BALANCER)
    b = ProxyBalancer(behind.port, "203.0.113.2", source=BALANCER)
    yield a, b
    a.close()
    b.close()


def _attempt(port: int, user: str, password: str, database: str) -> str | None:
    """The message a login ends with, or None when it succeeds."""
    sock, msgs = login(port, {"user": user, "database": database}, password)
    sock.close()
    errors = [fields["M"] for t, fields in msgs if t == "E"]
    return errors[0] if errors else None


def test_two_clients_behind_one_balancer_are_limited_separately(
    behind: ProxyProcess, balancers: tuple[ProxyBalancer, ProxyBalancer],
) -> None:
    a, b = balancers
    database = behind.users["bruno"][0]
    answers = [_attempt(a.port, "bruno", "guess", database) for _ in range(4)]
    assert [x is not None and x.startswith("password authentication failed") for x in answers] == [True] * 3 + [False]
    assert answers[-1] is not None and answers[-1].startswith("too many failed")
    # The other client behind the same balancer has its own budget (without the header both were 127.0.0.3).
    assert (_attempt(b.port, "bruno", "guess", database) or "").startswith("password authentication failed")
    assert _attempt(b.port, "bruno", behind.password("bruno"), database) is None
    accepted = [e for e in behind.log_events() if e.get("event") == "connection_accepted" and e.get("via")]
    assert {e["client_addr"] for e in accepted} >= {"203.0.113.1", "203.0.113.2"}
    assert {e["via"] for e in accepted} == {BALANCER}


def test_sessions_and_cancels_behind_the_balancer(
    behind: ProxyProcess, balancers: tuple[ProxyBalancer, ProxyBalancer],
) -> None:
    a, _ = balancers
    with psycopg.connect(behind.dsn("alice", port=a.port), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (200,)
        timer = threading.Timer(0.5, conn.cancel_safe)  # its cancel connection goes through the balancer too
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        timer.join()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        # The admin console (directly, from 127.0.0.1) lists the session under its client's address.
        console = f"host=127.0.0.1 port={behind.port} user=ops password=ops-secret dbname=pgtenant sslmode=disable"
        with psycopg.connect(console, autocommit=True) as admin:
            rows = admin.execute("SHOW CLIENTS").fetchall()
        assert any(r[1] == "alice" and r[4] == "203.0.113.1" for r in rows), rows
    assert a.accepted >= 2


def _raw(source: str, port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_header_from_an_untrusted_sender_is_refused(behind: ProxyProcess) -> None:
    before = behind.count_events("proxy_header_refused")
    with _raw("127.0.0.1", behind.port) as sock:  # a client claiming to be someone else
        sock.sendall(encode(("198.51.100.9", 1234), ("127.0.0.1", behind.port)) + m.encode_ssl_request())
        assert _closed(sock)
    until(lambda: behind.count_events("proxy_header_refused") > before)
    # ... while the same address speaking PostgreSQL is a client like any other.
    with psycopg.connect(behind.dsn("alice")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    events = [e for e in behind.log_events() if e.get("event") == "proxy_header_refused"]
    assert events[-1]["client_addr"] == "127.0.0.1"


def test_a_trusted_sender_without_a_header_is_closed(behind: ProxyProcess) -> None:
    before = behind.count_events("proxy_header_refused")
    with _raw(BALANCER, behind.port) as sock:
        sock.sendall(m.encode_ssl_request())
        assert _closed(sock)
    until(lambda: behind.count_events("proxy_header_refused") > before)
    event = [e for e in behind.log_events() if e.get("event") == "proxy_header_refused"][-1]
    assert event["sender"] == BALANCER and "signature" in event["reason"]


def test_a_header_a_client_sends_through_the_balancer_is_refused(
    behind: ProxyProcess, balancers: tuple[ProxyBalancer, ProxyBalancer],
) -> None:
    a, _ = balancers
    before = behind.count_events("proxy_header_refused")
    with socket.create_connection(("127.0.0.1", a.port), timeout=10) as sock:
        sock.sendall(encode(("198.51.100.9", 1234)) + m.encode_ssl_request())
        assert _closed(sock)
    # Red team 9b3 F8: logged as what it is, not as an untrusted sender (an operator would look for a wrong CIDR).
    until(lambda: behind.count_events("proxy_header_refused") > before)
    event = [e for e in behind.log_events() if e.get("event") == "proxy_header_refused"][-1]
    assert event["client_addr"] == "203.0.113.1" and event["via"] == BALANCER, event
    assert event["reason"] == "a second PROXY header, from the client behind the balancer", event


def test_the_local_command_is_the_balancers_own_health_check(behind: ProxyProcess) -> None:
    with _raw(BALANCER, behind.port) as sock:
        sock.sendall(encode(None) + m.encode_ssl_request())
        assert recv_exact(sock, 1) in (b"N", b"S")


def test_metrics_count_refused_headers(behind: ProxyProcess) -> None:
    with _raw(BALANCER, behind.port) as sock:
        sock.sendall(b"\r\n\r\n\x00\r\nQUIT\n\x99\x11\x00\x0c" + bytes(12))  # version 9
        assert _closed(sock)
    text = urllib.request.urlopen(behind.metrics_url + "/metrics", timeout=10).read().decode()
    assert 'pgtenant_proxy_headers_refused_total{reason="bad_header"}' in text


def test_proxy_protocol_needs_its_senders(pg: PgCluster, tmp_path: Path) -> None:
    p = ProxyProcess(pg, tmp_path, server={"proxy_protocol": "v2"})
    with pytest.raises(RuntimeError, match="proxy_protocol_from"):
        p.start(provision=False)


def test_worker_processes_read_the_header_alike(pg: PgCluster, tmp_path: Path) -> None:
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path, admin_users={"ops": "ops-secret"},
                     server={"workers": 2, "proxy_protocol": "v2", "proxy_protocol_from": [f"{BALANCER}/32"]})
    p.start(timeout=60)
    lb = ProxyBalancer(p.port, "203.0.113.7", source=BALANCER)
    try:
        conns = [psycopg.connect(p.dsn("alice", port=lb.port), autocommit=True) for _ in range(6)]
        try:
            for conn in conns:
                assert conn.execute("SELECT count(*) FROM orders").fetchone() == (200,)
            console = f"host=127.0.0.1 port={p.port} user=ops password=ops-secret dbname=pgtenant sslmode=disable"
            with psycopg.connect(console, autocommit=True) as admin:
                rows = admin.execute("SHOW CLIENTS").fetchall()
            mine = [r for r in rows if r[1] == "alice"]
            assert len(mine) == 6 and all(r[4] == "203.0.113.7" and r[11] == BALANCER for r in mine), rows
        finally:
            for conn in conns:
                conn.close()
        accepted = [e for e in p.log_events() if e.get("event") == "connection_accepted" and e.get("via") == BALANCER]
        assert len(accepted) >= 6 and all(e["client_addr"] == "203.0.113.7" for e in accepted)
    finally:
        lb.close()
        p.stop()


# --- red team 9b N1: the cross-instance cancel budget is the client's, not the balancer's -----------------------------

REGISTRY_DB = "pgt_proxyproto_registry"
PEER_SECRET = "0123456789abcdef0123456789abcdef-proxyproto"


def _instance_cancels(p: ProxyProcess, outcome: str) -> float:
    text = urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10).read().decode()
    prefix = f'pgtenant_instance_cancels_total{{outcome="{outcome}"}}'
    line = next((x for x in text.splitlines() if x.startswith(prefix)), None)
    return float(line.split()[-1]) if line else 0.0


def test_a_cancel_flood_behind_the_balancer_does_not_drop_another_clients_cancel(
    pg: PgCluster, tmp_path: Path,
) -> None:
    prepare_backend(pg)
    pg.execute(f"DROP DATABASE IF EXISTS {REGISTRY_DB} WITH (FORCE)")
    pg.execute(f"CREATE DATABASE {REGISTRY_DB}")
    dsn = pg.dsn(dbname=REGISTRY_DB)
    init = subprocess.run([sys.executable, "-m", "proxy", "registry", "init", "--dsn", dsn], capture_output=True,
                          text=True, timeout=60, check=False)
    assert init.returncode == 0, init.stderr
    keys = {"dsn": dsn, "reconnect_delay": 0.2, "peer_port": 0, "peer_host": "127.0.0.1", "peer_secret": PEER_SECRET}
    server = {"proxy_protocol": "v2", "proxy_protocol_from": [f"{BALANCER}/32"]}
    a = ProxyProcess(pg, tmp_path / "a", registry=keys, server=server).start(timeout=60)
    b = ProxyProcess(pg, tmp_path / "b", registry=keys, server=server)
    stop = threading.Event()
    try:
        b.start(provision=False)
        victim_lb = ProxyBalancer(b.port, "203.0.113.1", source=BALANCER, then=a.port)  # session on b, cancel on a
        flood_lb = ProxyBalancer(a.port, "203.0.113.66", source=BALANCER)
        with psycopg.connect(b.dsn("alice", port=victim_lb.port), autocommit=True) as conn:
            pid = conn.info.backend_pid  # its cancel key's process id: b's slot in the top bits

            def flood() -> None:  # ~60 cancels a second naming b's slot with wrong keys: over the 20/s of one
                while not stop.is_set():  # address, under the 200/s of all of them
                    with contextlib.suppress(OSError), \
                            socket.create_connection(("127.0.0.1", flood_lb.port), timeout=10) as s:
                        s.sendall(m.encode_cancel_request(pid ^ 1, os.urandom(4)))
                        s.recv(1)
                    stop.wait(1 / 60)

            flooder = threading.Thread(target=flood, daemon=True)
            flooder.start()
            until(lambda: _instance_cancels(a, "throttled") > 0 or None, 30, interval=0.1,
                  what="the flooding address throttled")
            timer = threading.Timer(0.5, conn.cancel_safe)  # through the balancer to a, passed on to b
            timer.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(30)")
            timer.join()
            assert victim_lb.accepted >= 2
        # The flood was being throttled all along (its log lines too), the victim's cancel passed on and found.
        assert _instance_cancels(a, "throttled") > 0 and _instance_cancels(a, "found") == 1
        victim_lb.close()
        flood_lb.close()
    finally:
        stop.set()
        b.stop()
        a.stop()
        pg.execute(f"DROP DATABASE IF EXISTS {REGISTRY_DB} WITH (FORCE)")
