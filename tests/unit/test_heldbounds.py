"""The bounds on the WITH HOLD cursors, LISTEN channels and savepoints a session holds ([pool] max_session_cursors,
max_session_listens, max_session_savepoints; red team 9s8 F4: 40,000 of them cost seconds of the shared event loop):
the pure count, then a scripted session (real policy) in both pool modes: exactly N allowed, N+1 refused with 54000
in one multi-statement Query and across Queries and at a Bind, the session going on, CLOSE / UNLISTEN / RELEASE /
the transaction's end freeing room."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from proxy.heldbounds import refusal
from proxy.policy import TenantPolicy, model
from proxy.policy.model import (
    CLOSE_CURSOR,
    COMMIT,
    DISCARD_ALL,
    HOLD_CURSOR,
    LISTEN,
    RELEASE,
    ROLLBACK_TO,
    SAVEPOINT,
    SQL_PREPARE,
    UNLISTEN,
    Change,
    SessionContext,
)
from proxy.protocol import messages as m
from proxy.session import ClientSession
from proxy.sessionstate import SessionState
from tests.support.sessions import policy_session, relayed, sent

POLICY = TenantPolicy(tenant="acme", strategy="database")
BIG = 1 << 20


# --- the count -------------------------------------------------------------------------------------------------


def test_cursors_at_the_bound_pass_and_one_more_is_refused() -> None:
    held = frozenset({"a", "b"})
    assert refusal(held, frozenset(), (), [(HOLD_CURSOR, "c")], 3, BIG, BIG) is None  # exactly 3
    past = refusal(held, frozenset(), (), [(HOLD_CURSOR, "c"), (HOLD_CURSOR, "d")], 3, BIG, BIG)
    assert past is not None and past.sqlstate == "54000" and past.rule == "session_cursors_limit"
    assert 'cursor "d"' in past.message and "max_session_cursors = 3" in past.message and "CLOSE" in past.hint
    assert refusal(held, frozenset(), (), [(CLOSE_CURSOR, "a"), (HOLD_CURSOR, "c"), (HOLD_CURSOR, "d")],
                   3, BIG, BIG) is None  # a CLOSE in the same string frees room
    assert refusal(held, frozenset(), (), [(CLOSE_CURSOR, ""), *((HOLD_CURSOR, f"n{i}") for i in range(3))],
                   3, BIG, BIG) is None  # CLOSE ALL
    assert refusal(held, frozenset(), (), [(DISCARD_ALL, ""), *((HOLD_CURSOR, f"n{i}") for i in range(3))],
                   3, BIG, BIG) is None
    assert refusal(held, frozenset(), (), [(HOLD_CURSOR, "a")], 2, BIG, BIG) is None  # a name held: nothing added
    assert refusal(held, frozenset(), (), [(CLOSE_CURSOR, "a"), (HOLD_CURSOR, "a"), (HOLD_CURSOR, "c")],
                   2, BIG, BIG) is not None  # closed and declared again: counted again
    assert refusal(held, frozenset(), (), [(CLOSE_CURSOR, "b")], 1, BIG, BIG) is None  # over a lowered bound: CLOSE


def test_channels_at_the_bound_pass_and_one_more_is_refused() -> None:
    on = frozenset({"x", "y"})
    assert refusal(frozenset(), on, (), [(LISTEN, "z"), (LISTEN, "z"), (LISTEN, "x")], BIG, 3, BIG) is None
    past = refusal(frozenset(), on, (), [(LISTEN, "z"), (LISTEN, "w")], BIG, 3, BIG)
    assert past is not None and past.sqlstate == "54000" and past.rule == "session_listens_limit"
    assert 'LISTEN "w"' in past.message and "max_session_listens = 3" in past.message
    assert refusal(frozenset(), on, (), [(UNLISTEN, "x"), (LISTEN, "z"), (LISTEN, "w")], BIG, 3, BIG) is None
    assert refusal(frozenset(), on, (), [(UNLISTEN, "*"), (LISTEN, "a"), (LISTEN, "b"), (LISTEN, "c")],
                   BIG, 3, BIG) is None


def test_savepoint_depth_at_the_bound_passes_and_one_more_is_refused() -> None:
    stack = (("s0", 1), ("s1", 2))
    assert refusal(frozenset(), frozenset(), stack, [(SAVEPOINT, "s2")], BIG, BIG, 3) is None
    past = refusal(frozenset(), frozenset(), stack, [(SAVEPOINT, "s2"), (SAVEPOINT, "s3")], BIG, BIG, 3)
    assert past is not None and past.sqlstate == "54000" and past.rule == "session_savepoints_limit"
    assert 'SAVEPOINT "s3"' in past.message and "max_session_savepoints = 3" in past.message
    assert refusal(frozenset(), frozenset(), stack, [(SAVEPOINT, "s1")], BIG, BIG, 2) is not None  # same name: a level
    # psqlODBC's shape: one savepoint per statement, released: never deeper than one
    assert refusal(frozenset(), frozenset(), (), [op for i in range(5000) for op in ((SAVEPOINT, "p"), (RELEASE, "p"))],
                   BIG, BIG, 1) is None
    assert refusal(frozenset(), frozenset(), stack, [(RELEASE, "s0"), *((SAVEPOINT, f"n{i}") for i in range(3))],
                   BIG, BIG, 3) is None  # a RELEASE of a confirmed level frees it and those above it
    assert refusal(frozenset(), frozenset(), stack, [(ROLLBACK_TO, "s0"), (SAVEPOINT, "a"), (SAVEPOINT, "b")],
                   BIG, BIG, 3) is None  # ROLLBACK TO keeps s0
    assert refusal(frozenset(), frozenset(), stack, [(ROLLBACK_TO, "s0"), *((SAVEPOINT, f"n{i}") for i in range(3))],
                   BIG, BIG, 3) is not None
    assert refusal(frozenset(), frozenset(), stack, [(COMMIT, ""), *((SAVEPOINT, f"n{i}") for i in range(3))],
                   BIG, BIG, 3) is None  # a new transaction
    assert refusal(frozenset(), frozenset(), stack, [(RELEASE, "nope"), (SAVEPOINT, "s2"), (SAVEPOINT, "s3")],
                   BIG, BIG, 3) is not None  # (a name not set releases nothing)


# --- a session -------------------------------------------------------------------------------------------------


def _session(tmp_path: Path, mode: str, **pool: object) -> ClientSession:
    return policy_session(tmp_path, mode, POLICY, **pool)




def _answer(s: ClientSession, *tags: str, status: bytes = b"I") -> bytes:
    back = b"".join(m.command_complete(t) for t in tags) + m.ready_for_query(status)
    return sent(s.server_data(back)) + b"".join(bytes(c) for a in s.server_data(b"") for c in getattr(a, "chunks", ()))


def _q(s: ClientSession, sql: str, *tags: str, status: bytes = b"I") -> None:
    """A string that reaches the server as written and succeeds (a tag per statement)."""
    sent_ = relayed(s, m.Query(sql).encode())
    assert sent_ == [(b"Q", sql.encode() + b"\x00")], sent_
    _answer(s, *tags, status=status)


def _denied(s: ClientSession, sql: str, status: bytes = b"I") -> bytes:
    """A string refused by the proxy (not sent): the client's error."""
    sent_ = relayed(s, m.Query(sql).encode())
    texts = [body for _, body in sent_ if _ == b"Q"]
    assert len(texts) == 1 and sql.encode() not in texts[0] and b"pgtenant_denied_" in texts[0], sent_
    name = texts[0][texts[0].index(b"pgtenant_denied_"):].split(b"\x00")[0]
    error = m.encode_error_fields(b"E", {"S": "ERROR", "C": "42601",
                                         "M": f'syntax error at or near "{name.decode()}"'})
    out = s.server_data(error + m.ready_for_query(status))
    return b"".join(bytes(c) for a in out for c in getattr(a, "chunks", ()))


def _declare(n: int, start: int = 0) -> str:
    return ";".join(f"DECLARE c{i} CURSOR WITH HOLD FOR SELECT 1" for i in range(start, start + n))


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_hold_cursors_past_the_bound_are_refused_and_close_frees_room(tmp_path: Path, mode: str) -> None:
    s = _session(tmp_path, mode, max_session_cursors=3)
    _q(s, _declare(2), *["DECLARE CURSOR"] * 2)  # one multi-statement Query
    _q(s, _declare(1, 2), "DECLARE CURSOR")  # exactly 3, across Queries
    err = _denied(s, _declare(1, 3))
    assert b"C54000\x00" in err and b"max_session_cursors = 3" in err and b"rule session_cursors_limit" in err
    _q(s, "SELECT 1", "SELECT 1")  # the session goes on
    _q(s, "CLOSE c0", "CLOSE CURSOR")
    _q(s, _declare(1, 3), "DECLARE CURSOR")
    assert b"C54000" in _denied(s, "CLOSE c1;" + _declare(2, 4))  # one CLOSE, two more: past it in one string
    _q(s, "CLOSE c1;" + _declare(1, 4), "CLOSE CURSOR", "DECLARE CURSOR")
    _q(s, "CLOSE ALL", "CLOSE CURSOR")
    _q(s, _declare(3, 10), *["DECLARE CURSOR"] * 3)
    assert b"C54000" in _denied(s, "DECLARE plain CURSOR WITH HOLD FOR SELECT 2")


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_hold_cursors_in_one_string_past_the_bound(tmp_path: Path, mode: str) -> None:
    s = _session(tmp_path, mode, max_session_cursors=3)
    _q(s, _declare(3), *["DECLARE CURSOR"] * 3)  # exactly 3 in one string
    s2 = _session(tmp_path, mode, max_session_cursors=3)
    err = _denied(s2, _declare(4))
    assert (b"C54000" in err and b'cursor \\"c3\\"' in err) or b'cursor "c3"' in err
    _q(s2, "SELECT 1", "SELECT 1")


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_listen_past_the_bound_is_refused_and_unlisten_frees_room(tmp_path: Path, mode: str) -> None:
    s = _session(tmp_path, mode, max_session_listens=2)
    _q(s, "LISTEN a; LISTEN b; LISTEN a", "LISTEN", "LISTEN", "LISTEN")
    err = _denied(s, "LISTEN c")
    assert b"C54000\x00" in err and b"max_session_listens = 2" in err and b"rule session_listens_limit" in err
    _q(s, "UNLISTEN a", "UNLISTEN")
    _q(s, "LISTEN c", "LISTEN")
    _q(s, "UNLISTEN *", "UNLISTEN")
    _q(s, "LISTEN d; LISTEN e", "LISTEN", "LISTEN")
    assert b"C54000" in _denied(s, "LISTEN f")


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_savepoints_past_the_bound_are_refused_and_release_frees_room(tmp_path: Path, mode: str) -> None:
    s = _session(tmp_path, mode, max_session_savepoints=3)
    _q(s, "BEGIN", "BEGIN", status=b"T")
    _q(s, "SAVEPOINT a; SAVEPOINT b", "SAVEPOINT", "SAVEPOINT", status=b"T")
    _q(s, "SAVEPOINT c", "SAVEPOINT", status=b"T")  # exactly 3, across Queries
    err = _denied(s, "SAVEPOINT d", status=b"E")
    assert b"C54000\x00" in err and b"max_session_savepoints = 3" in err and b"rule session_savepoints_limit" in err
    _q(s, "ROLLBACK", "ROLLBACK")
    _q(s, "BEGIN", "BEGIN", status=b"T")
    _q(s, "SAVEPOINT a; SAVEPOINT b; SAVEPOINT c", *["SAVEPOINT"] * 3, status=b"T")  # exactly 3 in one string
    _q(s, "RELEASE b", "RELEASE", status=b"T")
    _q(s, "SAVEPOINT d; SAVEPOINT e", "SAVEPOINT", "SAVEPOINT", status=b"T")
    assert b"C54000" in _denied(s, "SAVEPOINT f", status=b"E")
    _q(s, "ROLLBACK", "ROLLBACK")
    assert b"C54000" in _denied(s, "BEGIN; SAVEPOINT a; SAVEPOINT b; SAVEPOINT c; SAVEPOINT d")
    _q(s, "BEGIN; " + "; ".join(f"SAVEPOINT p; RELEASE p; SELECT {i}" for i in range(10)) + "; COMMIT",
       "BEGIN", *(["SAVEPOINT", "RELEASE", "SELECT 1"] * 10), "COMMIT")


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_prepared_hold_cursor_past_the_bound_is_refused_at_its_bind(tmp_path: Path, mode: str) -> None:
    s = _session(tmp_path, mode, max_session_cursors=1)
    assert b"pgtenant_denied_" not in _parses(s, ["DECLARE p CURSOR WITH HOLD FOR SELECT 1"], name="p")[0]
    _q(s, _declare(1), "DECLARE CURSOR")  # (prepared under the bound, run once it is reached)
    bind = m.frame(b"B", b"\x00p\x00" + struct.pack("!hhh", 0, 0, 0))
    binds = [body for type_, body in relayed(s, bind + m.execute_message("") + m.SYNC_MESSAGE) if type_ == b"B"]
    assert len(binds) == 1 and b"pgtenant_denied_" in binds[0]


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_prepared_savepoint_past_the_bound_is_refused_at_its_bind(tmp_path: Path, mode: str) -> None:
    s = _session(tmp_path, mode, max_session_savepoints=2)
    _q(s, "BEGIN; SAVEPOINT a", "BEGIN", "SAVEPOINT", status=b"T")
    assert b"pgtenant_denied_" not in _parses(s, ["SAVEPOINT b"], name="sp", status=b"T")[0]
    bind = m.frame(b"B", b"\x00sp\x00" + struct.pack("!hhh", 0, 0, 0))
    batch = bind + m.execute_message("") + bind + m.execute_message("") + m.SYNC_MESSAGE
    binds = [body for type_, body in relayed(s, batch) if type_ == b"B"]
    assert len(binds) == 2 and b"pgtenant_denied_" not in binds[0] and b"pgtenant_denied_" in binds[1]


def _parses(s: ClientSession, texts: list[str], status: bytes = b"I", name: str = "") -> list[bytes]:
    """Parses of the unnamed statement, one per text, then one Sync (nothing bound): the Parse texts that reach
    the server; the server answers them (ParseComplete, or the error of a refusal's placeholder and the rest
    skipped) and the client's answer must carry 54000 where one was refused."""
    batch = b"".join(m.Parse(name, text, b"\x00\x00").encode() for text in texts) + m.SYNC_MESSAGE
    sent_ = [body for type_, body in relayed(s, batch) if type_ == b"P"]
    back = b""
    for body in sent_:
        if b"pgtenant_denied_" in body:
            name = body[body.index(b"pgtenant_denied_"):].split(b"\x00")[0].split(b" ")[0]
            back += m.encode_error_fields(b"E", {"S": "ERROR", "C": "42601",
                                                 "M": f'syntax error at or near "{name.decode()}"'})
            break
        back += m.frame(b"1", b"")
    out = b"".join(bytes(c) for a in s.server_data(back + m.ready_for_query(status)) for c in getattr(a, "chunks", ()))
    assert b"pgtenant_denied_" not in out
    if any(b"pgtenant_denied_" in body for body in sent_):
        assert b"C54000\x00" in out, out
    return sent_


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_parses_of_hold_cursors_without_sync_past_the_bound_are_refused_at_the_parse(tmp_path: Path,
                                                                                    mode: str) -> None:
    """Review 19b F3: pipelined Parses (no Bind, no Sync) each added their cursor to the belief, past the bound
    checked at Bind only (20,000 of them stalled another tenant 5-9 s). The Parse past it is refused."""
    s = _session(tmp_path, mode, max_session_cursors=3)
    texts = [f"DECLARE c{i} CURSOR WITH HOLD FOR SELECT 1" for i in range(4)]
    sent_ = _parses(s, texts)
    assert [b"pgtenant_denied_" in body for body in sent_] == [False, False, False, True], sent_
    assert len(s.context.belief.cursors) <= 3
    _q(s, "SELECT 1", "SELECT 1")  # the session goes on; the Parses not run are no longer counted
    assert [b"pgtenant_denied_" in body for body in _parses(s, texts[1:])] == [False] * 3
    _q(s, _declare(2), *["DECLARE CURSOR"] * 2)  # two held: a third Parse fits, a fourth does not
    sent_ = _parses(s, [f"DECLARE d{i} CURSOR WITH HOLD FOR SELECT 1" for i in range(2)])
    assert [b"pgtenant_denied_" in body for body in sent_] == [False, True], sent_
    sent_ = _parses(s, ["DECLARE c0 CURSOR WITH HOLD FOR SELECT 1"] * 5)  # one held already: nothing added
    assert not any(b"pgtenant_denied_" in body for body in sent_), sent_


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_parses_of_listen_without_sync_past_the_bound_are_refused_at_the_parse(tmp_path: Path, mode: str) -> None:
    s = _session(tmp_path, mode, max_session_listens=2)
    sent_ = _parses(s, ["LISTEN a", "LISTEN b", "LISTEN a", "LISTEN c"])
    assert [b"pgtenant_denied_" in body for body in sent_] == [False, False, False, True], sent_
    _q(s, "SELECT 1", "SELECT 1")


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_parse_of_a_savepoint_past_the_depth_is_refused_at_the_parse(tmp_path: Path, mode: str) -> None:
    s = _session(tmp_path, mode, max_session_savepoints=2)
    _q(s, "BEGIN; SAVEPOINT a; SAVEPOINT b", "BEGIN", "SAVEPOINT", "SAVEPOINT", status=b"T")
    sent_ = _parses(s, ["RELEASE b", "SAVEPOINT c"], status=b"E")
    assert [b"pgtenant_denied_" in body for body in sent_] == [False, True], sent_
    _q(s, "ROLLBACK", "ROLLBACK")


# --- the cost of following them (SessionState) -------------------------------------------------------------------


def _run(state: SessionState, changes: tuple[Change, ...]) -> None:
    """One Query of `changes` (a statement each), answered statement by statement, then ReadyForQuery I."""
    request = object()
    state.query(request, 0, changes)
    for done in range(1, len(changes) + 1):
        state.completed(request, done, b"OK")
    state.ready(request, b"I")


def _copies_counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ops of each copy of a held set (model._apply_held) from now on, in order."""
    calls: list[str] = []
    real = model._apply_held

    def counted(context: SessionContext, change: Change) -> SessionContext:
        calls.append(change.op)
        return real(context, change)

    monkeypatch.setattr(model, "_apply_held", counted)
    return calls


def test_a_string_of_declares_copies_the_held_set_once_not_per_statement(monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team 9s8 F4: each DECLARE / LISTEN copied the session's whole set, in the belief and again when confirmed
    (2,000 copies of 30,000 names per 1,000-statement string). A run of them is applied with one copy."""
    calls = _copies_counted(monkeypatch)
    state = SessionState()
    _run(state, tuple(Change(i, HOLD_CURSOR, f"c{i}") for i in range(1000)))
    _run(state, tuple(Change(i, LISTEN if i % 2 else UNLISTEN, f"l{i // 2}") for i in range(1000)))
    assert state.current.cursors == state.belief.cursors == frozenset(f"c{i}" for i in range(1000))
    assert state.current.listening == state.belief.listening == frozenset(f"l{i}" for i in range(500))
    assert len(calls) <= 4, len(calls)


def test_runs_applied_at_once_are_what_one_by_one_makes() -> None:
    rng = random.Random(7)
    ops = [HOLD_CURSOR, CLOSE_CURSOR, LISTEN, UNLISTEN, SQL_PREPARE, DISCARD_ALL]
    for _ in range(200):
        changes = []
        for i in range(rng.randrange(1, 30)):
            op = rng.choice(ops)
            name = rng.choice(["a", "b", "c", "", "*"] if op in (CLOSE_CURSOR, UNLISTEN) else ["a", "b", "c"])
            changes.append(Change(i, op, name))
        one_by_one = SessionContext(cursors=frozenset({"b"}), listening=frozenset({"c"}))
        start = one_by_one
        for change in changes:
            one_by_one = one_by_one.apply(change)
        state = SessionState()
        state.start(start)
        _run(state, tuple(changes))
        assert state.current == state.belief == one_by_one, changes


def test_parses_of_a_cursor_held_already_copy_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 19b F3: each Parse's speculative DECLARE / LISTEN copied the whole set, also for a name the belief
    holds already (quadratic over a pipeline without a Sync). A name held already adds nothing and copies nothing."""
    calls = _copies_counted(monkeypatch)
    state = SessionState()
    for i in range(2000):
        state.parse("", (Change(0, HOLD_CURSOR, f"c{i % 10}"),))
        state.parse("s", (Change(0, LISTEN, f"l{i % 10}"),))
    assert state.belief.cursors == frozenset(f"c{i}" for i in range(10))
    assert state.belief.listening == frozenset(f"l{i}" for i in range(10))
    assert len(calls) == 20, len(calls)


def _savepoint_binds(s: ClientSession, statement: bytes, n: int) -> list[bytes]:
    """`n` Bind/Execute of prepared `statement` in one batch: the Bind bodies that reach the server."""
    bind = m.frame(b"B", b"\x00" + statement + b"\x00" + struct.pack("!hhh", 0, 0, 0))
    batch = (bind + m.execute_message("")) * n + m.SYNC_MESSAGE
    return [body for type_, body in relayed(s, batch) if type_ == b"B"]


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_prepared_savepoint_stays_bounded_after_many_closed_ones(tmp_path: Path, mode: str) -> None:
    """Issue 18: a prepared `SAVEPOINT z`, then 1,000 other savepoint statements Parsed and closed: the closed ones
    took places in the 1,000 remembered and pushed z's record out, and z's Binds ran unfollowed, past the bound.
    A confirmed Close S now removes its statement's record: z is still followed and its 4th Bind is refused."""
    s = _session(tmp_path, mode, max_session_savepoints=3)
    _q(s, "BEGIN", "BEGIN", status=b"T")
    assert b"pgtenant_denied_" not in _parses(s, ["SAVEPOINT z"], name="z", status=b"T")[0]
    batch = b"".join(m.Parse(f"y{i}", "RELEASE y", b"\x00\x00").encode() + m.frame(b"C", f"Sy{i}\x00".encode())
                     for i in range(1000)) + m.SYNC_MESSAGE
    relayed(s, batch)
    sent(s.server_data((m.frame(b"1", b"") + m.frame(b"3", b"")) * 1000 + m.ready_for_query(b"T")))
    binds = _savepoint_binds(s, b"z", 4)
    assert [b"pgtenant_denied_" in body for body in binds] == [False, False, False, True]


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_forgotten_savepoint_statement_is_refused_at_its_bind_until_parsed_again(tmp_path: Path,
                                                                                  mode: str) -> None:
    """Issue 18: past the 1,000 open savepoint statements the session remembers, the oldest is forgotten: its Bind
    is refused (26000, the session goes on) instead of running unfollowed; once Parsed again it is followed. (Only
    where [pool] max_session_statements lets a session hold more than 1,000 statements.)"""
    s = _session(tmp_path, mode, max_session_savepoints=3, max_session_statements=2000)
    _q(s, "BEGIN", "BEGIN", status=b"T")
    assert b"pgtenant_denied_" not in _parses(s, ["SAVEPOINT z"], name="z", status=b"T")[0]
    batch = b"".join(m.Parse(f"y{i}", "RELEASE y", b"\x00\x00").encode() for i in range(1000)) + m.SYNC_MESSAGE
    relayed(s, batch)
    sent(s.server_data(m.frame(b"1", b"") * 1000 + m.ready_for_query(b"T")))
    [bind] = _savepoint_binds(s, b"z", 1)
    assert b"pgtenant_denied_" in bind
    marker = bind[bind.index(b"pgtenant_denied_"):].split(b"\x00")[0]
    error = m.encode_error_fields(b"E", {"S": "ERROR", "C": "26000",
                                         "M": f'prepared statement "{marker.decode()}" does not exist'})
    out = b"".join(bytes(c) for a in s.server_data(error + m.ready_for_query(b"E")) for c in getattr(a, "chunks", ()))
    assert b"C26000\x00" in out and b'"z" sets, releases or rolls back to a savepoint and was forgotten' in out
    _q(s, "ROLLBACK", "ROLLBACK")
    _q(s, "BEGIN", "BEGIN", status=b"T")
    again = relayed(s, m.frame(b"C", b"Sz\x00") + m.Parse("z", "SAVEPOINT z", b"\x00\x00").encode() + m.SYNC_MESSAGE)
    assert not any(b"pgtenant_denied_" in body for _, body in again)
    sent(s.server_data(m.frame(b"3", b"") + m.frame(b"1", b"") + m.ready_for_query(b"T")))
    binds = _savepoint_binds(s, b"z", 4)
    assert [b"pgtenant_denied_" in body for body in binds] == [False, False, False, True]


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_close_of_a_savepoint_statement_pg_skips_keeps_it_followed(tmp_path: Path, mode: str) -> None:
    """Issue 18: a Close S takes its statement's savepoint record; one PostgreSQL skips (an error earlier in its
    batch) leaves the statement there, and its record is put back: its runs are still bounded."""
    s = _session(tmp_path, mode, max_session_savepoints=3)
    _q(s, "BEGIN", "BEGIN", status=b"T")
    assert b"pgtenant_denied_" not in _parses(s, ["SAVEPOINT z"], name="z", status=b"T")[0]
    relayed(s, m.Parse("", "SELECT 1/0", b"\x00\x00").encode() + m.frame(b"C", b"Sz\x00") + m.SYNC_MESSAGE)
    error = m.encode_error_fields(b"E", {"S": "ERROR", "C": "22012", "M": "division by zero"})
    sent(s.server_data(error + m.ready_for_query(b"E")))  # (the Close skipped: PostgreSQL keeps z)
    _q(s, "ROLLBACK", "ROLLBACK")
    _q(s, "BEGIN", "BEGIN", status=b"T")
    binds = _savepoint_binds(s, b"z", 4)
    assert [b"pgtenant_denied_" in body for body in binds] == [False, False, False, True]
