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


def _rolled_back_and_seen(p: ProxyProcess, a: socket.socket) -> list[str]:
    """A (its transaction failed after SET work_mem and SAVEPOINT a) rolls back to a and commits: work_mem as A,
    then B, the next client on that server, then A again see it."""
    for sql in ("ROLLBACK TO a", "COMMIT"):
        assert [t for t, _ in wire.exchange(a, m.query_message(sql))] == [b"C", b"Z"]
    seen = [_show(a, "work_mem")]
    b = wire.connect(p, "ivan", timeout=30)
    try:
        seen.append(_show(b, "work_mem"))
    finally:
        b.close()
    return [*seen, _show(a, "work_mem")]


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
        seen = _rolled_back_and_seen(one_pooled, a)
    finally:
        a.close()
    assert seen == ["8MB", "4MB", "8MB"]


def test_a_savepoint_bound_in_an_earlier_batch_is_set_at_its_execute(one_pooled: ProxyProcess) -> None:
    """A binds portal `sp` to SAVEPOINT a in one batch, sets work_mem, and executes `sp` in a later one; then an error,
    ROLLBACK TO a, COMMIT: the SET came before the savepoint and stays (before: the savepoint was taken as set at the
    first batch's end, before the SET, and the ROLLBACK TO took the SET back in the proxy's view only)."""
    a = wire.connect(one_pooled, "ivan", timeout=30)
    try:
        wire.exchange(a, m.query_message("BEGIN"))
        wire.exchange(a, wire.parse("SAVEPOINT a", "sp") + wire.bind("sp", "sp") + wire.SYNC)
        wire.exchange(a, m.query_message("SET work_mem = '8MB'"))
        assert [t for t, _ in wire.exchange(a, wire.execute("sp") + wire.SYNC)] == [b"C", b"Z"]
        assert [f["C"] for f in wire.errors_in(wire.exchange(a, m.query_message("SELECT 1/0")))] == ["22012"]
        seen = _rolled_back_and_seen(one_pooled, a)
    finally:
        a.close()
    assert seen == ["8MB", "4MB", "8MB"]


LONG = "p" * 63  # PostgreSQL keys a portal by its name's first 63 bytes


@pytest.mark.parametrize("shape", ["set", "temp", "closed_by_other_tail"])
def test_a_portal_is_matched_by_its_first_63_bytes(one_pooled: ProxyProcess, shape: str) -> None:
    """Red team 9s7 P1: A binds a SET / CREATE TEMP TABLE to portal LONG+"A" and executes (or closes, then binds again
    and executes) it as LONG+"B": PostgreSQL finds the one portal by the first 63 bytes and runs it. The proxy noted the
    portal under the whole name, missed the Execute, and gave the server, unreset, to B, the next client of the pool:
    B saw work_mem 8MB / A's temporary table."""
    a = wire.connect(one_pooled, "ivan", timeout=30)
    try:
        sql = "SET work_mem = '8MB'" if shape == "set" else "CREATE TEMP TABLE rt9s7 AS SELECT 42 AS secret"
        if shape == "closed_by_other_tail":  # Close LONG+"C" closes the portal: the Bind of LONG+"A" is allowed again
            batch = (wire.parse(sql, "s1") + wire.bind("s1", LONG + "A") + m.close_message(b"P", LONG + "C")
                     + wire.bind("s1", LONG + "A") + wire.execute(LONG + "B") + wire.SYNC)
        else:
            batch = wire.parse(sql, "s1") + wire.bind("s1", LONG + "A") + wire.execute(LONG + "B") + wire.SYNC
        answers = wire.exchange(a, batch)
        assert wire.errors_in(answers) == [] and b"C" in [t for t, _ in answers]
    finally:
        a.close()  # (a session holding a temporary table or a SET keeps its server until it ends: then reset/closed)
    b = wire.connect(one_pooled, "ivan", timeout=30)
    try:
        seen = [t for t, _ in wire.exchange(b, m.query_message("SELECT 1 FROM pg_temp.rt9s7"))]
        assert _show(b, "work_mem") != "8MB"
        assert b"D" not in seen
    finally:
        b.close()
