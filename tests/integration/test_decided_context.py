"""Decisions made in a context PostgreSQL never runs the statement in (issue 14, red team 9a9 R1-R3).

R2: a set_config() of search_path whose is_local is an expression. R3: a Parse never run (DROP, DISCARD TEMP, a
search_path change) counted for the rest of its batch. R1: a prepared statement decided at its Parse, re-analysed
by PostgreSQL at its Bind under another context. gina (schema tenant `globex` of `saas`) and dan (database tenant
sharing `saas` with the shared tenants, under others_table); both pool modes, every PostgreSQL the fixtures offer.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.protocol import messages as m
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import SAAS_DATABASE_ROLE, SAAS_DATABASE_TENANT, ProxyProcess, prepare_backend
from tests.support.wire import login, read_message

MODES = ("transaction", "session")
USERS = {"gina": "saas", "dan": "saas"}
VIEW = "CREATE TEMP VIEW vc AS SELECT oid, relname FROM pg_catalog.pg_class"


@pytest.fixture(scope="module")
def proxies(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ProxyProcess]]:
    """One proxy per pool mode (session pooling without the statement cache: the client's names reach the server)."""
    prepare_backend(pg)
    out = {}
    for mode in MODES:
        pool: dict[str, Any] = {"pool_mode": mode}
        if mode == "session":
            pool["statement_cache"] = False
        out[mode] = ProxyProcess(pg, tmp_path_factory.mktemp(f"decided-{mode}"), backend_sslmode="disable",
                                 extra_tenants=SAAS_DATABASE_TENANT, extra_roles=SAAS_DATABASE_ROLE,
                                 extra_users={"dan": ("hooli", "dan-pw")}, pool=pool)
    try:
        for proxy in out.values():
            proxy.start()
        yield out
    finally:
        for proxy in out.values():
            proxy.stop()


def _session(proxy: ProxyProcess, user: str) -> socket.socket:
    sock, msgs = login(proxy.port, {"user": user, "database": USERS[user]}, proxy.password(user))
    assert msgs[-1][0] == b"Z", msgs
    return sock


def _wire(sock: socket.socket, data: bytes) -> list[tuple[str, Any]]:
    """Send `data` (ending in one Sync or one Query) and read to its ReadyForQuery: (type, error code | row text)."""
    sock.sendall(data)
    out: list[tuple[str, Any]] = []
    while True:
        t, body = read_message(sock)
        if t == b"E":
            out.append(("E", m.decode_error_fields(body).get("C")))
        elif t == b"D":
            out.append(("D", body[6:].decode("utf-8", "replace")))
        elif t == b"Z":
            return out
        else:
            out.append((t.decode(), None))


def _parse(name: str, sql: str) -> bytes:
    return m.Parse(name, sql, b"\x00\x00").encode()


def _bind(statement: str) -> bytes:
    return m.frame(b"B", b"\x00" + statement.encode() + b"\x00" + struct.pack("!hhh", 0, 0, 0))


EXECUTE = m.frame(b"E", b"\x00" + struct.pack("!i", 0))


def _query(sql: str) -> bytes:
    return m.Query(sql).encode()


def _errors(answers: list[tuple[str, Any]]) -> list[str]:
    return [code for t, code in answers if t == "E"]


def _rows(answers: list[tuple[str, Any]]) -> list[str]:
    return [row for t, row in answers if t == "D"]


# --- R2: set_config('search_path', v, <expression>) ----------------------------------------------------------------

@pytest.mark.parametrize("is_local", ["1 = 1", "true AND true", "NOT false"])
@pytest.mark.parametrize("mode", MODES)
def test_a_set_config_of_search_path_with_a_computed_is_local_is_refused(
        proxies: dict[str, ProxyProcess], mode: str, is_local: str) -> None:
    """Red team 9a9 R2: PostgreSQL takes `1 = 1` for true (a LOCAL change, gone with its transaction); the proxy
    took it for a session change to pg_catalog, and let dan name `orders` (public.orders, the shared tenants' table:
    others_table before). A non-literal is_local is refused (0A000), and others_table stays."""
    sock = _session(proxies[mode], "dan")
    try:
        assert _errors(_wire(sock, _query("SELECT count(*) FROM orders"))) == ["42501"]
        set_path = f"SELECT set_config('search_path', 'pg_catalog', {is_local})"
        assert _errors(_wire(sock, _query(set_path))) == ["0A000"]
        assert _errors(_wire(sock, _query("SELECT count(*) FROM orders"))) == ["42501"]
        assert _errors(_wire(sock, _query("EXPLAIN SELECT * FROM orders"))) == ["42501"]
    finally:
        sock.close()
