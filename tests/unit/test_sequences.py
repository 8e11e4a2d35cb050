"""SequenceMarks: which server a session may have left currval()/lastval() state on, and who discards it, when."""

from __future__ import annotations

from types import SimpleNamespace

from proxy import sequences
from proxy.policy.model import MAY_SET_SEQUENCES, MAY_USE_SEQUENCES, READS_SEQUENCES
from proxy.sequences import DISCARD, SequenceMarks

WRITES = frozenset({MAY_SET_SEQUENCES})
USES = frozenset({MAY_USE_SEQUENCES})  # e.g. reads a view, whose query may call nextval()
READS = frozenset({READS_SEQUENCES})  # currval(), lastval()
QUIET: frozenset[str] = frozenset()  # BEGIN, SET, SELECT 1


def server() -> SimpleNamespace:
    return SimpleNamespace(sequences=None)


def test_only_the_latest_writer_keeps_its_state() -> None:
    a, b = SequenceMarks(), SequenceMarks()
    s1, s2 = server(), server()
    assert a.attached(s1) == ""
    a.ran(WRITES)
    a.released(s1)
    assert a.attached(s1) == "" and not a.wrote  # its own latest: kept
    a.released(s1)  # nothing written this time: the mark stays
    assert b.attached(s1) == DISCARD and s1.sequences is None
    b.released(s1)
    assert a.attached(s1) == ""  # discarded already: nothing to do
    a.released(s1)
    a.ran(WRITES)
    a.released(s1)
    a.attached(s2)
    a.ran(WRITES)
    a.released(s2)  # a newer write elsewhere: s1 holds stale values of a's
    assert a.attached(s1) == DISCARD


def test_a_bind_of_a_writing_statement_is_a_write() -> None:
    a = SequenceMarks()
    a.parsed("S_1", WRITES)
    a.parsed("", USES)
    a.wrote = False
    a.bound("")
    assert not a.wrote and a.used
    a.bound("S_1")
    assert a.wrote
    a.parsed("S_1", USES)  # (the name prepared again, reading)
    a.wrote = False
    a.bound("S_1")
    assert not a.wrote


def test_past_its_bound_every_bind_is_a_write(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sequences, "_MAX_NAMED", 2)
    a = SequenceMarks()
    for name in ("a", "b", "c"):
        a.parsed(name, WRITES)
    a.wrote = False
    a.bound("never_parsed")
    assert a.wrote and a.due and len(a.named) <= 2


def test_a_read_leaves_a_mark_discarded_in_front_of_the_next_sessions_first_currval() -> None:
    """A read may have run a view's nextval(): the next session discards that state lazily, in front of its first
    statement calling currval()/lastval() (not in every replay: most sessions never call them)."""
    a, b = SequenceMarks(), SequenceMarks()
    s1 = server()
    a.attached(s1)
    a.ran(USES)
    a.released(s1)
    assert b.attached(s1) == "" and b.foreign
    b.ran(QUIET)  # BEGIN
    assert not b.forwarded(busy=False, failed=False) and b.foreign
    b.ran(READS)
    assert b.forwarded(busy=False, failed=False) and not b.foreign
    b.discarded(s1)
    b.released(s1)
    assert s1.sequences is None  # (b used nothing: the DISCARD left the server clean)
    # a session that used the server first keeps what it reads there: maybe its own (a view it read)
    a.attached(s1)
    a.ran(USES)
    a.released(s1)
    b.attached(s1)
    b.ran(USES)
    b.ran(READS)  # (in the same bytes: the DISCARD goes in front of both)
    assert b.forwarded(busy=False, failed=False)
    b.discarded(s1)
    b.released(s1)
    assert b.attached(s1) == "" and not b.foreign  # its own mark: nobody used it since
    b.released(s1)
    a.attached(s1)
    a.ran(USES)
    assert not a.forwarded(busy=False, failed=False) and not a.foreign
    a.ran(READS)
    assert not a.foreign  # (no longer watched: the session puts nothing in front of it)
    a.released(s1)
    assert a.attached(s1) == "" and a.foreign  # not its own: b's state was still there when a used it


def test_no_discard_behind_requests_in_flight_or_in_a_failed_transaction() -> None:
    a, b = SequenceMarks(), SequenceMarks()
    s1 = server()
    a.ran(USES)
    a.released(s1)
    for busy, failed in ((True, False), (False, True)):
        b.attached(s1)
        b.ran(READS)
        assert not b.forwarded(busy=busy, failed=failed) and not b.foreign
        b.released(s1)


def test_a_statement_waiting_for_the_server_is_discarded_in_the_replay() -> None:
    """What the session sent while it held no server is decided before it lands: a currval() among it makes the
    replay discard a read mark (a use before it there: the state is left, the session may have made it)."""
    a, b = SequenceMarks(), SequenceMarks()
    s1 = server()
    a.ran(USES)
    a.released(s1)
    b.ran(USES)
    b.ran(READS)
    assert b.attached(s1) == DISCARD and s1.sequences is None and not b.foreign
    b.released(s1)
    a.ran(USES)
    a.released(s1)
    b.ran(USES)
    assert b.attached(s1) == "" and not b.foreign and b.tainted


def test_named_statements_remember_what_their_runs_do() -> None:
    a = SequenceMarks()
    a.foreign = True
    a.parsed("S_q", QUIET)
    a.parsed("S_u", USES)
    assert not a.due and not a.used  # (a Parse runs nothing)
    a.parsed("S_r", READS)
    assert a.due  # (in front of the Parse already: its Bind may come in a later read of the same batch)
    a.due = False
    a.bound("S_q")
    assert not a.used and not a.due
    a.bound("S_r")
    assert a.due and not a.used
    a.bound("S_u")
    assert a.used and set(a.named) == {"S_r", "S_q"}
