"""Statements are matched with their answers by the Execute that runs them, not by Bind count: a Bind never executed,
a suspended portal or an empty statement earlier in a batch no longer shifts what a later statement's CommandComplete
confirms (sessionstate.py, subxacts.py). Transaction pooling, a pool of one, sticky servers on and off; PG 15 and
18."""

from __future__ import annotations

import socket

import pytest

from proxy.protocol import messages as m
from tests.support import wire
from tests.support.pgcluster import PgCluster
from tests.support.pools import pooled_proxy
from tests.support.proxyproc import ProxyProcess


@pytest.fixture(scope="module", params=[True, False], ids=["sticky", "no_sticky"])
def one(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    p = pooled_proxy(pg, tmp_path_factory.mktemp("unexecuted"), pool_mode="transaction", pool_size=1,
                     query_wait_timeout=30.0, sticky_servers=request.param)
    yield p
    p.stop()


def _parse(sql: str, name: str = "") -> bytes:
    return m.frame(b"P", name.encode() + b"\0" + sql.encode() + b"\0\0\0")


def _bind(statement: str = "") -> bytes:
    return m.frame(b"B", b"\0" + statement.encode() + b"\0" + b"\0\0" * 3)


_EXECUTE = m.frame(b"E", b"\0\0\0\0\0")


def _login(p: ProxyProcess) -> socket.socket:
    sock, msgs = wire.login(p.port, {"user": "ivan", "database": p.users["ivan"][0]}, p.password("ivan"), timeout=30)
    assert msgs[-1][0] == b"Z", msgs
    return sock


def _until_ready(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    out = []
    sock.settimeout(30)
    while True:
        out.append(wire.read_message(sock))
        if out[-1][0] == b"Z":
            return out


def _show(sock: socket.socket, name: str) -> str:
    sock.sendall(m.query_message(f"SHOW {name}"))
    rows = [m.decode_data_row(body) for t, body in _until_ready(sock) if t == b"D"]
    return rows[0][0].decode()


# What comes first in A's batch: an Execute answered by no CommandComplete of its own (or none at all). Before, the
# k-th CommandComplete was taken to answer the k-th Bind: each of these shifted the SAVEPOINT past the error, so it
# was never confirmed, and the ROLLBACK TO a later took the session's settings back to none.
LEADS = {
    "bind_never_executed": _parse("SELECT 1") + _bind(),
    "portal_suspended": _parse("SELECT generate_series(1, 3)") + _bind() + m.execute_message("", 1),
    "empty_statement": _parse("") + _bind() + _EXECUTE,
}


@pytest.mark.parametrize("lead", list(LEADS))
def test_a_set_before_a_savepoint_stays_after_rollback_to(one: ProxyProcess, lead: str) -> None:
    """A, in a transaction: a batch of LEADS[lead], SET work_mem, SAVEPOINT a and an error; then ROLLBACK TO a and
    COMMIT. PostgreSQL keeps the SET (it came before the savepoint): A sees it, and B, the next client on that server,
    does not (before: the proxy believed A's settings were the defaults, and gave the server to B with A's SET)."""
    a = _login(one)
    try:
        a.sendall(m.query_message("BEGIN"))
        _until_ready(a)
        a.sendall(LEADS[lead] + _parse("SET work_mem = '8MB'") + _bind() + _EXECUTE
                  + _parse("SAVEPOINT a") + _bind() + _EXECUTE
                  + _parse("SELECT 1/0") + _bind() + _EXECUTE + m.SYNC_MESSAGE)
        errors = [m.decode_error_fields(body)["C"] for t, body in _until_ready(a) if t == b"E"]
        assert errors == ["22012"]
        for sql in ("ROLLBACK TO a", "COMMIT"):
            a.sendall(m.query_message(sql))
            assert [t for t, _ in _until_ready(a)] == [b"C", b"Z"]
        seen = [_show(a, "work_mem")]
        b = _login(one)
        try:
            seen.append(_show(b, "work_mem"))
        finally:
            b.close()
        seen.append(_show(a, "work_mem"))
    finally:
        a.close()
    assert seen == ["8MB", "4MB", "8MB"]
