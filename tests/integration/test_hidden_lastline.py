"""Hidden schemas (issue 14): the last line also guards result rows — a reserved name never reaches the client.

Red team 9a5 F9 (EXPLAIN VERBOSE of a default_text_search_config literal naming a hidden schema), F5 (session
pooling: a protocol statement name past 63 bytes, then pg_prepared_statements) and p19 (current_query()) each
delivered the reserved name the proxy sent for a hidden schema in an ordinary result row; the last line now cuts
such a result (answer_withheld, 42501), and the session goes on (a ParameterStatus or NotificationResponse holding
one is dropped: tests/unit/test_session.py; the lab's policy refuses the pg_notify that could carry one). Lab: the
one of test_hidden_bounds.py (`globex` hidden from alice, a shared tenant, and dan, a database tenant of `saas`). What a
hidden and a missing name are answered is not compared here (withheld vs. PostgreSQL's row: wp-k9a5a/b's part).
"""

from __future__ import annotations

import re
import socket

import pytest

from proxy.protocol import messages as m
from tests.integration.test_hidden_bounds import MODES, TENANTS, proxies  # noqa: F401 (the fixture)
from tests.support.proxyproc import ProxyProcess
from tests.support.wire import login, read_message

_RESERVED = re.compile(rb"pg_9[a-z2-7]{24}")
_WITHHELD = "pgtenant: the server's answer was withheld (rule answer_withheld)"
_LITERAL = "set_config('default_text_search_config', 'globex.english', false)"


def _session(proxy: ProxyProcess, strategy: str) -> socket.socket:
    user, db = TENANTS[strategy]
    sock, msgs = login(proxy.port, {"user": user, "database": db}, proxy.password(user))
    assert msgs[-1][0] == b"Z", msgs
    return sock


def _exchange(sock: socket.socket, data: bytes, requests: int = 1) -> list[tuple[bytes, bytes]]:
    """Send `data`; every message up to the `requests`-th ReadyForQuery, raw, none of them holding a reserved name."""
    sock.sendall(data)
    out: list[tuple[bytes, bytes]] = []
    while requests:
        t, body = read_message(sock)
        assert _RESERVED.search(body) is None, (t, body)
        out.append((t, body))
        requests -= t == b"Z"
    return out


def _errors(answers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(f["C"], f["M"]) for t, body in answers if t == b"E" for f in [m.decode_error_fields(body)]]


def _rows(answers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [body for t, body in answers if t == b"D"]


def _extended(sql: str) -> bytes:
    bind = m.frame(b"B", b"\x00\x00" + b"\x00\x00" * 3)  # (unnamed portal and statement, no parameters)
    return m.Parse("", sql, b"\x00\x00").encode() + bind + m.execute_message("") + m.SYNC_MESSAGE


def _usable(sock: socket.socket) -> None:
    answers = _exchange(sock, m.Query("SELECT 41 + 1").encode())
    assert _rows(answers) == [b"\x00\x01\x00\x00\x00\x0242"] and answers[-1] == (b"Z", b"I"), answers


@pytest.mark.parametrize("extended", [False, True], ids=["simple", "extended"])
@pytest.mark.parametrize("strategy", sorted(TENANTS))
@pytest.mark.parametrize("mode", MODES)
def test_a_row_holding_a_reserved_name_is_withheld(proxies: dict[str, ProxyProcess], mode: str,  # noqa: F811
                                                   strategy: str, extended: bool) -> None:
    """F9: EXPLAIN VERBOSE prints the literal as PostgreSQL got it, the reserved name in a row (the plan's rows
    before it go). Withheld (the row never sent), and the session goes on."""
    sock = _session(proxies[mode], strategy)
    try:
        for sql in (f"EXPLAIN VERBOSE SELECT {_LITERAL}",
                    f"EXPLAIN (VERBOSE, FORMAT JSON) SELECT CASE WHEN random() > 2 THEN {_LITERAL} END"):
            answers = _exchange(sock, _extended(sql) if extended else m.Query(sql).encode())
            assert _errors(answers) == [("42501", _WITHHELD)] and answers[-1] == (b"Z", b"I"), answers
            assert [t for t, _ in answers[-2:]] == [b"E", b"Z"], answers  # (rows before the one holding it go)
            _usable(sock)
    finally:
        sock.close()


@pytest.mark.parametrize("extended", [False, True], ids=["simple", "extended"])
@pytest.mark.parametrize("strategy", sorted(TENANTS))
@pytest.mark.parametrize("mode", MODES)
def test_a_withheld_row_in_a_transaction_block_fails_it(proxies: dict[str, ProxyProcess], mode: str,  # noqa: F811
                                                        strategy: str, extended: bool) -> None:
    """In a transaction block the server leaves open, the client was told the statement failed: the server's
    transaction fails too (the next statement is refused 25P02 as PostgreSQL would), ROLLBACK ends it."""
    sock = _session(proxies[mode], strategy)
    try:
        assert _exchange(sock, m.Query("BEGIN").encode())[-1] == (b"Z", b"T")
        sql = f"EXPLAIN VERBOSE SELECT {_LITERAL}"
        answers = _exchange(sock, _extended(sql) if extended else m.Query(sql).encode())
        assert _errors(answers) == [("42501", _WITHHELD)] and answers[-1] == (b"Z", b"E"), answers
        answers = _exchange(sock, m.Query("SELECT 1").encode())
        assert [code for code, _ in _errors(answers)] == ["25P02"] and answers[-1] == (b"Z", b"E"), answers
        assert _exchange(sock, m.Query("ROLLBACK").encode())[-1] == (b"Z", b"I")
        _usable(sock)
    finally:
        sock.close()


@pytest.mark.parametrize("strategy", sorted(TENANTS))
def test_a_long_statement_names_text_is_withheld_in_pg_prepared_statements(
        proxies: dict[str, ProxyProcess], strategy: str) -> None:  # noqa: F811
    """F5 (session pooling): a protocol statement named past 63 bytes, renamed; pg_prepared_statements (a row, and
    COPY TO STDOUT's CopyData) showed the text PostgreSQL was sent."""
    sock = _session(proxies["session"], strategy)
    try:
        parse = m.Parse("k6" + "x" * 70, f"SELECT {_LITERAL}", b"\x00\x00").encode() + m.SYNC_MESSAGE
        assert _errors(_exchange(sock, parse)) == []
        for sql in ("SELECT name, statement FROM pg_prepared_statements ORDER BY name",
                    "COPY (SELECT statement FROM pg_prepared_statements) TO STDOUT"):
            answers = _exchange(sock, m.Query(sql).encode())
            assert _errors(answers) == [("42501", _WITHHELD)] and answers[-1] == (b"Z", b"I"), answers
            _usable(sock)
    finally:
        sock.close()
