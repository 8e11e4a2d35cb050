"""SequenceMarks: which server a session's writes may have left currval()/lastval() state on, and who discards it."""

from __future__ import annotations

from types import SimpleNamespace

from proxy import sequences
from proxy.sequences import DISCARD, SequenceMarks


def server() -> SimpleNamespace:
    return SimpleNamespace(sequences=None)


def test_only_the_latest_writer_keeps_its_state() -> None:
    a, b = SequenceMarks(), SequenceMarks()
    s1, s2 = server(), server()
    assert a.attached(s1) == ""
    a.wrote = True
    a.released(s1)
    assert a.attached(s1) == "" and not a.wrote  # its own latest: kept
    a.released(s1)  # nothing written this time: the mark stays
    assert b.attached(s1) == DISCARD and s1.sequences is None
    b.released(s1)
    assert a.attached(s1) == ""  # discarded already: nothing to do
    a.released(s1)
    a.wrote = True
    a.released(s1)
    a.attached(s2)
    a.wrote = True
    a.released(s2)  # a newer write elsewhere: s1 holds stale values of a's
    assert a.attached(s1) == DISCARD


def test_a_bind_of_a_writing_statement_is_a_write() -> None:
    a = SequenceMarks()
    a.parsed("S_1", True)
    a.parsed("", False)
    a.wrote = False
    a.bound("")
    assert not a.wrote
    a.bound("S_1")
    assert a.wrote
    a.parsed("S_1", False)  # (the name prepared again, reading)
    a.wrote = False
    a.bound("S_1")
    assert not a.wrote


def test_past_its_bound_every_bind_is_a_write(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sequences, "_MAX_WRITERS", 2)
    a = SequenceMarks()
    for name in ("a", "b", "c"):
        a.parsed(name, True)
    a.wrote = False
    a.bound("never_parsed")
    assert a.wrote and len(a.writers) <= 2
