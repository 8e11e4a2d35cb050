"""The bound on the portals and cursors a session holds open at once ([pool] max_session_portals; red team 20s M0:
~24 KB of backend memory per open portal, 9.5 GB from one login; M1: a sort each): the pure count, then a scripted
session (real policy) in both pool modes: exactly N open, the next Bind or DECLARE refused with 54000, the session
going on, Close / CLOSE / the transaction's end freeing room."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from proxy.policy import TenantPolicy
from proxy.policy.model import CLOSE_CURSOR, COMMIT, DECLARE_CURSOR, HOLD_CURSOR, ROLLBACK
from proxy.portalbounds import OpenPortals
from proxy.protocol import messages as m
from proxy.session import ClientSession
from tests.support.sessions import policy_session, relayed, sent

POLICY = TenantPolicy(tenant="acme", strategy="database")
NONE: frozenset[str] = frozenset()


def test_binds_at_the_bound_pass_and_one_more_is_refused() -> None:
    open_ = OpenPortals()
    assert all(open_.bind(f"p{i}", NONE, 3) is None for i in range(3))
    assert open_.bind("p1", NONE, 3) is None  # (open already: replaced, not added)
    past = open_.bind("p3", NONE, 3)
    assert past is not None and past.rule == "session_portals_limit" and "max_session_portals = 3" in past.message
    assert open_.bind("", NONE, 3) is None and "" not in open_.names  # the unnamed portal: never refused (one)
    open_.close("p0")
    assert open_.bind("p4", NONE, 3) is None
    assert open_.bind("p3", frozenset({"h"}), 4) is not None  # WITH HOLD cursors count beside them
    open_.ready(b"I", last=False)  # (a request after it: its Binds may be of the next transaction)
    assert open_.bind("p3", frozenset({"h"}), 4) is not None
    open_.ready(b"I", last=True)
    assert open_.bind("p3", frozenset({"h"}), 4) is None and open_.names == {"p3"}


@pytest.mark.parametrize("closer", [(COMMIT, ""), (ROLLBACK, ""), (CLOSE_CURSOR, ""), (CLOSE_CURSOR, "c1")])
def test_cursors_a_string_declares_count_when_its_close_does_not_run(closer: tuple[str, str]) -> None:
    """Red team 20b F1: `DECLARE c0 … c98; SAVEPOINT s; SELECT 1/0; COMMIT` (or CLOSE ALL, ROLLBACK, DISCARD ALL):
    the closer never runs, `ROLLBACK TO s` keeps the cursors, and they were never counted (1,980 open at a bound of
    100). The string's cursors count; what its closer closes is freed until a ReadyForQuery confirms it."""
    open_ = OpenPortals()
    assert open_.changes([(DECLARE_CURSOR, f"c{i}") for i in range(3)] + [closer], NONE, 3) is None
    open_.ready(b"E", last=True)  # the error before the closer: it never ran
    assert open_.names == {"c0", "c1", "c2"}
    assert open_.changes([(DECLARE_CURSOR, "c9")], NONE, 3) is not None
    ran = OpenPortals()
    assert ran.changes([(DECLARE_CURSOR, f"c{i}") for i in range(3)] + [closer], NONE, 3) is None
    ran.ready(b"T", last=True)  # it ran: what it closed is gone
    assert ran.names == ({"c0", "c2"} if closer[1] else set())


def test_with_hold_cursors_a_string_declares_count_past_its_commits() -> None:
    """Review 20 F9: `DECLARE h0 … WITH HOLD; COMMIT; DECLARE h1 … WITH HOLD; COMMIT; …` in one string: each COMMIT
    reset the count to the WITH HOLD cursors held before the string (20 open at a bound of 6)."""
    open_ = OpenPortals()
    string = [op for i in range(3) for op in ((HOLD_CURSOR, f"h{i}"), (COMMIT, ""))]
    assert open_.changes(string, NONE, 3) is None
    denied = open_.changes([*string, (HOLD_CURSOR, "h3"), (COMMIT, "")], NONE, 3)
    assert denied is not None and denied.rule == "session_portals_limit"


def test_a_close_counts_again_after_an_error() -> None:
    """A Close PostgreSQL skipped after an error (then ROLLBACK TO a savepoint keeping the portal open) must not
    free its count: closes are confirmed by a ReadyForQuery 'T' with nothing after it, taken back at 'E'."""
    open_ = OpenPortals()
    assert all(open_.bind(f"p{i}", NONE, 3) is None for i in range(3))
    open_.close("p0")
    assert open_.changes([(CLOSE_CURSOR, "p1")], NONE, 3) is None
    assert open_.bind("q0", NONE, 3) is None and open_.names == {"p2", "q0"}
    open_.ready(b"E", last=True)
    assert open_.names == {"p0", "p1", "p2", "q0"} and open_.bind("q1", NONE, 3) is not None
    open_.close("p0")
    open_.ready(b"T", last=False)  # (a batch after it may still fail)
    open_.ready(b"E", last=True)
    assert "p0" in open_.names
    open_.close("p0")
    open_.ready(b"T", last=True)
    open_.ready(b"E", last=True)
    assert "p0" not in open_.names
    assert open_.changes([(COMMIT, "")], NONE, 3) is None and not open_.names
    open_.ready(b"E", last=True)  # (the string failed before its COMMIT)
    assert open_.names == {"p1", "p2", "q0"}


def test_a_bind_frees_nothing() -> None:
    """The count of a Bind of a prepared statement (`frees` False): its COMMIT / CLOSE ALL frees nothing until its
    portal's Execute (`executed`), its DECLARE counts from the Bind (a Parse counts nothing: review 20 F3)."""
    open_ = OpenPortals()
    assert open_.bind("p0", NONE, 2) is None
    assert open_.changes([(CLOSE_CURSOR, "")], NONE, 2, frees=False) is None
    assert open_.changes([(COMMIT, "")], NONE, 2, frees=False) is None
    assert open_.changes([(DECLARE_CURSOR, "c")], NONE, 2, frees=False) is None
    assert open_.names == {"p0", "c"} and open_.bind("p1", NONE, 2) is not None


def test_declares_count_and_closes_free_in_one_string() -> None:
    open_ = OpenPortals()
    assert open_.changes([(DECLARE_CURSOR, "a"), (DECLARE_CURSOR, "b")], NONE, 3) is None
    past = open_.changes([(DECLARE_CURSOR, "c"), (HOLD_CURSOR, "d")], NONE, 3)
    assert past is not None and 'cursor "d"' in past.message and open_.names == {"a", "b"}  # (refused: nothing)
    assert open_.changes([(CLOSE_CURSOR, "a"), (DECLARE_CURSOR, "c"), (HOLD_CURSOR, "d")], NONE, 3) is None
    assert open_.names == {"b", "c"}  # (d is the session's WITH HOLD cursors' to follow)
    assert open_.changes([(DECLARE_CURSOR, "e")], frozenset({"d"}), 3) is not None
    assert open_.changes([(CLOSE_CURSOR, ""), *((DECLARE_CURSOR, f"x{i}") for i in range(3))], NONE, 3) is None
    assert open_.names == {"x0", "x1", "x2"}
    assert open_.changes([(COMMIT, ""), (DECLARE_CURSOR, "y")], frozenset({"h1", "h2"}), 3) is None
    assert open_.names == {"y"}
    assert open_.changes([(ROLLBACK, ""), (DECLARE_CURSOR, "y"), (DECLARE_CURSOR, "z")], frozenset({"h"}), 2) \
        is not None
    assert open_.changes([(DECLARE_CURSOR, "y")], NONE, 1) is None  # (open already: PostgreSQL refuses it)
    assert open_.changes([(DECLARE_CURSOR, "z")], NONE, 1) is not None


@pytest.mark.parametrize("status", [b"I", b"T", b"E"])
@pytest.mark.parametrize("last", [True, False])
def test_ready_with_no_name_open_nor_freed_changes_nothing(status: bytes, last: bool) -> None:
    """ClientSession._on_ready_for_query calls `ready` only while `names`, `freed`, `closers` or `levels` holds one
    (the usual transaction opens no portal; wp-perf21): every other slot, filled, stays as it was. A slot that
    `ready` changes on its own fails here: the session's guard must then read it too."""
    open_ = OpenPortals()
    fills: dict[type, object] = {set: {"p"}, dict: {"p": 1}, tuple: ("p",), type(None): (1, "marker")}
    for slot in OpenPortals.__slots__:
        if slot not in ("names", "freed", "closers", "levels"):
            value = getattr(open_, slot)
            setattr(open_, slot, (not value) if type(value) is bool else fills[type(value)])
    before = {slot: repr(getattr(open_, slot)) for slot in OpenPortals.__slots__}
    open_.ready(status, last)
    assert {slot: repr(getattr(open_, slot)) for slot in OpenPortals.__slots__} == before


def _session(tmp_path: Path, mode: str, **pool: object) -> ClientSession:
    return policy_session(tmp_path, mode, POLICY, **pool)


def _q(s: ClientSession, sql: str, *tags: str, status: bytes = b"I") -> None:
    """A string that reaches the server as written and succeeds (a tag per statement)."""
    assert relayed(s, m.Query(sql).encode()) == [(b"Q", sql.encode() + b"\x00")]
    back = b"".join(m.command_complete(t) for t in tags) + m.ready_for_query(status)
    sent(s.server_data(back))


def _denied(s: ClientSession, sql: str, status: bytes = b"E") -> bytes:
    """A string refused by the proxy (not sent): the client's error."""
    texts = [body for type_, body in relayed(s, m.Query(sql).encode()) if type_ == b"Q"]
    assert len(texts) == 1 and sql.encode() not in texts[0] and b"pgtenant_denied_" in texts[0], texts
    return _marker_error(s, texts[0], m.ready_for_query(status))


def _marker_error(s: ClientSession, body: bytes, after: bytes) -> bytes:
    name = body[body.index(b"pgtenant_denied_"):].split(b"\x00")[0].split(b" ")[0]
    error = m.encode_error_fields(b"E", {"S": "ERROR", "C": "42601", "M": f'syntax error at or near "{name.decode()}"'})
    return b"".join(bytes(c) for a in s.server_data(error + after) for c in getattr(a, "chunks", ()))


def _binds(s: ClientSession, names: list[str], status: bytes = b"T") -> tuple[int, bytes]:
    """Bind + Execute (1 row) of each named portal of statement "ps", then one Sync: how many Binds reached the
    server as sent (the rest: a refusal's placeholder, and PostgreSQL skips to the Sync), and the client's error."""
    batch = b"".join(m.frame(b"B", n.encode() + b"\x00ps\x00" + struct.pack("!hhh", 0, 0, 0)) +
                     m.frame(b"E", n.encode() + b"\x00" + struct.pack("!i", 1)) for n in names) + m.SYNC_MESSAGE
    binds = [body for type_, body in relayed(s, batch) if type_ == b"B"]
    ok = [b for b in binds if b"pgtenant_denied_" not in b]
    back = b"".join(m.frame(b"2", b"") + m.frame(b"s", b"") for _ in ok)
    refused = [b for b in binds if b"pgtenant_denied_" in b]
    if refused:
        return len(ok), _marker_error(s, refused[0], m.ready_for_query(b"E"))
    sent(s.server_data(back + m.ready_for_query(status)))
    return len(ok), b""


def _prepare(s: ClientSession) -> None:
    relayed(s, m.Parse("ps", "SELECT generate_series(1, 3)", b"\x00\x00").encode() + m.SYNC_MESSAGE)
    sent(s.server_data(m.frame(b"1", b"") + m.ready_for_query(b"T")))


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_named_portals_past_the_bound_are_refused_at_the_bind_and_close_frees_room(tmp_path: Path,
                                                                                  mode: str) -> None:
    s = _session(tmp_path, mode, max_session_portals=4)
    _q(s, "BEGIN", "BEGIN", status=b"T")
    _prepare(s)
    assert _binds(s, ["p0", "p1"]) == (2, b"")
    assert _binds(s, ["p2", "p3"]) == (2, b"")  # exactly 4, across batches
    ok, err = _binds(s, ["p4", "p5"])
    assert ok == 0 and b"C54000\x00" in err and b"max_session_portals = 4" in err
    assert b"rule session_portals_limit" in err
    _q(s, "ROLLBACK", "ROLLBACK")  # (the transaction ends: its portals go)
    _q(s, "BEGIN", "BEGIN", status=b"T")
    assert _binds(s, [f"q{i}" for i in range(4)]) == (4, b"")
    relayed(s, m.frame(b"C", b"Pq0\x00") + m.frame(b"C", b"Pq1\x00") + m.SYNC_MESSAGE)
    sent(s.server_data(m.frame(b"3", b"") * 2 + m.ready_for_query(b"T")))
    assert _binds(s, ["q4", "q5"]) == (2, b"")  # closed: room for two
    ok, err = _binds(s, ["q6"])
    assert ok == 0 and b"C54000" in err


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_cursors_past_the_bound_are_refused_at_the_declare(tmp_path: Path, mode: str) -> None:
    s = _session(tmp_path, mode, max_session_portals=3)
    declare = "DECLARE c{} CURSOR FOR SELECT 1".format
    _q(s, "BEGIN; " + declare(0) + "; " + declare(1), "BEGIN", "DECLARE CURSOR", "DECLARE CURSOR", status=b"T")
    _q(s, declare(2), "DECLARE CURSOR", status=b"T")  # exactly 3
    err = _denied(s, declare(3))
    assert b"C54000\x00" in err and (b'cursor \\"c3\\"' in err or b'cursor "c3"' in err)
    _q(s, "ROLLBACK", "ROLLBACK")
    _q(s, "BEGIN; " + "; ".join(declare(i) for i in range(3)), "BEGIN", *["DECLARE CURSOR"] * 3, status=b"T")
    _q(s, "CLOSE c0; " + declare(3), "CLOSE CURSOR", "DECLARE CURSOR", status=b"T")
    assert b"C54000" in _denied(s, declare(4))
    _q(s, "ROLLBACK", "ROLLBACK")
    _q(s, "BEGIN; " + "; ".join(declare(i) for i in range(3)) + "; CLOSE ALL; " + declare(9), "BEGIN",
       *["DECLARE CURSOR"] * 3, "CLOSE CURSOR", "DECLARE CURSOR", status=b"T")
    _q(s, "COMMIT", "COMMIT")
    # WITH HOLD cursors outlive the transaction and count beside the portals
    _q(s, "DECLARE h0 CURSOR WITH HOLD FOR SELECT 1; DECLARE h1 CURSOR WITH HOLD FOR SELECT 1",
       "DECLARE CURSOR", "DECLARE CURSOR")
    _q(s, "BEGIN; " + declare(0), "BEGIN", "DECLARE CURSOR", status=b"T")
    assert b"C54000" in _denied(s, declare(1))
    _q(s, "ROLLBACK", "ROLLBACK")
    _q(s, "CLOSE h0", "CLOSE CURSOR")
    _q(s, "BEGIN; " + declare(0) + "; " + declare(1), "BEGIN", "DECLARE CURSOR", "DECLARE CURSOR", status=b"T")


def test_a_prepared_close_frees_at_its_execute_until_an_error() -> None:
    """Review 20 F1: a CLOSE (CLOSE ALL, COMMIT, ROLLBACK) run as Bind/Execute frees what it closes at the Execute,
    unconfirmed as a Close is: an 'E' counts it again (PostgreSQL skipped it), a 'T' with nothing after confirms."""
    open_ = OpenPortals()
    assert open_.changes([(DECLARE_CURSOR, "c0")], NONE, 1, frees=False) is None  # (a Bind of a prepared DECLARE)
    open_.bound("", [(CLOSE_CURSOR, "c0")])
    open_.executed("", NONE, 1)
    assert not open_.names and open_.freed == {"c0"}
    open_.ready(b"E", last=True)  # (skipped after an error)
    assert open_.names == {"c0"} and open_.changes([(DECLARE_CURSOR, "c1")], NONE, 1, frees=False) is not None
    open_.bound("", [(CLOSE_CURSOR, "c0")])
    open_.executed("", NONE, 1)
    open_.executed("", NONE, 1)  # (run again: nothing more)
    open_.ready(b"T", last=True)
    assert not open_.names and not open_.freed and not open_.levels
    assert open_.changes([(DECLARE_CURSOR, "c1")], NONE, 1, frees=False) is None
    open_.bound("p", [(CLOSE_CURSOR, "")])  # a portal of CLOSE ALL, bound; then another Bind of a plain statement
    open_.bound("p", [])
    open_.executed("p", NONE, 1)
    assert open_.names == {"c1"}
    open_.bound("q", [(COMMIT, "")])
    open_.ready(b"E", last=True)  # (its Bind failed: a portal "q" run after a ROLLBACK TO is another one)
    open_.executed("q", NONE, 1)
    assert open_.names == {"c1"}


def test_a_confirmed_rollback_to_drops_what_was_counted_since_its_savepoint() -> None:
    """Review 20 F2: portals and cursors counted in a subtransaction a ROLLBACK TO aborts are gone; those counted
    before its savepoint stay (red team 20b F1), and a name counted again in another level stays to the end."""
    open_ = OpenPortals()
    assert open_.bind("before", NONE, 4) is None  # level 0
    assert open_.bind("inside", NONE, 4, level=2) is None
    assert open_.changes([(DECLARE_CURSOR, "cur")], NONE, 4, level=2) is None
    assert open_.bind("again", NONE, 4, level=1) is None
    assert open_.bind("again", NONE, 4, level=2) is None  # (open in level 1: PostgreSQL refuses it)
    open_.close("inside")
    open_.rolled_back(lambda level: level == 2)
    assert open_.names == {"before", "again"} and not open_.freed
    open_.ready(b"E", last=True)
    assert open_.names == {"before", "again"}
    open_.rolled_back(lambda level: level in (1, 2))
    assert open_.names == {"before", "again"}  # ("again": counted in two levels, kept to the end)
    open_.ready(b"I", last=True)
    assert not open_.names and not open_.levels


def _extended(s: ClientSession, statements: list[str], status: bytes = b"T") -> list[bytes]:
    """Parse + Bind + Execute of each statement (unnamed), one Sync; each succeeds unless refused: the types of the
    refused messages (Parse or Bind renamed to a marker)."""
    batch = b"".join(m.Parse("", sql, b"\x00\x00").encode() + m.frame(b"B", b"\x00\x00" + struct.pack("!hhh", 0, 0, 0))
                     + m.frame(b"E", b"\x00" + struct.pack("!i", 0)) for sql in statements) + m.SYNC_MESSAGE
    out = relayed(s, batch)
    refused = [(type_, body) for type_, body in out if type_ in (b"P", b"B") and b"pgtenant_denied_" in body]
    if refused:
        _marker_error(s, refused[0][1], m.ready_for_query(b"E"))
        return [type_ for type_, _ in refused]
    tags = [sql.split()[0].upper() + (" CURSOR" if sql.split()[0].upper() in ("DECLARE", "CLOSE") else "")
            for sql in statements]
    sent(s.server_data(b"".join(m.frame(b"1", b"") + m.frame(b"2", b"") + m.command_complete(t) for t in tags)
                       + m.ready_for_query(status)))
    return []


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_cursors_declared_and_closed_over_the_extended_protocol_are_never_refused(tmp_path: Path, mode: str) -> None:
    """Review 20 F1 (pgJDBC's default mode, Npgsql's DECLARE/FETCH/CLOSE): one cursor open at a time, many in one
    transaction; the bound still refuses what is open at once."""
    s = _session(tmp_path, mode, max_session_portals=3)
    _q(s, "BEGIN", "BEGIN", status=b"T")
    for i in range(8):
        assert _extended(s, [f"DECLARE c{i} CURSOR FOR SELECT 1"]) == []
        assert _extended(s, [f"CLOSE c{i}"]) == []
    assert _extended(s, [f"DECLARE d{i} CURSOR FOR SELECT 1" for i in range(3)]) == []
    assert _extended(s, ["DECLARE d3 CURSOR FOR SELECT 1"]) != []  # (3 open: the 4th refused)
    _q(s, "ROLLBACK", "ROLLBACK")
    _q(s, "BEGIN", "BEGIN", status=b"T")
    assert _extended(s, [f"DECLARE d{i} CURSOR FOR SELECT 1" for i in range(3)] + ["CLOSE ALL"]) == []
    assert _extended(s, [f"DECLARE e{i} CURSOR FOR SELECT 1" for i in range(3)]) == []


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_prepared_close_skipped_after_an_error_frees_nothing(tmp_path: Path, mode: str) -> None:
    """The under-count side of F1 (red team 20b F1's shape over the extended protocol): DECLAREs, SAVEPOINT, an
    error, CLOSE ALL skipped, ROLLBACK TO the savepoint keeping the cursors: they still count."""
    s = _session(tmp_path, mode, max_session_portals=3)
    _q(s, "BEGIN", "BEGIN", status=b"T")
    stmts = [f"DECLARE c{i} CURSOR FOR SELECT 1" for i in range(3)] + ["SAVEPOINT s", "SELECT 1/0", "CLOSE ALL"]
    batch = b"".join(m.Parse("", sql, b"\x00\x00").encode() + m.frame(b"B", b"\x00\x00" + struct.pack("!hhh", 0, 0, 0))
                     + m.frame(b"E", b"\x00" + struct.pack("!i", 0)) for sql in stmts) + m.SYNC_MESSAGE
    assert not any(b"pgtenant_denied_" in body for _, body in relayed(s, batch))
    error = m.encode_error_fields(b"E", {"S": "ERROR", "C": "22012", "M": "division by zero"})
    ok = m.frame(b"1", b"") + m.frame(b"2", b"")
    sent(s.server_data(b"".join(ok + m.command_complete("DECLARE CURSOR") for _ in range(3)) + ok
                       + m.command_complete("SAVEPOINT") + ok + error + m.ready_for_query(b"E")))
    _q(s, "ROLLBACK TO s", "ROLLBACK", status=b"T")
    assert b"C54000" in _denied(s, "DECLARE c9 CURSOR FOR SELECT 1", status=b"E")


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_portals_dropped_by_a_rollback_to_free_room(tmp_path: Path, mode: str) -> None:
    """Review 20 F2 (pgJDBC autosave + fetchSize, psqlODBC's per-statement savepoints): SAVEPOINT, a named portal
    whose Execute fails, ROLLBACK TO: PostgreSQL dropped the portal; past the bound of such errors nothing is
    refused. Portals bound before the savepoint stay counted (red team 20b F1)."""
    s = _session(tmp_path, mode, max_session_portals=3)
    _q(s, "BEGIN", "BEGIN", status=b"T")
    _prepare(s)
    assert _binds(s, ["kept"]) == (1, b"")
    error = m.encode_error_fields(b"E", {"S": "ERROR", "C": "22012", "M": "division by zero"})
    for i in range(6):
        _q(s, "SAVEPOINT s", "SAVEPOINT", status=b"T")
        batch = (m.frame(b"B", f"p{i}".encode() + b"\x00ps\x00" + struct.pack("!hhh", 0, 0, 0))
                 + m.frame(b"E", f"p{i}".encode() + b"\x00" + struct.pack("!i", 10)) + m.SYNC_MESSAGE)
        assert not any(b"pgtenant_denied_" in body for _, body in relayed(s, batch)), i
        sent(s.server_data(m.frame(b"2", b"") + error + m.ready_for_query(b"E")))
        _q(s, "ROLLBACK TO s", "ROLLBACK", status=b"T")
    assert _binds(s, ["q0", "q1"]) == (2, b"")  # kept + 2: at the bound
    _q(s, "SAVEPOINT s", "SAVEPOINT", status=b"T")
    _q(s, "ROLLBACK TO s", "ROLLBACK", status=b"T")  # (q0, q1 were bound before it: they stay)
    ok, err = _binds(s, ["q2"])
    assert ok == 0 and b"C54000" in err


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_parse_of_a_declare_opens_nothing_its_binds_count(tmp_path: Path, mode: str) -> None:
    """Review 20 F3: Parses of DECLAREs never bound count nothing; Bind/Execute of DECLAREs pipelined before any
    answer are still refused at the bound."""
    s = _session(tmp_path, mode, max_session_portals=3)
    _q(s, "BEGIN", "BEGIN", status=b"T")
    for i in range(6):
        out = relayed(s, m.Parse(f"x{i}", f"DECLARE x{i} CURSOR FOR SELECT 1", b"\x00\x00").encode()
                      + m.SYNC_MESSAGE)
        assert not any(b"pgtenant_denied_" in body for _, body in out), i
        sent(s.server_data(m.frame(b"1", b"") + m.ready_for_query(b"T")))
    refused = _extended(s, [f"DECLARE y{i} CURSOR FOR SELECT 1" for i in range(4)])
    assert refused == [b"B"]  # (the 4th Bind)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_rollback_to_frees_nothing_once_a_savepoint_statement_went_unfollowed(tmp_path: Path, mode: str) -> None:
    """A guard for F2's fix: a prepared RELEASE / SAVEPOINT forgotten by the session (past the savepoint statements
    it remembers) runs unfollowed: `RELEASE a` (unfollowed), portals bound (PostgreSQL: in the transaction's level;
    the session believes: in a's), `SAVEPOINT a` (unfollowed), `ROLLBACK TO a`: PostgreSQL keeps the portals. From
    then on a ROLLBACK TO frees nothing (fail closed)."""
    s = _session(tmp_path, mode, max_session_portals=3)
    _q(s, "BEGIN", "BEGIN", status=b"T")
    _prepare(s)
    _q(s, "SAVEPOINT a", "SAVEPOINT", status=b"T")
    relayed(s, m.Parse("rel", "RELEASE a", b"\x00\x00").encode() + m.Parse("sav", "SAVEPOINT a", b"\x00\x00").encode()
            + m.SYNC_MESSAGE)
    sent(s.server_data(m.frame(b"1", b"") * 2 + m.ready_for_query(b"T")))
    for i in range(1000):  # (each one remembered, closed or not: the oldest, rel and sav, are forgotten)
        relayed(s, m.Parse(f"z{i}", "SAVEPOINT z", b"\x00\x00").encode() + m.frame(b"C", f"Sz{i}\x00".encode())
                + m.SYNC_MESSAGE)
        sent(s.server_data(m.frame(b"1", b"") + m.frame(b"3", b"") + m.ready_for_query(b"T")))
    run = b"".join(m.frame(b"B", b"\x00" + n + b"\x00" + struct.pack("!hhh", 0, 0, 0))
                   + m.frame(b"E", b"\x00" + struct.pack("!i", 0)) for n in (b"rel",)) + m.SYNC_MESSAGE
    assert not any(b"pgtenant_denied_" in body for _, body in relayed(s, run))
    sent(s.server_data(m.frame(b"2", b"") + m.command_complete("RELEASE") + m.ready_for_query(b"T")))
    assert _binds(s, ["p0", "p1", "p2"]) == (3, b"")
    run = (m.frame(b"B", b"\x00sav\x00" + struct.pack("!hhh", 0, 0, 0)) + m.frame(b"E", b"\x00" + struct.pack("!i", 0))
           + m.SYNC_MESSAGE)
    assert not any(b"pgtenant_denied_" in body for _, body in relayed(s, run))
    sent(s.server_data(m.frame(b"2", b"") + m.command_complete("SAVEPOINT") + m.ready_for_query(b"T")))
    _q(s, "ROLLBACK TO a", "ROLLBACK", status=b"T")  # (PostgreSQL: to the second a; p0..p2 stay open)
    ok, err = _binds(s, ["q0"])
    assert ok == 0 and b"C54000" in err
