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


def test_a_parse_frees_nothing() -> None:
    """A Parse of COMMIT / CLOSE ALL that never runs (no Bind) frees nothing; its DECLARE counts from the Parse."""
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
    """ClientSession._on_ready_for_query calls `ready` only while `names` or `freed` holds a name (the usual
    transaction opens no portal; wp-perf21): every other slot, filled, stays as it was. A slot that `ready` changes
    on its own fails here: the session's guard must then read it too."""
    open_ = OpenPortals()
    fills: dict[type, object] = {set: {"p"}, dict: {"p": 1}, tuple: ("p",), type(None): (1, "marker")}
    for slot in OpenPortals.__slots__:
        if slot not in ("names", "freed"):
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
