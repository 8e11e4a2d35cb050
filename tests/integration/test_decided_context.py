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


# --- R3: a Parse never run changes nothing -------------------------------------------------------------------------

EXPLAIN_VC = "EXPLAIN SELECT * FROM vc"
UNRUN_REMOVALS = {
    "named drop": _parse("d", "DROP VIEW vc") + _parse("x", EXPLAIN_VC) + _bind("x") + EXECUTE + m.SYNC_MESSAGE,
    "unnamed drop": _parse("", "DROP VIEW vc") + _parse("", EXPLAIN_VC) + _bind("") + EXECUTE + m.SYNC_MESSAGE,
    "discard temp": _parse("d", "DISCARD TEMP") + _parse("x", EXPLAIN_VC) + _bind("x") + EXECUTE + m.SYNC_MESSAGE,
    "discard all": _parse("d", "DISCARD ALL") + _parse("x", EXPLAIN_VC) + _bind("x") + EXECUTE + m.SYNC_MESSAGE,
    "bound drop": _parse("d", "DROP VIEW vc") + _bind("d") + _parse("x", EXPLAIN_VC) + _bind("x") + EXECUTE
    + m.SYNC_MESSAGE,
    "closed drop": _parse("d", "DROP VIEW vc") + m.frame(b"C", b"Sd\x00") + _parse("x", EXPLAIN_VC) + _bind("x")
    + EXECUTE + m.SYNC_MESSAGE,
    "drop then query": _parse("d", "DROP VIEW vc") + _query(EXPLAIN_VC),
    # past 4 KiB a text is decided by a decision worker, in the session's context as it crosses to the worker
    "padded": _parse("d", "DROP VIEW vc") + _parse("x", EXPLAIN_VC + " " * 5000 + "-- padded") + _bind("x")
    + EXECUTE + m.SYNC_MESSAGE,
}


@pytest.mark.parametrize("form", sorted(UNRUN_REMOVALS))
@pytest.mark.parametrize("mode", MODES)
def test_a_removal_parsed_but_never_run_leaves_a_temporary_view_in_the_context(
        proxies: dict[str, ProxyProcess], mode: str, form: str) -> None:
    """Red team 9a9 R3: with a temporary view vc over pg_class, `EXPLAIN SELECT * FROM vc` is refused (42501
    explain_catalog: its plan follows hidden relations); a Parse of DROP VIEW vc / DISCARD TEMP never executed (never
    bound, bound only, closed) made the EXPLAIN of the same batch be decided as if vc were gone, and gina got
    pg_class's costed plan. It counts only once executed: refused, and the view is still there."""
    sock = _session(proxies[mode], "gina")
    try:
        assert _errors(_wire(sock, _query(VIEW))) == []
        assert _errors(_wire(sock, _query(EXPLAIN_VC))) == ["42501"]  # the control
        answers = _wire(sock, UNRUN_REMOVALS[form])
        assert _errors(answers) == ["42501"] and not _rows(answers), answers
        assert _rows(_wire(sock, _query("SELECT count(*) > 0 FROM vc"))) == ["t"]
    finally:
        sock.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_search_path_change_parsed_but_never_run_moves_no_name(proxies: dict[str, ProxyProcess], mode: str) -> None:
    """Red team 9a9 R3 (dan): an unbound Parse of set_config('search_path', 'pg_catalog', false) made `orders`
    of the same batch be decided on pg_catalog (public.orders, the shared tenants' table: 0 rows under RLS), where
    PostgreSQL's search_path never moved. It stays others_table (42501)."""
    sock = _session(proxies[mode], "dan")
    try:
        for setter in ("SELECT set_config('search_path', 'pg_catalog', false)", "SET search_path = pg_catalog"):
            answers = _wire(sock, _parse("p", setter) + _parse("o", "SELECT count(*) FROM orders") + _bind("o")
                            + EXECUTE + m.SYNC_MESSAGE)
            assert _errors(answers) == ["42501"] and not _rows(answers), (setter, answers)
            _wire(sock, m.frame(b"C", b"Sp\x00") + m.frame(b"C", b"So\x00") + m.SYNC_MESSAGE)
        ran = _wire(sock, _parse("p", "SET search_path = pg_catalog") + _bind("p") + EXECUTE
                    + _parse("o", "SELECT count(*) FROM orders") + m.SYNC_MESSAGE)
        # executed, the path counts for the rest of the batch: decided on pg_catalog, PostgreSQL finds no orders there
        assert _errors(ran) == ["42P01"], ran
    finally:
        sock.close()
