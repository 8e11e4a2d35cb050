"""Hidden schemas (issue 14): the last line also guards result rows — a reserved name never reaches the client.

Red team 9a5 F9 (EXPLAIN VERBOSE of a default_text_search_config literal naming a hidden schema), F5 (session
pooling: a protocol statement name past 63 bytes, then pg_prepared_statements) and wp-j2's pipelined PREPARE each
delivered the reserved name the proxy sent for a hidden schema in an ordinary result row. Those paths are closed at
their causes (wp-k9a5a, wp-k9a5b); the last line is the backstop for any other: once a session has sent a reserved
name, a DataRow, RowDescription, CommandComplete or CopyData holding it cuts the result (answer_withheld, 42501) and
the session goes on (a ParameterStatus or NotificationResponse holding one is dropped: tests/unit/test_session.py).
These tests make PostgreSQL print the session's reserved name on purpose: the session names the hidden schema (the
statement is sent with the reserved name), the test reads that name from pg_stat_activity as the superuser, and the
client then selects it as a value. Lab: the one of test_hidden_bounds.py (`globex` hidden from alice, a shared
tenant, and dan, a database tenant of `saas`).
"""

from __future__ import annotations

import re
import socket

import pytest

from proxy.protocol import messages as m
from tests.integration.test_hidden_bounds import MODES, TENANTS, proxies  # noqa: F401 (the fixture)
from tests.support.peak import peak_kb, reset_peak
from tests.support.pgcluster import PgCluster
from tests.support.proxyproc import ProxyProcess
from tests.support.wire import SYNC, bind, exchange, execute, login, parse

_RESERVED = re.compile(rb"pg_9[a-z2-7]{24}")
_WITHHELD = "pgtenant: the server's answer was withheld (rule answer_withheld)"


def _reserved(sock: socket.socket, pg: PgCluster) -> str:
    """Name the hidden schema (sent as its reserved name; PostgreSQL's 42P01 written back with the client's name)
    and read the reserved name the server got from pg_stat_activity (superuser)."""
    answers = _exchange(sock, m.Query("SELECT * FROM globex.orders_nosuch").encode())
    assert [code for code, _ in _errors(answers)] == ["42P01"], answers
    rows = pg.execute("SELECT query FROM pg_stat_activity WHERE query LIKE '%orders_nosuch%' AND query ~ 'pg_9'",
                      dbname="saas")
    found = {match.group().decode() for (query,) in rows for match in [_RESERVED.search(query.encode())] if match}
    assert len(found) == 1, rows
    return found.pop()


def _session(proxy: ProxyProcess, strategy: str) -> socket.socket:
    user, db = TENANTS[strategy]
    sock, msgs = login(proxy.port, {"user": user, "database": db}, proxy.password(user))
    assert msgs[-1][0] == b"Z", msgs
    return sock


def _exchange(sock: socket.socket, data: bytes, requests: int = 1) -> list[tuple[bytes, bytes]]:
    """Send `data`; every message up to the `requests`-th ReadyForQuery, raw, none of them holding a reserved name."""
    out = exchange(sock, data, requests)
    assert [(t, body) for t, body in out if _RESERVED.search(body)] == [], out
    return out


def _errors(answers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(f["C"], f["M"]) for t, body in answers if t == b"E" for f in [m.decode_error_fields(body)]]


def _rows(answers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [body for t, body in answers if t == b"D"]


def _extended(sql: str) -> bytes:
    return parse(sql) + bind() + execute() + SYNC


def _usable(sock: socket.socket) -> None:
    answers = _exchange(sock, m.Query("SELECT 41 + 1").encode())
    assert _rows(answers) == [b"\x00\x01\x00\x00\x00\x0242"] and answers[-1] == (b"Z", b"I"), answers


@pytest.mark.parametrize("extended", [False, True], ids=["simple", "extended"])
@pytest.mark.parametrize("strategy", sorted(TENANTS))
@pytest.mark.parametrize("mode", MODES)
def test_a_row_holding_a_reserved_name_is_withheld(proxies: dict[str, ProxyProcess], pg: PgCluster,  # noqa: F811
                                                   mode: str, strategy: str, extended: bool) -> None:
    """A DataRow (after rows that go), a RowDescription (a column named by it), a CommandComplete-free CopyData of
    COPY TO STDOUT holding the session's reserved name: withheld (the message never sent), and the session goes on."""
    sock = _session(proxies[mode], strategy)
    try:
        reserved = _reserved(sock, pg)
        for sql in (f"SELECT x FROM (VALUES ('a'), ('{reserved}.orders')) v(x)",
                    f'SELECT 1 AS "{reserved}"',  # (a RowDescription: a Query's; the extended batch has no Describe)
                    f"COPY (SELECT '{reserved}') TO STDOUT"):
            answers = _exchange(sock, _extended(sql) if extended and sql.startswith("SELECT x")
                                else m.Query(sql).encode())
            assert _errors(answers) == [("42501", _WITHHELD)] and answers[-1] == (b"Z", b"I"), answers
            assert [t for t, _ in answers[-2:]] == [b"E", b"Z"], answers  # (rows before the one holding it go)
            _usable(sock)
    finally:
        sock.close()


@pytest.mark.parametrize("extended", [False, True], ids=["simple", "extended"])
@pytest.mark.parametrize("strategy", sorted(TENANTS))
@pytest.mark.parametrize("mode", MODES)
def test_a_withheld_row_in_a_transaction_block_fails_it(proxies: dict[str, ProxyProcess], pg: PgCluster,  # noqa: F811
                                                        mode: str, strategy: str, extended: bool) -> None:
    """In a transaction block the server leaves open, the client was told the statement failed: the server's
    transaction fails too (the next statement is refused 25P02 as PostgreSQL would), ROLLBACK ends it."""
    sock = _session(proxies[mode], strategy)
    try:
        reserved = _reserved(sock, pg)
        assert _exchange(sock, m.Query("BEGIN").encode())[-1] == (b"Z", b"T")
        sql = f"SELECT '{reserved}' AS x"
        answers = _exchange(sock, _extended(sql) if extended else m.Query(sql).encode())
        assert _errors(answers) == [("42501", _WITHHELD)] and answers[-1] == (b"Z", b"E"), answers
        answers = _exchange(sock, m.Query("SELECT 1").encode())
        assert [code for code, _ in _errors(answers)] == ["25P02"] and answers[-1] == (b"Z", b"E"), answers
        assert _exchange(sock, m.Query("ROLLBACK").encode())[-1] == (b"Z", b"I")
        _usable(sock)
    finally:
        sock.close()


@pytest.mark.parametrize("strategy", sorted(TENANTS))
@pytest.mark.parametrize("mode", MODES)
def test_a_value_that_merely_looks_like_a_reserved_name_passes(proxies: dict[str, ProxyProcess],  # noqa: F811
                                                               pg: PgCluster, mode: str, strategy: str) -> None:
    """Until a session sends a reserved name nothing is looked at, and afterwards only its own names are withheld:
    a value of the reserved names' shape that is none of them reaches the client, before and after."""
    sock = _session(proxies[mode], strategy)
    try:
        lookalike = "pg_9" + "a" * 24
        for turn in ("before", "after"):
            if turn == "after":
                assert _reserved(sock, pg) != lookalike
            answers = exchange(sock, m.Query(f"SELECT '{lookalike}'").encode())
            assert _errors(answers) == [] and lookalike.encode() in b"".join(_rows(answers)), (turn, answers)
    finally:
        sock.close()


@pytest.mark.parametrize("copy", [False, True], ids=["select", "copy"])
@pytest.mark.parametrize("strategy", sorted(TENANTS))
@pytest.mark.parametrize("mode", MODES)
def test_a_large_row_after_a_reserved_name_is_streamed(proxies: dict[str, ProxyProcess], pg: PgCluster,  # noqa: F811
                                                       mode: str, strategy: str, copy: bool) -> None:
    """Red team 9a6 G3/G4: once the session sent a reserved name, a 20 MB row is still forwarded piece by piece as it
    arrives (scanned, never held whole): answered whole and right, the proxy's peak memory grows by far less than
    the row (held whole, twice over, it grew by ~40 MB)."""
    proxy = proxies[mode]
    assert proxy.proc is not None
    sock = _session(proxy, strategy)
    try:
        _reserved(sock, pg)
        _usable(sock)
        reset_peak(proxy.proc.pid)
        before = peak_kb(proxy.proc.pid)
        sql = "SELECT repeat('x', 20000000)"
        answers = _exchange(sock, m.Query(f"COPY ({sql}) TO STDOUT" if copy else sql).encode())
        grown = peak_kb(proxy.proc.pid) - before
        if copy:  # (a CopyData of COPY TO STDOUT)
            assert [body for t, body in answers if t == b"d"] == [b"x" * 20_000_000 + b"\n"]
        else:
            assert _rows(answers) == [b"\x00\x01" + (20_000_000).to_bytes(4, "big") + b"x" * 20_000_000]
        assert answers[-1] == (b"Z", b"I") and _errors(answers) == []
        assert grown < 8_000, grown  # kB: the row is 20,000 kB
        _usable(sock)
    finally:
        sock.close()


@pytest.mark.parametrize("copy", [False, True], ids=["select", "copy"])
@pytest.mark.parametrize("strategy", sorted(TENANTS))
@pytest.mark.parametrize("mode", MODES)
def test_a_large_row_after_a_cut_is_dropped_not_held(proxies: dict[str, ProxyProcess], pg: PgCluster,  # noqa: F811
                                                     mode: str, strategy: str, copy: bool) -> None:
    """Red team 9a7 H5: a result cut by the last line (a first row holding the session's reserved name), then a
    20 MB row of the same result: the rest is swallowed up to the ReadyForQuery, the large row dropped as it arrives
    (held whole before: the proxy's peak memory grew by the row, ~3x for 300 MB); the session goes on."""
    proxy = proxies[mode]
    assert proxy.proc is not None
    sock = _session(proxy, strategy)
    try:
        reserved = _reserved(sock, pg)
        reset_peak(proxy.proc.pid)
        before = peak_kb(proxy.proc.pid)
        sql = f"SELECT '{reserved}' UNION ALL SELECT repeat('x', 20000000)"
        answers = _exchange(sock, m.Query(f"COPY ({sql}) TO STDOUT" if copy else sql).encode())
        grown = peak_kb(proxy.proc.pid) - before
        assert _errors(answers) == [("42501", _WITHHELD)] and answers[-1] == (b"Z", b"I"), answers
        assert [t for t, _ in answers if t in b"Dd"] == [], answers
        assert grown < 8_000, grown  # kB: the row is 20,000 kB
        _usable(sock)
    finally:
        sock.close()


@pytest.mark.parametrize("copy", [False, True], ids=["select", "copy"])
@pytest.mark.parametrize("strategy", sorted(TENANTS))
@pytest.mark.parametrize("mode", MODES)
def test_a_reserved_name_late_in_a_large_row_ends_the_session(proxies: dict[str, ProxyProcess],  # noqa: F811
                                                              pg: PgCluster, mode: str, strategy: str,
                                                              copy: bool) -> None:
    """A reserved name at the end of a 1 MB row (a DataRow, or COPY TO STDOUT's CopyData), whose first bytes were
    forwarded before the name arrived: no error can take the row's place, so the session ends (the client's
    connection closed, none of the name sent), logged and counted as answer_withheld (data_row_mid_message,
    copy_data_mid_message); the next session works."""
    proxy = proxies[mode]
    sock = _session(proxy, strategy)
    withheld = proxy.count_events("answer_withheld")
    try:
        reserved = _reserved(sock, pg)
        sql = f"SELECT repeat('x', 1000000) || '{reserved}'"
        sock.sendall(m.Query(f"COPY ({sql}) TO STDOUT" if copy else sql).encode())
        got = b""
        sock.settimeout(10)
        while chunk := sock.recv(1 << 20):
            got += chunk
        assert reserved.encode() not in got and b"pg_9" not in got
        begun = b"Hd" if copy else b"TD"  # (the row begun, cut)
        assert got[:1] == begun[:1] and begun[1:] in got[:200] and len(got) < 1_000_100, len(got)
    finally:
        sock.close()
    events = [e for e in proxy.log_events() if e.get("event") == "answer_withheld"]
    kind = "copy_data" if copy else "data_row"
    assert len(events) == withheld + 1 and events[-1]["message"] == f"{kind}_mid_message", events[-1:]
    sock = _session(proxy, strategy)
    try:
        _usable(sock)
    finally:
        sock.close()


def _guards_logged(proxy: ProxyProcess, before: int) -> int:
    """The last_line_guarded events logged since `before` of them (each logged when the server's answer is read)."""
    return proxy.count_events("last_line_guarded") - before


@pytest.mark.parametrize("extended", [False, True], ids=["simple", "extended"])
@pytest.mark.parametrize("strategy", sorted(TENANTS))
@pytest.mark.parametrize("mode", MODES)
def test_a_hidden_and_a_missing_schema_set_the_guard_alike(proxies: dict[str, ProxyProcess],  # noqa: F811
                                                           mode: str, strategy: str, extended: bool) -> None:
    """Red team 9a6 G3: the last line's guard (whose cost on a large result told a hidden schema from a missing one)
    is set, and logged (last_line_guarded) once, after a statement naming the hidden schema (globex, sent renamed)
    and after one naming a missing schema (glebox, renamed too since 9a8 N2) alike; not after one naming only a
    schema the tenant sees. Both answered alike by PostgreSQL (42P01 with the client's name), the session usable
    after."""
    proxy = proxies[mode]
    answers = {}
    for name in ("globex", "glebox"):
        sock = _session(proxy, strategy)
        try:
            before = proxy.count_events("last_line_guarded")
            got = _exchange(sock, m.Query("SELECT relname FROM pg_catalog.pg_class LIMIT 0").encode())
            assert _errors(got) == [] and _guards_logged(proxy, before) == 0, (name, got)
            sql = f"SELECT * FROM {name}.orders_nosuch"
            got = _exchange(sock, _extended(sql) if extended else m.Query(sql).encode())
            answers[name] = [(code, text.replace(name, "<s>")) for code, text in _errors(got)]
            _usable(sock)
            assert _guards_logged(proxy, before) == 1, (name, mode, strategy)
            got = _exchange(sock, m.Query(f"SELECT * FROM {name}.orders_nosuch2").encode())  # (once a session)
            assert _guards_logged(proxy, before) == 1, (name, mode, strategy)
        finally:
            sock.close()
    assert answers["globex"] == answers["glebox"] == [("42P01", 'relation "<s>.orders_nosuch" does not exist')], \
        answers
