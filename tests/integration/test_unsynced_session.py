"""Session pooling: a batch waiting for its Sync (a lone Parse, P/B/E, one answered after a Flush, one with a half
message after it) is bounded by idle_in_transaction_timeout as in transaction pooling: the session ends 25P03, the
server is closed and the batch's implicit transaction and its lock on the shared `orders` are gone (red team 9s7
L1: held past 280 s against a 5 s bound, a DBA's ALTER and every tenant's read queued behind it). A client waiting
for a long statement's answer, or sending under the bound, is not ended. The statement cache off and on."""

from __future__ import annotations

import time

import pytest

from proxy.protocol import messages as m
from tests.support import wire
from tests.support.idleness import idle_ends, orders_locks
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.pools import ADMIN_PASSWORD
from tests.support.proxyproc import ProxyProcess, prepare_backend

BOUND = 2.0


@pytest.fixture(scope="module", params=[False, True], ids=["no_statement_cache", "statement_cache"])
def session_px(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """The statement cache on: the session keeps the client's statements (statements.py); off: skipping.Owed."""
    prepare_backend(pg)
    p = ProxyProcess(pg, tmp_path_factory.mktemp("unsynced_session"), backend_sslmode="disable",
                     pool={"pool_mode": "session", "pool_size": 2, "statement_cache": request.param},
                     limits={"idle_in_transaction_timeout": BOUND}, admin_users={"ops": ADMIN_PASSWORD}).start()
    yield p
    p.stop()


_READ = "SELECT id FROM orders ORDER BY id LIMIT 1"
SHAPES = {
    "lone_parse": wire.parse(_READ),
    "parse_bind_execute": wire.parse(_READ) + wire.bind() + wire.execute(),
    "flushed_and_answered": wire.parse(_READ) + wire.bind() + wire.execute() + m.frame(b"H", b""),
    "half_message_after": wire.parse(_READ) + wire.bind()[:3],
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_batch_waiting_for_its_sync_ends_and_its_lock_goes(session_px: ProxyProcess, pg: PgCluster,
                                                             shape: str) -> None:
    """alice's batch without Sync holds AccessShareLock on `orders`; past idle_in_transaction_timeout her session
    ends with FATAL 25P03 (counted), and a DBA's LOCK TABLE orders ... NOWAIT then succeeds (before: nothing ended
    it, the lock held for as long as alice's socket stayed open)."""
    before = idle_ends(session_px)
    a = wire.connect(session_px, "alice", timeout=30)
    try:
        a.sendall(SHAPES[shape])
        until(lambda: orders_locks(pg) != [], timeout=20, interval=0.05, what="alice's lock on orders")
        a.settimeout(15 * BOUND)
        got = wire.read_to_close(a)
        fatal = [m.decode_error_fields(body) for t, body in got if t == b"E"]
        assert [(f["S"], f["C"]) for f in fatal] == [("FATAL", "25P03")], got
        assert "idle-in-transaction timeout" in fatal[0]["M"], fatal
    finally:
        a.close()
    assert idle_ends(session_px) == before + 1
    until(lambda: orders_locks(pg) == [], timeout=20, interval=0.05, what="the lock released")
    pg.execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE NOWAIT; ROLLBACK", dbname="saas")


def test_a_client_waiting_for_a_long_statement_is_not_ended(session_px: ProxyProcess) -> None:
    """A flushed Execute that runs past the bound is not idle: its answer comes, then the client's Sync is
    answered and the session goes on."""
    a = wire.connect(session_px, "alice", timeout=30)
    with a:
        a.settimeout(30)
        a.sendall(wire.parse(f"SELECT pg_sleep({2.5 * BOUND})") + wire.bind() + wire.execute() + m.frame(b"H", b""))
        answer = wire.read_until(a, b"C")
        got = answer + wire.exchange(a, wire.SYNC)
        assert [t for t, _ in got] == [b"1", b"2", b"D", b"C", b"Z"], got
        after = wire.exchange(a, m.query_message("SELECT 'still here'"))
        assert [t for t, _ in after] == [b"T", b"D", b"C", b"Z"], after


def test_a_client_sending_under_the_bound_is_not_ended(session_px: ProxyProcess) -> None:
    """A batch whose client keeps sending, each message within the bound, lasts past it; its Sync is answered."""
    a = wire.connect(session_px, "alice", timeout=30)
    with a:
        a.settimeout(30)
        a.sendall(wire.parse(_READ))
        for _ in range(6):
            time.sleep(BOUND / 2)
            a.sendall(m.frame(b"D", b"S\0"))
        got = wire.exchange(a, wire.bind() + wire.execute() + wire.SYNC)
        types = [t for t, _ in got]
        assert types == [b"1", *[b"t", b"T"] * 6, b"2", b"D", b"C", b"Z"], got
