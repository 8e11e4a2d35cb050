"""A Parse or Close PostgreSQL skips after an error in its batch (review 19a F1), and a flood past the request
tracker's bound (F1b).

F1: `Close s` + `Parse s "SELECT 1"` (or `Parse ""`) sent after an error in their batch are skipped by PostgreSQL,
which keeps the earlier `SELECT set_config('search_path', 'information_schema, <own>', false)`; the proxy recorded
the new text, so `Bind s` ran the set_config unseen and unqualified information_schema views read other tenants'
function names (in transaction pooling the tenant's next sessions too). Now the name is unknown until Parsed again:
its Bind is refused, 26000. F1b: past 10,000 requests in flight the tracker dropped the oldest and read an earlier
ReadyForQuery 'I' as "nothing in flight": a held protocol portal was forgotten and SQL FETCH ran it. gina (schema
tenant) and dan (database tenant sharing `saas`); transaction pooling, session pooling with and without the
statement cache; every PostgreSQL the fixtures offer; the tenant's next session read after each.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from proxy.protocol import messages as m
from tests.integration.test_protocol_by_sql import (  # noqa: F401 (proxies: the fixture)
    HIDDEN,
    MODES,
    OWN,
    READ,
    _bind,
    _close_statement,
    _errors,
    _execute,
    _fresh_session_unmoved,
    _parse,
    _query,
    _rows,
    _session,
    _set_path,
    _unmoved,
    _wire,
    proxies,
)
from tests.support.proxyproc import ProxyProcess
from tests.support.wire import read_message, read_to_close

_FAILING = _parse("bad", "SELECT 1/0") + _bind("", "bad") + _execute()  # 22012: the rest of its batch is skipped


@contextmanager
def _tenant_session(proxy: ProxyProcess, user: str) -> Iterator[socket.socket]:
    """A session of `user` through `proxy`, closed after the block; then the tenant's next session reads unmoved."""
    sock = _session(proxy, user)
    try:
        yield sock
    finally:
        sock.close()
    _fresh_session_unmoved(proxy, user)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("user", sorted(OWN))
@pytest.mark.parametrize("name", ["s", ""])
def test_a_statement_whose_parse_was_skipped_is_not_bound_until_parsed_again(
        proxies: dict[str, ProxyProcess], user: str, mode: str, name: str) -> None:  # noqa: F811 (the imported fixture)
    """The review's p5 (named) and p4 (unnamed): the Bind after the skipped Parse is refused (26000), PostgreSQL's
    search_path stays the tenant's (here and in the tenant's next session); once Parsed again the name binds."""
    with _tenant_session(proxies[mode], user) as sock:
        assert _errors(_wire(sock, _parse(name, _set_path(user)) + m.SYNC_MESSAGE)) == []
        close = _close_statement(name) if name else b""
        answers = _wire(sock, _FAILING + close + _parse(name, "SELECT 1") + m.SYNC_MESSAGE)
        assert _errors(answers) == ["22012"], answers
        answers = _wire(sock, _bind("", name) + _execute() + m.SYNC_MESSAGE)
        assert _errors(answers) == ["26000"] and not _rows(answers), answers
        _unmoved(sock)
        answers = _wire(sock, close + _parse(name, "SELECT 2") + _bind("", name) + _execute() + m.SYNC_MESSAGE)
        assert _errors(answers) == [] and _rows(answers) == ["2"], answers


def _describe_statement(name: str) -> bytes:
    return m.frame(b"D", b"S" + name.encode() + b"\x00")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("user", sorted(OWN))
@pytest.mark.parametrize("name", ["s", ""])
def test_a_statement_whose_parse_was_skipped_is_not_described_until_parsed_again(
        proxies: dict[str, ProxyProcess], user: str, mode: str, name: str) -> None:  # noqa: F811 (the imported fixture)
    """wp-sk's residual: a Describe of the name held unknown is refused as its Bind is (26000; PostgreSQL would
    describe the set_config statement it kept), the session goes on; once Parsed again it is described."""
    with _tenant_session(proxies[mode], user) as sock:
        assert _errors(_wire(sock, _parse(name, _set_path(user)) + m.SYNC_MESSAGE)) == []
        close = _close_statement(name) if name else b""
        answers = _wire(sock, _FAILING + close + _parse(name, "SELECT 1") + m.SYNC_MESSAGE)
        assert _errors(answers) == ["22012"], answers
        answers = _wire(sock, _describe_statement(name) + m.SYNC_MESSAGE)
        assert _errors(answers) == ["26000"] and not {"t", "T"} & {t for t, _ in answers}, answers
        _unmoved(sock)
        answers = _wire(sock, close + _parse(name, "SELECT 2 AS two") + _describe_statement(name) + m.SYNC_MESSAGE)
        assert _errors(answers) == [] and "T" in {t for t, _ in answers}, answers


@pytest.mark.parametrize(("name", "mode"), [*(("s", mode) for mode in MODES), ("", "session")])
@pytest.mark.parametrize("user", sorted(OWN))
def test_a_close_skipped_alone_leaves_the_statement_bound_as_recorded(
        proxies: dict[str, ProxyProcess], user: str, mode: str, name: str) -> None:  # noqa: F811 (the imported fixture)
    """wp-sk's over-refusal: `Close s` skipped after an error, with no Parse of s after it, leaves PostgreSQL the
    statement the proxy recorded; its records are put back and `Bind s` runs it, followed as without the Close (the
    set_config of the search_path seen: nothing hidden listed, the tenant's next session unmoved). (The unnamed
    statement with the statement maps is not here: the maps forget it at a Close sent on, skipped or not, and its
    Bind fails 26000 — fail closed, unchanged.)"""
    with _tenant_session(proxies[mode], user) as sock:
        assert _errors(_wire(sock, _parse(name, _set_path(user)) + m.SYNC_MESSAGE)) == []
        answers = _wire(sock, _FAILING + _close_statement(name) + m.SYNC_MESSAGE)
        assert _errors(answers) == ["22012"], answers
        answers = _wire(sock, _bind("", name) + _execute() + m.SYNC_MESSAGE)
        assert _errors(answers) == [] and _rows(answers) == [f"information_schema, {OWN[user]}"], answers
        answers = _wire(sock, _query(READ))
        assert _errors(answers) == [] and f"{HIDDEN[user]}." not in str(_rows(answers)), answers


RUNS_BY_SQL = {
    # the review's p2: the unnamed statement runs s by SQL EXECUTE; its replacement Parse is skipped
    "execute": lambda user: [(_parse("", "EXECUTE s") + m.SYNC_MESSAGE, []),
                             (_parse("s", _set_path(user)) + m.SYNC_MESSAGE, [])],
    # the review's p1: the unnamed statement runs protocol portal c by SQL FETCH (in a transaction, a savepoint; a
    # Query drops PostgreSQL's unnamed statement, so in session pooling only the extended form below reaches the hole)
    "fetch": lambda user: [(_query("BEGIN"), []), (_parse("", "FETCH c") + m.SYNC_MESSAGE, []),
                           (_parse("s", _set_path(user)) + _bind("c", "s") + m.SYNC_MESSAGE, []),
                           (_query("SAVEPOINT a"), [])],
    # p1 as the review sent it: the savepoint and its rollback by Parse/Bind/Execute too
    "fetch, extended": lambda user: [(_query("BEGIN"), []), (_parse("", "FETCH c") + m.SYNC_MESSAGE, []),
                                     (_parse("s", _set_path(user)) + _bind("c", "s") + m.SYNC_MESSAGE, []),
                                     (_parse("sp", "SAVEPOINT a") + _bind("", "sp") + _execute() + m.SYNC_MESSAGE,
                                      [])],
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("user", sorted(OWN))
@pytest.mark.parametrize("form", sorted(RUNS_BY_SQL))
def test_a_skipped_parse_does_not_unlock_a_statement_that_runs_a_protocol_name_by_sql(
        proxies: dict[str, ProxyProcess], user: str, mode: str, form: str) -> None:  # noqa: F811 (the imported fixture)
    """The review's p1/p2: `Parse "" "SELECT 1"` skipped after an error left the unnamed statement running a
    protocol-level name by SQL; its Bind is refused (26000) in every mode."""
    with _tenant_session(proxies[mode], user) as sock:
        for data, expected in RUNS_BY_SQL[form](user):
            answers = _wire(sock, data)
            assert _errors(answers) == expected, answers
        answers = _wire(sock, _FAILING + _parse("", "SELECT 1") + m.SYNC_MESSAGE)
        assert _errors(answers) == ["22012"], answers
        if form == "fetch":
            assert _errors(_wire(sock, _query("ROLLBACK TO a"))) == []
        elif form == "fetch, extended":
            rollback = _parse("rb", "ROLLBACK TO a") + _bind("", "rb") + _execute() + m.SYNC_MESSAGE
            assert _errors(_wire(sock, rollback)) == []
        answers = _wire(sock, _bind() + _execute() + m.SYNC_MESSAGE)
        assert _errors(answers) == ["26000"] and not _rows(answers), answers
        _wire(sock, _query("ROLLBACK"))
        _unmoved(sock)


def _ended_past_the_bound(proxy: ProxyProcess, user: str) -> None:
    """10,001 requests in flight (a slow one, 10,000 behind it, one write): the session ends with FATAL 54000
    too_many_in_flight before any answer is matched (red team 21p F1)."""
    with _tenant_session(proxy, user) as sock:
        sock.sendall(_query("SELECT pg_sleep(1)") + _query("SELECT 1") * 10_000)
        fatal = [m.decode_error_fields(body) for kind, body in read_to_close(sock) if kind == b"E"]
        assert fatal and fatal[-1]["C"] == "54000" and "requests in flight" in fatal[-1]["M"], fatal


@pytest.mark.parametrize("mode", MODES)
def test_a_flood_past_the_trackers_bound_does_not_end_a_transactions_portals(
        proxies: dict[str, ProxyProcess], mode: str) -> None:  # noqa: F811 (the imported fixture)
    """The review's p8: 9,990 Queries behind a slow one, then BEGIN and a Bind of portal c (a set_config) in one
    write: once all are answered, SQL FETCH c is refused (0A000 protocol_name_by_sql) as without the flood. (With
    10,010 the request tracker dropped the oldest; past its bound the session now ends: FATAL 54000, red team 21p
    F1, checked below.)"""
    user, count = "gina", 9_990
    _ended_past_the_bound(proxies[mode], user)
    with _tenant_session(proxies[mode], user) as sock:
        flood = _query("SELECT pg_sleep(2)") + _query("SELECT 1") * count + _query("BEGIN")
        sock.sendall(flood + _parse("s", _set_path(user)) + _bind("c", "s") + m.SYNC_MESSAGE)
        ready = errors = 0
        while ready < count + 3:
            kind, _ = read_message(sock)
            ready += kind == b"Z"
            errors += kind == b"E"
        assert errors == 0
        answers = _wire(sock, _query("FETCH c"))
        assert _errors(answers) == ["0A000"] and not _rows(answers), answers
        _wire(sock, _query("ROLLBACK"))
        _unmoved(sock)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("user", sorted(OWN))
def test_a_bind_pipelined_behind_the_batch_whose_parse_is_skipped_does_not_run_the_old_statement(
        proxies: dict[str, ProxyProcess], user: str, mode: str) -> None:  # noqa: F811 (the imported fixture)
    """p5 pipelined (wp-sk's residual): `Bind s` sent in the next batch before the failing batch is answered. Where the
    client's names reach the server (session pooling without the cache) the proxy cannot yet know the Parse will be
    skipped: a Bind of a name whose Parse or Close in an earlier batch is unanswered is refused (26000); with the
    statement maps the Bind names the new Parse's server statement (26000 from PostgreSQL when skipped, or the
    statement cached under that text). Never the old set_config."""
    with _tenant_session(proxies[mode], user) as sock:
        assert _errors(_wire(sock, _parse("s", _set_path(user)) + m.SYNC_MESSAGE)) == []
        first = _wire(sock, _FAILING + _close_statement("s") + _parse("s", "SELECT 1") + m.SYNC_MESSAGE
                      + _bind("", "s") + _execute() + m.SYNC_MESSAGE)
        assert _errors(first) == ["22012"], first
        second = _wire(sock, b"")
        if mode == "session":
            assert _errors(second) == ["26000"] and not _rows(second), second
        else:
            assert (_errors(second), _rows(second)) in ((["26000"], []), ([], ["1"])), second
        _unmoved(sock)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("user", sorted(OWN))
@pytest.mark.parametrize("name", ["n", ""])
def test_a_whole_pipeline_of_parse_failing_batch_and_bind_never_runs_the_skipped_parses_predecessor(
        proxies: dict[str, ProxyProcess], user: str, mode: str, name: str) -> None:  # noqa: F811 (the imported fixture)
    """Red team 9a12 F1 (the unnamed statement, transaction pooling) and F2 (a name first Parsed in the same pipeline,
    session pooling): one write holds `Parse name <set_config>` + Sync, a failing batch with `Close name` + `Parse
    name "SELECT 1"` (skipped) + Sync, and `Bind name` + Execute + Sync. The Bind is refused (26000) in every mode:
    it would run before the proxy learns of the skip, while the set_config statement may be under the name."""
    with _tenant_session(proxies[mode], user) as sock:
        close = _close_statement(name) if name else b""
        first = _wire(sock, _parse(name, _set_path(user)) + m.SYNC_MESSAGE
                      + _FAILING + close + _parse(name, "SELECT 1") + m.SYNC_MESSAGE
                      + _bind("", name) + _execute() + m.SYNC_MESSAGE)
        assert _errors(first) == [], first
        second = _wire(sock, b"")
        assert _errors(second) == ["22012"], second
        third = _wire(sock, b"")
        assert _errors(third) == ["26000"] and not _rows(third), third
        _unmoved(sock)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("user", sorted(OWN))
def test_a_bind_of_the_unnamed_statement_pipelined_behind_a_batch_that_fails_without_a_named_parse(
        proxies: dict[str, ProxyProcess], user: str, mode: str) -> None:  # noqa: F811 (the imported fixture)
    """The session-19 note's residual of 3a60754: a session that never Parsed a named statement, its batch failing on
    an Execute of a portal that does not exist (34000) with `Parse "" "SELECT 1"` skipped after it; `Bind ""` in the
    next batch, sent with it, never runs the set_config PostgreSQL kept under the unnamed statement (closed by the
    Flights of 69d5419 in every pool setup: this test is red on its parent)."""
    with _tenant_session(proxies[mode], user) as sock:
        assert _errors(_wire(sock, _parse("", _set_path(user)) + m.SYNC_MESSAGE)) == []
        failing = _execute("nope") + _parse("", "SELECT 1") + m.SYNC_MESSAGE
        assert _errors(_wire(sock, failing + _bind() + _execute() + m.SYNC_MESSAGE)) == ["34000"]
        answers = _wire(sock, b"")
        assert _errors(answers) == ["26000"] and not _rows(answers), answers
        _unmoved(sock)


@pytest.mark.parametrize("mode", MODES)
def test_a_dropped_request_that_postgresql_skips_does_not_leave_the_session_busy(
        proxies: dict[str, ProxyProcess], mode: str) -> None:  # noqa: F811 (the imported fixture)
    """wp-sk's residual of F1b: an extended batch ended by a Query (no Sync) that fails after the 10,010 Queries sent
    behind it pushed it out of the request tracker: PostgreSQL skips them all up to the Sync, one ReadyForQuery. The
    ReadyForQuerys owed stay exact: once the transaction after it ends, nothing is in flight, so the protocol portal
    name it held is free and a SQL cursor of that name is fetched (before: the session stayed "busy" for ever). Past
    the tracker's bound the session now ends (red team 21p F1), so the flood stays under it (9,990) and checks that
    the ReadyForQuerys owed stay exact."""
    user, count = "gina", 9_990
    with _tenant_session(proxies[mode], user) as sock:
        failing = _parse("", "SELECT 1/0 FROM pg_sleep(2)") + _bind() + _execute() + _query("SELECT 1")
        answers = _wire(sock, failing + _query("SELECT 1") * count + m.SYNC_MESSAGE)
        assert _errors(answers) == ["22012"] and not _rows(answers), answers
        assert _errors(_wire(sock, _query("BEGIN"))) == []
        assert _errors(_wire(sock, _parse("s", _set_path(user)) + _bind("c", "s") + m.SYNC_MESSAGE)) == []
        assert _errors(_wire(sock, _query("COMMIT"))) == []
        assert _errors(_wire(sock, _query("BEGIN; DECLARE c CURSOR FOR SELECT 7"))) == []
        answers = _wire(sock, _query("FETCH c"))
        assert _errors(answers) == [] and _rows(answers) == ["7"], answers
        _wire(sock, _query("ROLLBACK"))
        _unmoved(sock)
