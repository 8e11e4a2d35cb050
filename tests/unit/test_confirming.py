"""confirming.Awaiting and SqlPrepared.settled: a SQL PREPARE's record follows PostgreSQL's answer (K6 in flight)."""

from __future__ import annotations

from proxy.confirming import Awaiting
from proxy.statements import SqlPrepared

R1, R2 = object(), object()  # requests


def test_statements_are_settled_by_the_answers_of_their_request() -> None:
    waiting = Awaiting()
    a, b, c, d = object(), object(), object(), object()
    waiting.sent(R1, 0, a)
    waiting.sent(R1, 2, b)
    waiting.sent(R2, 0, c)
    waiting.sent(R2, 1, d)
    assert waiting.completed(R1, 1) == [a]
    assert waiting.completed(R1, 2) == []
    assert waiting.failed(R1) == [b]  # (an error after two CommandCompletes: statement 2 failed)
    assert waiting.ready((R2,)) == [] and waiting.completed(R2, 1) == [c]
    assert waiting.ready(()) == [d]  # R2 ended without answering statement 1: skipped
    assert waiting.requests == {}


def _listed(store: SqlPrepared) -> dict[str, str | None]:
    return {name: text for name, (text, _) in store.entries.items()}


def test_a_prepare_refused_behind_one_in_flight_leaves_the_first_ones_record() -> None:
    store = SqlPrepared()
    first, second = object(), object()
    store.prepared(["f"], "PREPARE f AS renamed", 10, frozenset(), [first])
    store.prepared(["f"], None, 10, frozenset({"f"}), [second])  # sent as written
    assert _listed(store) == {"f": None}  # (as if both succeed)
    store.settled(first, True)
    store.settled(second, False)  # 42P05: the first one holds the name
    assert _listed(store) == {"f": "PREPARE f AS renamed"} and store.flight == {}
    other = SqlPrepared()
    third, fourth = object(), object()
    other.prepared(["g"], None, 10, frozenset(), [third])
    other.prepared(["g"], "PREPARE g AS renamed", 10, frozenset({"g"}), [fourth])
    other.settled(third, True)
    other.settled(fourth, False)
    assert _listed(other) == {"g": None}  # the server's row (the first one, sent as written) is listed
    none = SqlPrepared()
    failed = object()
    none.prepared(["h"], "PREPARE h AS renamed", 10, frozenset(), [failed])
    none.settled(failed, False)
    assert none.entries == {} and none.flight == {}
