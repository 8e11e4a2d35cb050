"""Statements are matched with their answers by the Execute that runs them, not by Bind count: a Bind never executed,
a suspended portal or an empty statement earlier in a batch no longer shifts what a later statement's CommandComplete
confirms (sessionstate.py, subxacts.py). Transaction pooling, a pool of one, sticky servers on and off; PG 15 and
18."""

from __future__ import annotations

import socket

import pytest

from proxy.protocol import messages as m
from tests.support import wire
from tests.support.proxyproc import ProxyProcess


def _show(sock: socket.socket, name: str) -> str:
    rows = [m.decode_data_row(body) for t, body in wire.exchange(sock, m.query_message(f"SHOW {name}")) if t == b"D"]
    return rows[0][0].decode()


# What comes first in A's batch: an Execute answered by no CommandComplete of its own (or none at all). Before, the
# k-th CommandComplete was taken to answer the k-th Bind: each of these shifted the SAVEPOINT past the error, so it
# was never confirmed, and the ROLLBACK TO a later took the session's settings back to none.
LEADS = {
    "bind_never_executed": wire.parse("SELECT 1") + wire.bind(),
    "portal_suspended": wire.parse("SELECT generate_series(1, 3)") + wire.bind() + wire.execute(max_rows=1),
    "empty_statement": wire.parse("") + wire.bind() + wire.execute(),
}


@pytest.mark.parametrize("lead", list(LEADS))
def test_a_set_before_a_savepoint_stays_after_rollback_to(one_pooled: ProxyProcess, lead: str) -> None:
    """A, in a transaction: a batch of LEADS[lead], SET work_mem, SAVEPOINT a and an error; then ROLLBACK TO a and
    COMMIT. PostgreSQL keeps the SET (it came before the savepoint): A sees it, and B, the next client on that server,
    does not (before: the proxy believed A's settings were the defaults, and gave the server to B with A's SET)."""
    a = wire.connect(one_pooled, "ivan", timeout=30)
    try:
        wire.exchange(a, m.query_message("BEGIN"))
        batch = b"".join(wire.parse(sql) + wire.bind() + wire.execute()
                         for sql in ("SET work_mem = '8MB'", "SAVEPOINT a", "SELECT 1/0"))
        answers = wire.exchange(a, LEADS[lead] + batch + wire.SYNC)
        assert [f["C"] for f in wire.errors_in(answers)] == ["22012"]
        for sql in ("ROLLBACK TO a", "COMMIT"):
            assert [t for t, _ in wire.exchange(a, m.query_message(sql))] == [b"C", b"Z"]
        seen = [_show(a, "work_mem")]
        b = wire.connect(one_pooled, "ivan", timeout=30)
        try:
            seen.append(_show(b, "work_mem"))
        finally:
            b.close()
        seen.append(_show(a, "work_mem"))
    finally:
        a.close()
    assert seen == ["8MB", "4MB", "8MB"]
