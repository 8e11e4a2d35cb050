"""The savepoints of a session's transaction as PostgreSQL confirms them: which portals a ROLLBACK TO drops; pure.

PostgreSQL drops, at a ROLLBACK TO a savepoint, every portal (and cursor) created since that savepoint was set (in it
or in a savepoint inside it released into it), and keeps those created before it; RELEASE hands a savepoint's portals
to the level below. Each level of the stack has an id (a subtransaction): a portal is stamped with the id of the level
it was bound in as the messages sent assume it (`top`), and a ROLLBACK TO confirmed by its CommandComplete names the
ids it aborted (`completed`). A statement is matched with its CommandComplete by position within its request, as
sessionstate.py does (red team 9a3 J2)."""

from __future__ import annotations

from proxy.policy.model import RELEASE, ROLLBACK_TO, SAVEPOINT

OPS = frozenset({SAVEPOINT, RELEASE, ROLLBACK_TO})
Level = tuple[str, int]  # (savepoint name, subtransaction id)


class Savepoints:
    """One session's savepoint stacks: as sent (`belief`, what a Bind is stamped with) and as confirmed."""

    __slots__ = ("_next", "belief", "confirmed", "ops", "parent")

    def __init__(self) -> None:
        self._next = 1  # 0: the transaction's own level
        self.belief: list[Level] = []
        self.confirmed: list[Level] = []
        self.parent: dict[int, int] = {}  # a released level's id -> the id of the level it was released into
        self.ops: dict[object, list[tuple[int, str, str, int]]] = {}  # request -> (position, op, name, new id)

    def top(self) -> int:
        """The id of the level a portal bound now is created in."""
        return self.belief[-1][1] if self.belief else 0

    def sent(self, request: object, position: int, op: str, name: str) -> None:
        """Statement `position` of `request` is SAVEPOINT/RELEASE/ROLLBACK TO `name` (`op`)."""
        belief = self.belief
        new = 0
        at = _find(belief, name) if op != SAVEPOINT else None  # (a SAVEPOINT looks for no name: O(1), 9s8 F4)
        if op == SAVEPOINT:
            new = self._new()
            belief.append((name, new))
        elif at is not None and op == RELEASE:
            del belief[at:]
        elif at is not None:  # ROLLBACK TO: the savepoint is set again, a new subtransaction
            new = self._new()
            del belief[at:]
            belief.append((name, new))
        self.ops.setdefault(request, []).append((position, op, name, new))

    def completed(self, request: object, done: int) -> frozenset[int]:
        """The `done`-th CommandComplete of `request` (the head of the pipeline) arrived: its statement's savepoint
        op is confirmed. The ids of the levels a ROLLBACK TO aborted (their portals are gone)."""
        ops = self.ops.get(request)
        aborted: frozenset[int] = frozenset()
        while ops and ops[0][0] < done:
            _, op, name, new = ops.pop(0)
            aborted |= self._confirm(op, name, new)
        if ops is not None and not ops:
            del self.ops[request]
        return aborted

    def dropped(self, level: int, aborted: frozenset[int]) -> bool:
        """Whether a portal stamped `level` is in one of the `aborted` levels (or one released into them)."""
        parent = self.parent
        while level not in aborted and level in parent:
            level = parent[level]
        return level in aborted

    def ready(self, pending: object, idle: bool) -> None:
        """ReadyForQuery (`idle`: no transaction block open): the ops of requests no longer in `pending` are void
        (failed, skipped); outside a transaction there are no savepoints; with nothing in flight, the stack sent is
        the stack confirmed (a statement that failed did not change it)."""
        for request in [r for r in self.ops if r not in pending]:  # type: ignore[operator]
            del self.ops[request]
        if idle:
            self.confirmed.clear()
            self.parent.clear()
        if not pending:
            self.belief = list(self.confirmed)

    def _confirm(self, op: str, name: str, new: int) -> frozenset[int]:
        confirmed = self.confirmed
        if op == SAVEPOINT:
            confirmed.append((name, new))
            return frozenset()
        at = _find(confirmed, name)
        if at is None:
            return frozenset()
        gone = confirmed[at:]
        del confirmed[at:]
        if op == RELEASE:
            below = confirmed[-1][1] if confirmed else 0
            for _, level in gone:
                self.parent[level] = below
            return frozenset()
        confirmed.append((name, new))
        return frozenset(level for _, level in gone)

    def _new(self) -> int:
        self._next += 1
        return self._next - 1


def _find(stack: list[Level], name: str) -> int | None:
    """The index of the innermost savepoint called `name` (PostgreSQL's choice), None when there is none."""
    for i in range(len(stack) - 1, -1, -1):
        if stack[i][0] == name:
            return i
    return None
