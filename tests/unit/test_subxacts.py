"""subxacts.Savepoints: which portals a confirmed ROLLBACK TO drops, as PostgreSQL does (red team 9a3 J2)."""

from __future__ import annotations

from proxy.policy.model import RELEASE, ROLLBACK_TO, SAVEPOINT
from proxy.subxacts import Savepoints

R1, R2, R3 = object(), object(), object()  # requests


def _run(points: Savepoints, request: object, *ops: tuple[str, str]) -> frozenset[int]:
    """`ops` sent as the statements of `request` and each confirmed: the levels they aborted."""
    for at, (op, name) in enumerate(ops):
        points.sent(request, at, op, name)
    aborted: frozenset[int] = frozenset()
    for done in range(1, len(ops) + 1):
        aborted |= points.completed(request, done)
    return aborted


def test_a_rollback_to_drops_what_was_bound_since_and_keeps_what_was_bound_before() -> None:
    points = Savepoints()
    before = points.top()
    _run(points, R1, (SAVEPOINT, "a"))
    after = points.top()
    aborted = _run(points, R2, (ROLLBACK_TO, "a"))
    assert points.dropped(after, aborted) and not points.dropped(before, aborted)
    again = points.top()  # the savepoint is set again: a new level, not dropped by the rollback confirmed before
    assert again != after and not points.dropped(again, aborted)
    assert points.dropped(again, _run(points, R3, (ROLLBACK_TO, "a")))


def test_release_hands_portals_to_the_level_below() -> None:
    points = Savepoints()
    _run(points, R1, (SAVEPOINT, "a"))
    in_a = points.top()
    _run(points, R1, (SAVEPOINT, "b"))
    in_b = points.top()
    assert _run(points, R2, (RELEASE, "b")) == frozenset()
    assert points.top() == in_a
    aborted = _run(points, R3, (ROLLBACK_TO, "a"))
    assert points.dropped(in_b, aborted) and points.dropped(in_a, aborted)
    released_to_top = Savepoints()
    _run(released_to_top, R1, (SAVEPOINT, "a"))
    level = released_to_top.top()
    _run(released_to_top, R2, (RELEASE, "a"), (SAVEPOINT, "c"))
    assert not released_to_top.dropped(level, _run(released_to_top, R3, (ROLLBACK_TO, "c")))


def test_an_inner_rollback_keeps_the_outer_levels_and_the_innermost_name_is_taken() -> None:
    points = Savepoints()
    _run(points, R1, (SAVEPOINT, "a"))
    in_a = points.top()
    _run(points, R1, (SAVEPOINT, "a"), (SAVEPOINT, "b"))
    in_b = points.top()
    aborted = _run(points, R2, (ROLLBACK_TO, "a"))  # the inner "a"
    assert points.dropped(in_b, aborted) and not points.dropped(in_a, aborted)
    assert [name for name, _ in points.confirmed] == ["a", "a"]


def test_only_what_postgresql_confirms_counts() -> None:
    """An op whose statement failed (no CommandComplete) changes nothing; at the next ReadyForQuery with nothing in
    flight the stack sent is the stack confirmed again; a transaction's end ends its savepoints."""
    points = Savepoints()
    _run(points, R1, (SAVEPOINT, "a"))
    in_a = points.top()
    points.sent(R2, 0, RELEASE, "a")  # refused: never confirmed
    assert points.top() == 0
    points.ready((), idle=False)
    assert points.top() == in_a and not points.ops
    points.sent(R3, 0, ROLLBACK_TO, "a")
    assert points.completed(R1, 1) == frozenset()  # another request's CommandComplete
    assert points.dropped(in_a, points.completed(R3, 1))
    points.ready((), idle=True)
    assert points.confirmed == [] and points.top() == 0
    assert _run(points, R1, (ROLLBACK_TO, "a")) == frozenset()  # no such savepoint: nothing to drop
