"""A server PostgreSQL left skipping to a Sync (an ErrorResponse to an extended message, no Sync yet) is never lent
to another client: it stays with its session until that Sync, and is closed if the session ends first (red team
9s4 H1). Transaction pooling, a pool of one, sticky servers on and off."""

from __future__ import annotations

import itertools
import socket
import threading

import pytest

from proxy.protocol import messages as m
from tests.support import wire
from tests.support.pgcluster import PgCluster
from tests.support.pools import until_waiting
from tests.support.proxyproc import ProxyProcess

_IDS = itertools.count(900_000)

# What A sends without a Sync (after a query of its own answered): PostgreSQL answers an ERROR to an extended message,
# then skips to a Sync. H1's shapes (given back reusable before the fix) and its neighbours 9s4 found closed.
SHAPES = {
    "select_plus_bad_close": m.query_message("SELECT 2") + m.frame(b"C", b"Zx\0"),
    "commit_plus_bad_close": m.query_message("COMMIT") + m.frame(b"C", b"Zx\0"),
    "lone_bad_close": m.frame(b"C", b"Zx\0"),
    "short_bind": m.frame(b"B", b"\0"),
    "close_P_no_nul": m.frame(b"C", b"Pabc"),
    "commit_plus_bad_describe": m.query_message("COMMIT") + m.frame(b"D", b"Zx\0"),
    "lone_bad_describe": m.frame(b"D", b"Zx\0"),
    "describe_S_no_nul": m.frame(b"D", b"Sabc"),
    "lone_describe_missing_portal": m.frame(b"D", b"Pnope\0"),
    "lone_execute_missing_portal": wire.execute(),
    "lone_short_execute": m.frame(b"E", b"\0"),
    "parse_short": m.frame(b"P", b"\0SELECT 1\0"),
    "parse_bad_type_oid": m.frame(b"P", b"\0SELECT $1\0\0\x01\x00\x0f\x42\x3f"),
    "bind_wrong_count": wire.parse("SELECT 1") + m.frame(b"B", b"\0\0\0\0\0\x01\x00\x00\x00\x01x\0\0"),
}


def _b_runs(p: ProxyProcess, pg: PgCluster, row: int) -> dict[str, object]:
    """B (the same tenant) runs a simple query and an extended INSERT; what it got, and whether the row is there."""
    b = wire.connect(p, "ivan", timeout=30)
    try:
        b.sendall(m.query_message("SELECT 'B-simple'"))
        simple = wire.read_until(b, b"Z", closed=True)
        b.sendall(wire.parse(f"INSERT INTO orders VALUES ({row}, 1)") + wire.bind() + wire.execute() + wire.SYNC)
        ext = wire.read_until(b, b"Z", closed=True)
    finally:
        b.close()
    found = pg.execute("SELECT count(*) FROM orders WHERE id = %s", (row,), dbname="initech")
    pg.execute("DELETE FROM orders WHERE id = %s", (row,), dbname="initech")  # (the cluster's next modules count rows)
    return {"simple": [t for t, body in simple if t == b"D" and b"B-simple" in body],
            "ext": [body for t, body in ext if t == b"C"], "row": found}


def _expected() -> dict[str, object]:
    return {"simple": [b"D"], "ext": [b"INSERT 0 1\0"], "row": [(1,)]}


def _a_errs(a: socket.socket, shape: str) -> list[tuple[bytes, bytes]]:
    a.sendall(m.query_message("BEGIN" if shape.startswith("commit") else "SELECT 1"))
    assert wire.read_until(a, b"Z", closed=True)[-1][0] == b"Z"
    a.sendall(SHAPES[shape])
    return wire.read_until(a, b"E", closed=True)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_server_skipping_to_sync_is_closed_when_its_client_leaves(one_pooled: ProxyProcess, pg: PgCluster,
                                                                    shape: str) -> None:
    """A leaves with its server skipping to a Sync: the next client of the tenant (B) gets a server that answers it:
    its simple query answered, its INSERT run (before: no answer, and only a ReadyForQuery, the INSERT not run)."""
    a = wire.connect(one_pooled, "ivan", timeout=30)
    try:
        got = _a_errs(a, shape)
        assert got and got[-1][0] == b"E", got
    finally:
        a.close()
    row = next(_IDS)
    assert _b_runs(one_pooled, pg, row) == _expected()


@pytest.mark.parametrize("shape", ["select_plus_bad_close", "commit_plus_bad_close"])
def test_a_server_skipping_to_sync_stays_with_its_client_until_the_sync(one_pooled: ProxyProcess,
                                                                        pg: PgCluster, shape: str) -> None:
    """A stays connected: its server is held until its Sync (B waits for it, as for any batch in flight), then B
    is answered in full; A's own Sync ends its batch with a ReadyForQuery, as on a direct connection."""
    a = wire.connect(one_pooled, "ivan", timeout=30)
    row = next(_IDS)
    result: dict[str, object] = {}

    def b_side() -> None:
        try:
            result.update(_b_runs(one_pooled, pg, row))
        except Exception as exc:  # (reported by the assertion below)
            result["error"] = repr(exc)

    try:
        got = _a_errs(a, shape)
        assert got and got[-1][0] == b"E", got
        b = threading.Thread(target=b_side)
        b.start()
        try:
            until_waiting(one_pooled, "initech")  # (before the fix: B got A's server at once, skipped by PostgreSQL)
        finally:
            a.sendall(wire.SYNC)
            assert wire.read_until(a, b"Z", closed=True)[-1][0] == b"Z"
            b.join(60)
        a.sendall(m.query_message("SELECT 'A-after'"))
        assert [body for t, body in wire.read_until(a, b"Z", closed=True) if t == b"D" and b"A-after" in body]
    finally:
        a.close()
    assert result == _expected()


@pytest.mark.parametrize("shape", ["lone_bad_close", "close_P_no_nul", "select_plus_bad_close"])
def test_a_flush_after_the_error_does_not_end_the_skipped_batch(one_pooled: ProxyProcess, pg: PgCluster,
                                                                shape: str) -> None:
    """Red team 9s5 S1: after the ERROR that left its server skipping to a Sync, a lone Flush made the proxy end the
    batch with a Sync of its own (as for an answered Flush-ended batch): the client's next Parse/Bind/Execute INSERT
    then ran where PostgreSQL skips it. The server keeps skipping to the client's own Sync: only a ReadyForQuery
    answers that batch, the row is not written, and the session goes on."""
    a = wire.connect(one_pooled, "ivan", timeout=30)
    row = next(_IDS)
    try:
        got = _a_errs(a, shape)
        assert got and got[-1][0] == b"E", got
        a.sendall(m.frame(b"H", b""))
        a.sendall(wire.parse(f"INSERT INTO orders VALUES ({row}, 1)") + wire.bind() + wire.execute() + wire.SYNC)
        assert [t for t, _ in wire.read_until(a, b"Z", closed=True)] == [b"Z"]
        a.sendall(m.query_message("SELECT 'A-after'"))
        assert [body for t, body in wire.read_until(a, b"Z", closed=True) if t == b"D" and b"A-after" in body]
    finally:
        a.close()
    assert pg.execute("SELECT count(*) FROM orders WHERE id = %s", (row,), dbname="initech") == [(0,)]
    pg.execute("DELETE FROM orders WHERE id = %s", (row,), dbname="initech")
