"""A server held for a batch waiting for its Sync with no Flush (a lone Parse, P/B/E, a Describe that failed) is
counted and logged as a Flush-ended one, and bounded by idle_in_transaction_timeout — the global [limits] one too
(red team 9s4 N1). Transaction pooling, a pool of one, sticky servers on and off."""

from __future__ import annotations

import urllib.request

import pytest

from proxy.protocol import messages as m
from tests.support import wire
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.pools import ADMIN_PASSWORD
from tests.support.proxyproc import ProxyProcess, prepare_backend


@pytest.fixture(scope="module", params=[(True, 30.0), (False, 30.0), (False, 0)],
                ids=["sticky", "no_sticky", "no_sticky-client_message_timeout_0"])
def bounded(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """client_message_timeout 0: the bound runs on the pool's clock whatever that is (before: only when non-zero)."""
    prepare_backend(pg)
    sticky, message_timeout = request.param
    p = ProxyProcess(pg, tmp_path_factory.mktemp("unsynced"), backend_sslmode="disable",
                     pool={"pool_mode": "transaction", "pool_size": 1, "max_pin_time": 0.5,
                           "query_wait_timeout": 60.0, "sticky_servers": sticky,
                           "client_message_timeout": message_timeout},
                     limits={"idle_in_transaction_timeout": 2.0}, admin_users={"ops": ADMIN_PASSWORD}).start()
    yield p
    p.stop()


SHAPES = {
    "lone_parse": wire.parse("SELECT 1"),
    "parse_bind_execute": wire.parse("SELECT 1") + wire.bind() + wire.execute(),
    "describe_missing_portal": m.frame(b"D", b"Pnope\0"),
}


def _held(p: ProxyProcess) -> float:
    """pgtenant_servers_held_without_sync, every tenant label (initech's is _other)."""
    with urllib.request.urlopen(p.metrics_url + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return sum(float(ln.split()[-1]) for ln in lines if ln.startswith("pgtenant_servers_held_without_sync{"))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_batch_waiting_for_its_sync_is_counted_logged_and_bounded(bounded: ProxyProcess, shape: str) -> None:
    """A sends a batch with no Sync and no Flush and waits: its server is counted and logged past max_pin_time
    (before: neither), and past the global idle_in_transaction_timeout A's session ends with 25P03 and the server
    is closed (before: held until A's Sync, whatever the time); then the next client runs."""
    before = len([e for e in bounded.log_events() if e.get("event") == "server_held_without_sync"])
    a = wire.connect(bounded, "ivan", timeout=30)
    try:
        a.sendall(m.query_message("SELECT 1"))
        while wire.read_message(a)[0] != b"Z":
            pass
        a.sendall(SHAPES[shape])
        until(lambda: _held(bounded) == 1, timeout=20, interval=0.05, what="the server counted")
        until(lambda: len([e for e in bounded.log_events() if e.get("event") == "server_held_without_sync"]) > before,
              timeout=20, interval=0.05, what="server_held_without_sync in the log")
        a.settimeout(60)
        got = wire.read_to_close(a)
        fatal = [m.decode_error_fields(body) for t, body in got if t == b"E"]
        assert [(f["S"], f["C"]) for f in fatal][-1:] == [("FATAL", "25P03")], got
    finally:
        a.close()
    until(lambda: _held(bounded) == 0, timeout=20, interval=0.05, what="the count back to 0")
    b = wire.connect(bounded, "ivan", timeout=30)
    with b:
        b.sendall(m.query_message("SELECT 'B'"))
        answer = []
        b.settimeout(30)
        while not answer or answer[-1][0] != b"Z":
            answer.append(wire.read_message(b))
        assert [t for t, _ in answer] == [b"T", b"D", b"C", b"Z"]
