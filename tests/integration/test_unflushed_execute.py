"""A batch answered after a Flush, then an Execute with no Flush or Sync after it: PostgreSQL runs it but sends its
answer only at a Flush or Sync the client never sends, so nothing is coming and the client is idle. Past
idle_in_transaction_timeout its session ends (25P03, counted), the server is closed and the batch's lock on the shared
`orders` goes (before: the unanswered Execute counted as a running statement for ever, the batch was never timed and
its AccessShareLock held, in either pool mode). A client waiting for a statement it asked to be answered (a Sync after
it) with a batch open behind it is not ended. Both pool modes, the statement cache off and on."""

from __future__ import annotations

import socket

import pytest

from proxy.protocol import messages as m
from tests.support import wire
from tests.support.idleness import idle_ends, orders_locks
from tests.support.pgcluster import PgCluster
from tests.support.polling import until
from tests.support.pools import ADMIN_PASSWORD
from tests.support.proxyproc import ProxyProcess, prepare_backend

BOUND = 2.0
FLUSH = m.frame(b"H", b"")
_READ = "SELECT id FROM orders ORDER BY id LIMIT 1"


@pytest.fixture(scope="module", params=[("session", False), ("session", True), ("transaction", False),
                                        ("transaction", True)],
                ids=["session-no_cache", "session-cache", "transaction-no_cache", "transaction-cache"])
def px(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """Transaction pooling with a pool of one: the held server is the only one of alice's pool."""
    prepare_backend(pg)
    mode, cache = request.param
    pool: dict[str, object] = {"pool_mode": mode, "pool_size": 1 if mode == "transaction" else 2,
                               "statement_cache": cache}
    if mode == "transaction":
        pool["query_wait_timeout"] = 60.0
    p = ProxyProcess(pg, tmp_path_factory.mktemp("unflushed"), backend_sslmode="disable", pool=pool,
                     limits={"idle_in_transaction_timeout": BOUND}, admin_users={"ops": ADMIN_PASSWORD}).start()
    yield p
    p.stop()


def _answered_after_flush(a: socket.socket, shape: str) -> None:
    """The part the client asked to be answered: P/B/E/Flush of a read, or (in a transaction block) P/Flush."""
    if shape == "after_a_flushed_execute":
        a.sendall(wire.parse(_READ) + wire.bind() + wire.execute() + FLUSH)
        got = wire.read_until(a, b"C")
        assert [t for t, _ in got] == [b"1", b"2", b"D", b"C"], got
    else:
        got = wire.exchange(a, m.query_message("BEGIN"))
        assert [t for t, _ in got] == [b"C", b"Z"], got
        a.sendall(wire.parse(_READ) + FLUSH)
        got = wire.read_until(a, b"1")
        assert [t for t, _ in got] == [b"1"], got


@pytest.mark.parametrize("shape", ["after_a_flushed_execute", "in_a_block_after_a_flushed_parse"])
def test_an_execute_left_unflushed_ends_the_idle_client(px: ProxyProcess, pg: PgCluster, shape: str) -> None:
    """alice's batch is answered as far as she asked, then she sends Bind/Execute without a Flush and waits: past
    idle_in_transaction_timeout her session ends with exactly one FATAL 25P03 (counted), the lock on `orders` goes
    (a DBA's LOCK TABLE ... NOWAIT succeeds), bruno reads `orders` and alice's pool serves her next client."""
    before = idle_ends(px)
    a = wire.connect(px, "alice", timeout=30)
    try:
        a.settimeout(30)
        _answered_after_flush(a, shape)
        a.sendall(wire.bind() + wire.execute())
        until(lambda: orders_locks(pg) != [], timeout=20, interval=0.05, what="alice's lock on orders")
        a.settimeout(15 * BOUND)
        got = wire.read_to_close(a)
        fatal = wire.errors_in(got)
        assert [(f["S"], f["C"]) for f in fatal] == [("FATAL", "25P03")], got
        assert "idle-in-transaction timeout" in fatal[0]["M"], fatal
    finally:
        a.close()
    assert idle_ends(px) == before + 1
    until(lambda: orders_locks(pg) == [], timeout=20, interval=0.05, what="the lock released")
    pg.execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE NOWAIT; ROLLBACK", dbname="saas")
    for user in ("bruno", "alice"):
        b = wire.connect(px, user, timeout=30)
        with b:
            b.settimeout(30)
            got = wire.exchange(b, m.query_message("SELECT count(*) FROM orders"))
            assert [t for t, _ in got] == [b"T", b"D", b"C", b"Z"], got


def test_a_client_waiting_for_a_synced_statement_with_a_batch_open_behind_it_is_not_ended(px: ProxyProcess) -> None:
    """P/B/E/Sync of a statement that runs past the bound, then P/B/E with no Sync yet: the first answer is coming
    (its Sync asked for it), so the client is not idle while it runs; then its second batch's Sync is answered."""
    a = wire.connect(px, "alice", timeout=30)
    with a:
        a.settimeout(30)
        a.sendall(wire.parse(f"SELECT pg_sleep({2.5 * BOUND})") + wire.bind() + wire.execute() + wire.SYNC
                  + wire.parse("SELECT 2") + wire.bind() + wire.execute())
        got = wire.read_until(a, b"Z")
        assert [t for t, _ in got] == [b"1", b"2", b"D", b"C", b"Z"], got
        got = wire.exchange(a, wire.SYNC)
        assert [t for t, _ in got] == [b"1", b"2", b"D", b"C", b"Z"], got
